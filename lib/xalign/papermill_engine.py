"""A papermill engine that runs the kernel over IPC instead of TCP: ``papermill --engine xalign``.

papermill's default engine (nbclient) starts the kernel on TCP ports of 127.0.0.1 without
encryption, and ipykernel warns about it at every start ("Kernel is running over TCP without
encryption", once per notebook in ``run_all.sh``'s log). On a shared machine (a SLURM node)
those ports are open to every local user. This engine is nbclient's with the kernel manager's
transport set to ``ipc``: Unix domain sockets in a private temporary folder (mode 0700),
removed when the notebook finishes. And at the end, the kernel is asked to shut down without
the SIGINT jupyter_client sends first (``KernelManager.shutdown_kernel`` interrupts before its
shutdown request: meant for a kernel still running code; a kernel that is still flushing the
last cell's output logs "[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel" to the
terminal, a false alarm in a run that succeeded). Nothing else changes (same kernel, same
execution; a kernel that does not stop gets SIGTERM, then SIGKILL, as before). Registered as the entry point ``papermill.engine: xalign`` (pyproject.toml).
"""

from __future__ import annotations

import os
import shutil
import tempfile

from jupyter_client.manager import AsyncKernelManager
from papermill.engines import NBClientEngine
from traitlets.config import Config


class QuietShutdownKernelManager(AsyncKernelManager):
    """nbclient's kernel manager, without the interrupt (SIGINT) before a shutdown request."""

    async def _async_interrupt_kernel(self) -> None:
        if self.shutting_down:
            return
        await super()._async_interrupt_kernel()


class IPCEngine(NBClientEngine):
    """:class:`papermill.engines.NBClientEngine` with ``KernelManager.transport = "ipc"`` and
    :class:`QuietShutdownKernelManager`."""

    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name, **kwargs):
        """Execute as nbclient does, the kernel's sockets under a fresh private folder."""
        folder = tempfile.mkdtemp(prefix="xalign-kernel-")  # 0700: only this user
        cfg = Config()
        cfg.KernelManager.transport = "ipc"
        cfg.KernelManager.ip = os.path.join(folder, "k")  # sockets k-<n>: short paths (AF_UNIX limit)
        try:
            return super().execute_managed_notebook(nb_man, kernel_name, config=cfg,
                                                    kernel_manager_class=QuietShutdownKernelManager, **kwargs)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
