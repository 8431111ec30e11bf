"""The stages, one module per notebook. Each declares ``name``, ``notebook``, ``upstream``,
``plan(ctx)`` (its units, in waves) and ``gather(ctx, summary, units)`` (its tables, read
from disk); :func:`xalign.pipeline.run_stage` runs them, and :mod:`xalign.runs` gives each
notebook its one call (``runs.run_probing(P)``).
"""

from __future__ import annotations

from . import correlation, data_prep, extraction, figures, overlap, pretrain, probing, transfer

STAGES = {m.name: m for m in (pretrain, data_prep, extraction, probing, overlap, transfer, correlation, figures)}
