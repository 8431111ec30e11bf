"""Executors: who runs the units the scheduler hands over. Not part of any identity.

``local`` (default) runs them in this process, one after another, in the order given; the
scheduler records each as soon as it returns, so a killed run resumes after the last one.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from .units import Unit


class LocalExecutor:
    """In process, one unit after another (``executor.kind: local``)."""

    def run(self, units: Iterable[Unit], ctx: Any = None) -> Iterator[tuple[Unit, dict[str, Any] | None]]:
        """Yield ``(unit, notes)`` as each unit finishes; a unit's exception propagates."""
        for u in units:
            yield u, u.fn(**u.args)


def make_executor(P: Any) -> LocalExecutor:
    """The executor ``P.executor`` names (``local`` until the others land)."""
    kind = getattr(getattr(P, "executor", None), "kind", "local")
    if kind != "local":
        raise ValueError(f"executor.kind: {kind!r} is not available yet")
    return LocalExecutor()
