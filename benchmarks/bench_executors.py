"""Executors and scheduler overhead (issue 12), measured side by side in one run.

1. The probing stage with ``executor: processes``, 2 workers vs 1, on the same vectors: a
   run of ``--params`` (default ``params/minimal.yaml``; ``params/tiny-lab.yaml`` for the tiny
   lab) is prepared up to extraction in ``--root``, then probing is run ``--repeats`` times per
   worker count, each time from scratch (its manifest entries forgotten), and the tables are
   checked equal. Prints the median wall times and the ratio (target >= 1.7x on 2 cores).
2. Scheduler overhead: a toy stage of ``--units`` units, all current, run through
   :func:`xalign.pipeline.run_stage` with the local executor; prints ms per unit (target <= 5).

    python benchmarks/bench_executors.py [--params params/tiny-lab.yaml] [--units 2000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from xalign import runs
from xalign.params import load_params
from xalign.pipeline import Unit, run_stage
from xalign.pipeline.manifest import Manifest


def _fresh_probing(P) -> float:
    m = Manifest.open(P.run_dir())
    for k in [k for k, e in m.artefacts.items() if e.get("stage") == "probing"]:
        m.forget(k)
    m.save()
    t0 = time.perf_counter()
    s = runs.run_probing(P)
    assert s.reused == 0, s.line()
    return time.perf_counter() - t0


def bench_probing(params: str, root: Path, repeats: int) -> None:
    def P(**kw):
        return load_params(params, overrides={"runs_dir": str(root / "runs"), "figures_dir": str(root / "figures"),
                                              **kw})
    base = P()
    for stage in (runs.run_pretrain, runs.run_data_prep, runs.run_extraction):
        stage(base)
    times, tables = {}, {}
    for workers in (1, 2):
        Pw = P(**{"executor.kind": "processes", "executor.workers": workers})
        runs.run_pretrain(Pw)  # starts nothing; the pool starts in the first timed run, as a user's would
        times[workers] = [_fresh_probing(Pw) for _ in range(repeats)]
        tables[workers] = pd.read_parquet(base.run_dir() / "probing" / "selections.parquet")
    pd.testing.assert_frame_equal(tables[1], tables[2], check_exact=True)
    t1, t2 = statistics.median(times[1]), statistics.median(times[2])
    print(f"probing ({params}, threads={base.threads}): 1 worker {t1:.2f} s, 2 workers {t2:.2f} s "
          f"(medians of {repeats}); speed-up {t1 / t2:.2f}x; tables equal")


def _touch(dest: Path) -> None:
    dest.write_text("x")


@dataclass
class _ToyParams:
    root: Path
    n: int
    seed: int = 0
    threads: int | None = None

    def run_dir(self) -> Path:
        return self.root / "run"

    def figure_dir(self) -> Path:
        return self.root / "figures"

    def model_dump(self, mode: str = "json") -> dict:
        return {"n": self.n}


class _Toy:
    name, notebook, upstream = "toy", "00_toy", ()

    def plan(self, ctx):
        out = ctx.run_dir / "toy"
        yield [Unit("toy", f"u{i}", {"i": i}, {}, (out / f"{i}.txt",), _touch, {"dest": out / f"{i}.txt"})
               for i in range(ctx.P.n)]

    def gather(self, ctx, s, units):
        pass


def bench_overhead(n: int, root: Path) -> None:
    (root / "run" / "toy").mkdir(parents=True)
    P, stages = _ToyParams(root, n), {"toy": _Toy()}
    t0 = time.perf_counter()
    run_stage(P, "toy", stages)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    s = run_stage(P, "toy", stages)
    again = time.perf_counter() - t0
    assert (s.computed, s.reused) == (0, n)
    print(f"scheduler: {n} units computed in {first:.2f} s ({first / n * 1e3:.2f} ms/unit, incl. writing); "
          f"all current: {again:.3f} s = {again / n * 1e3:.3f} ms/unit")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params/minimal.yaml")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--units", type=int, default=2000)
    ap.add_argument("--root", type=Path, default=None, help="work folder (default: a temporary one)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = a.root or Path(tmp)
        bench_overhead(a.units, root / "overhead")
        bench_probing(a.params, root / "probing", a.repeats)


if __name__ == "__main__":
    main()
