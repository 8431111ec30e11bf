"""Colab: install xalign pinned into a running Colab kernel, restart once if needed, fetch data.

Colab opens one ``.ipynb`` from GitHub, without the repository. The first cell of every
numbered notebook therefore does, on Colab only (elsewhere it does nothing)::

    import sys
    if "google.colab" in sys.modules:  # Colab: clone, install pinned, fetch data (see xalign.colab)
        import subprocess
        subprocess.run(f"test -d {COLAB_DIR} || git clone -q --depth 1 {REPO_URL} {COLAB_DIR}", shell=True, check=True)
        sys.path.insert(0, f"{COLAB_DIR}/lib")
        from xalign.colab import bootstrap; bootstrap()

:func:`bootstrap` (standard library only: it runs before xalign's dependencies exist):

1. ``pip install -c constraints.txt -e .[colab]``: the versions the test suite last ran
   with, except torch (Colab's CUDA build is kept; constraints.txt pins no torch);
2. compares the packages the kernel had already imported (numpy, pandas, …) with what is
   installed now. If pip replaced one, the kernel still holds the old one: it says so and
   **restarts the runtime** (Colab restarts a kernel whose process exits); run the cell
   again and it goes on. An editable install needs no restart otherwise: ``lib/`` is put on
   ``sys.path`` by the cell above;
3. changes to the repository folder (the notebooks' paths are relative to it);
4. fetches the data (``python -m xalign.data fetch --only ud,xnli``) into
   ``/content/xalign-data`` unless ``XALIGN_DATA`` points at a folder, and sets
   ``XALIGN_DATA``.

GPU settings (device, bf16, batch sizes) are applied by :func:`xalign.notebook.setup` when
CUDA is available on Colab (:func:`gpu_overrides`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

#: Where the repository is published (the Colab badges open its notebooks).
REPO_URL = "https://github.com/xalign/xalign"
#: Where the first cell clones it on Colab, and where data goes.
COLAB_DIR = "/content/xalign"
COLAB_DATA = "/content/xalign-data"
#: Packages Colab preloads whose replacement needs a runtime restart.
PRELOADED = ("numpy", "pandas", "scipy", "matplotlib", "pyarrow", "transformers", "tokenizers")


def in_colab() -> bool:
    """True inside a Google Colab kernel."""
    return "google.colab" in sys.modules


def changed_modules(before: dict[str, str | None]) -> list[str]:
    """``name old -> new`` for each package in ``before`` (version when the kernel imported
    it) whose installed version is now another one."""
    out = []
    for name, old in before.items():
        try:
            new = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        if old is not None and new != old:
            out.append(f"{name} {old} -> {new}")
    return out


def loaded_versions() -> dict[str, str | None]:
    """The ``__version__`` of each :data:`PRELOADED` package the kernel has imported."""
    return {n: getattr(sys.modules[n], "__version__", None) for n in PRELOADED if n in sys.modules}


def bootstrap(repo: str = COLAB_DIR, data: str = COLAB_DATA, restart: bool = True) -> None:
    """The Colab first cell's work (see the module docstring); does nothing outside Colab.

    Raises:
        subprocess.CalledProcessError: pip or the data fetch failed (their output is shown).
    """
    if not in_colab():
        return
    before = loaded_versions()
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-c", f"{repo}/constraints.txt",
                    "-e", f"{repo}[colab]"], check=True)
    changed = changed_modules(before)
    if changed and restart:
        print(f"pip replaced packages this kernel had loaded ({'; '.join(changed)}): restarting the runtime. "
              "Run this cell again when it is back; it will go on from here.", flush=True)
        os.kill(os.getpid(), 9)
    os.chdir(repo)
    if not (os.environ.get("XALIGN_DATA") and Path(os.environ["XALIGN_DATA"]).is_dir()):
        if not (Path(data) / "ud").is_dir():
            subprocess.run([sys.executable, "-m", "xalign.data", "fetch", "--root", data, "--only", "ud,xnli"],
                           check=True)
        os.environ["XALIGN_DATA"] = data
    print(f"xalign ready in {repo}; data in {os.environ['XALIGN_DATA']}")


def gpu_overrides() -> dict[str, object]:
    """Params for one CUDA GPU (an A100 on Colab): extraction on the GPU in bf16 with larger
    batches. Empty without CUDA. The notebook's own ``overrides`` win over these."""
    import torch

    if not torch.cuda.is_available():
        return {}
    bf16 = bool(torch.cuda.is_bf16_supported())
    return {"extraction.device": "cuda", "extraction.bf16": bf16, "extraction.batch_size": 64,
            "transfer.batch_size": 32, "transfer.compute_dtype": "bfloat16" if bf16 else "float32"}
