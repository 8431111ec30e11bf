"""The stages, one module per notebook. Each declares ``name``, ``notebook``, ``upstream``,
``plan(ctx)`` (its units, in waves) and ``gather(ctx, summary, units)`` (its tables, read
from disk); :func:`xalign.pipeline.run_stage` runs them.

Stages 0 and 5 still run their own loops in :mod:`xalign.runs` (being moved here); until
they are, they appear in :data:`STAGES` as :class:`_NotYetDeclared`, whose currency the
scheduler cannot check (their runners check their own artefacts).
"""

from __future__ import annotations

from typing import Iterator

from . import correlation, data_prep, extraction, figures, overlap, probing


class _NotYetDeclared:
    """A stage that does not declare units yet: no upstream check through it."""

    upstream: tuple[str, ...] = ()

    def __init__(self, name: str, notebook: str) -> None:
        self.name, self.notebook = name, notebook

    def plan(self, ctx) -> Iterator[list]:
        yield from ()

    def gather(self, ctx, s, units) -> None:
        pass


STAGES = {
    "pretrain": _NotYetDeclared("pretrain", "00_pretrain"),
    "data_prep": data_prep,
    "extraction": extraction,
    "probing": probing,
    "overlap": overlap,
    "transfer": _NotYetDeclared("transfer", "05_finetuning"),
    "correlation": correlation,
    "figures": figures,
}
