"""The pipeline machinery: units of work (:mod:`.units`), the scheduler that runs, reuses
and records them (:mod:`.scheduler`), the run manifest (:mod:`.manifest`), the run lock
(:mod:`.lock`) and executors (:mod:`.executors`: local, processes; :mod:`.slurm`: submitit). The stages themselves are :mod:`xalign.stages`."""

from .scheduler import Context, StageSummary, StaleUpstream, run_stage
from .units import Resources, Unit, code_version

__all__ = ["Context", "Resources", "StageSummary", "StaleUpstream", "Unit", "code_version", "run_stage"]
