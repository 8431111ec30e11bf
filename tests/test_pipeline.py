"""The scheduler (xalign.pipeline) on toy stages: currency, upstream checks, notes kept on
reuse, outputs no longer produced removed, the run lock, and code versions."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest

from xalign.pipeline import StaleUpstream, Unit, code_version, run_stage
from xalign.pipeline.lock import RunLocked
from xalign.store import read_table, write_table


@dataclass
class ToyParams:
    root: Path
    words: list[str] = field(default_factory=lambda: ["a", "b"])
    factor: int = 2
    seed: int = 0
    threads: int | None = 1

    def run_dir(self) -> Path:
        return self.root / "run"

    def figure_dir(self) -> Path:
        return self.root / "figures"

    def model_dump(self, mode: str = "json") -> dict:
        return {"words": self.words, "factor": self.factor}


CALLS: list[str] = []


def make_word(word: str, dest: Path) -> dict:
    CALLS.append(word)
    write_table(pd.DataFrame({"word": [word], "n": [len(word)]}), dest)
    return {"skipped": [f"{word}: nothing to skip"]} if word == "b" else None


def scale(parts: list[Path], factor: int, dest: Path) -> dict:
    CALLS.append("scale")
    df = pd.concat([read_table(p) for p in parts], ignore_index=True)
    write_table(df.assign(n=df.n * factor), dest)
    return {"rows": len(df)}


class Words:
    name, notebook, upstream = "words", "01_words", ()

    def plan(self, ctx):
        yield [Unit("words", w, {"word": w}, {}, (ctx.run_dir / "words" / f"{w}.parquet",), make_word,
                    {"word": w, "dest": ctx.run_dir / "words" / f"{w}.parquet"}) for w in ctx.P.words]

    def gather(self, ctx, s, units):
        s.tables["words"] = pd.concat([read_table(u.outputs[0]) for u in units], ignore_index=True)


class Scaled:
    name, notebook, upstream = "scaled", "02_scaled", ("words",)

    def plan(self, ctx):
        parts = [ctx.run_dir / "words" / f"{w}.parquet" for w in ctx.P.words]
        dest = ctx.run_dir / "scaled.parquet"
        yield [Unit("scaled", "all", {"factor": ctx.P.factor}, {p.stem: ctx.sha(p) for p in parts}, (dest,), scale,
                    {"parts": parts, "factor": ctx.P.factor, "dest": dest})]

    def gather(self, ctx, s, units):
        s.tables["scaled"] = read_table(units[0].outputs[0])
        s.tables["rows"] = pd.DataFrame([ctx.notes(units[0])])


STAGES = {"words": Words(), "scaled": Scaled()}


def test_reuse_keeps_notes_and_tables_and_a_param_change_recomputes_its_units(tmp_path, capsys):
    P = ToyParams(tmp_path)
    CALLS.clear()
    s = run_stage(P, "words", STAGES)
    assert (s.computed, s.reused) == (2, 0) and CALLS == ["a", "b"] and s.skipped == ["b: nothing to skip"]
    first = run_stage(P, "scaled", STAGES)
    again = run_stage(P, "words", STAGES)
    assert (again.computed, again.reused) == (0, 2) and CALLS == ["a", "b", "scale"]
    assert again.skipped == s.skipped  # a reused unit reports what the computed one did
    pd.testing.assert_frame_equal(again.tables["words"], s.tables["words"])
    assert run_stage(P, "scaled", STAGES).tables["rows"].equals(first.tables["rows"])
    assert "[words] computed 0, reused 2; skipped 1" in capsys.readouterr().out

    P.factor = 3  # only the scaled unit depends on it
    s = run_stage(P, "scaled", STAGES)
    assert (s.computed, s.reused) == (1, 0) and list(s.tables["scaled"].n) == [3, 3]


def test_skip_reasons_go_to_a_table_and_the_line_counts_them(tmp_path, capsys):
    from xalign.pipeline.scheduler import SHOWN_REASON_CHARS, StageSummary

    P = ToyParams(tmp_path)
    run_stage(P, "words", STAGES)
    table = P.run_dir() / "skipped" / "words.csv"
    assert pd.read_csv(table).to_dict("list") == {"stage": ["words"], "reason": ["b: nothing to skip"]}
    assert "skipped 1 (b: nothing to skip);" in capsys.readouterr().out  # one short reason: shown
    many = StageSummary("words", skipped=[f"x{i}: no words" for i in range(7)], skipped_table=table)
    assert "; skipped 7 (reasons in skipped/words.csv);" in many.line() and "x0" not in many.line()
    long = StageSummary("words", skipped=["y" * (SHOWN_REASON_CHARS + 1)], skipped_table=table)
    assert "skipped 1 (reasons in skipped/words.csv)" in long.line()
    P.words = ["a"]  # nothing skipped any more: the old table goes
    s = run_stage(P, "words", STAGES)
    assert s.skipped == [] and s.skipped_table is None and not table.exists()



def test_a_stage_never_runs_on_stale_upstream_outputs(tmp_path):
    P = ToyParams(tmp_path)
    with pytest.raises(StaleUpstream, match=r"^words is not current for these params \(a not computed\): "
                                            r"run words first \(notebook 01_words\)$"):
        run_stage(P, "scaled", STAGES)
    run_stage(P, "words", STAGES)
    run_stage(P, "scaled", STAGES)
    P.words = ["a", "c"]
    CALLS.clear()
    with pytest.raises(StaleUpstream, match=r"c not computed"):
        run_stage(P, "scaled", STAGES)
    assert CALLS == []  # nothing ran
    s = run_stage(P, "words", STAGES)  # b is no longer produced: removed, not kept beside c
    assert (s.computed, s.reused) == (1, 1) and s.removed == ["words/b.parquet"]
    assert sorted(p.name for p in (P.run_dir() / "words").iterdir()) == ["a.parquet", "c.parquet"]
    assert "words/b.parquet" not in (P.run_dir() / "manifest.json").read_text()
    assert list(run_stage(P, "scaled", STAGES).tables["scaled"].word) == ["a", "c"]


def test_an_output_changed_behind_the_manifest_is_recomputed(tmp_path):
    P = ToyParams(tmp_path)
    run_stage(P, "words", STAGES)
    write_table(pd.DataFrame({"word": ["z"], "n": [9]}), P.run_dir() / "words" / "a.parquet")
    s = run_stage(P, "words", STAGES)
    assert (s.computed, s.reused) == (1, 1) and list(read_table(P.run_dir() / "words" / "a.parquet").word) == ["a"]


def test_a_second_driver_on_the_same_run_gets_one_line_naming_the_holder(tmp_path):
    P = ToyParams(tmp_path)
    run_stage(P, "words", STAGES)
    holder = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from xalign.pipeline.lock import run_lock
        with run_lock(Path({str(P.run_dir())!r}), "probing"):
            print("held", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(RunLocked) as e:
            run_stage(P, "words", STAGES)
        msg = str(e.value)
        assert "\n" not in msg and f"in use by pid {proc.pid} on " in msg and "(stage probing, since " in msg
    finally:
        proc.kill()
        proc.wait()
    t0 = time.time()
    assert run_stage(P, "words", STAGES).reused == 2 and time.time() - t0 < 30  # a killed holder frees it


def test_code_version_follows_code_not_comments_or_docstrings(tmp_path, monkeypatch):
    mod = tmp_path / "toykernel.py"
    monkeypatch.syspath_prepend(str(tmp_path))
    mod.write_text('"""A kernel."""\nSAMPLES = 5\n\ndef f(x):\n    """Doc."""\n    return x * SAMPLES\n')
    v1 = code_version("toykernel")
    code_version.cache_clear()
    mod.write_text('"""A kernel, documented."""\nSAMPLES = 5  # why five\n\ndef f(x):\n    """Other."""\n'
                   '    return x * SAMPLES\n')
    assert code_version("toykernel") == v1
    code_version.cache_clear()
    mod.write_text('"""A kernel."""\nSAMPLES = 6\n\ndef f(x):\n    """Doc."""\n    return x * SAMPLES\n')
    assert code_version("toykernel") != v1
    with pytest.raises(ModuleNotFoundError, match="no module 'no_such_kernel_xyz'"):
        code_version("no_such_kernel_xyz")


def test_a_units_identity_covers_its_code(tmp_path):
    P = ToyParams(tmp_path)
    run_stage(P, "words", STAGES)

    class WordsV2(Words):
        def plan(self, ctx):
            for wave in super().plan(ctx):
                yield [Unit(u.stage, u.key, u.config, u.inputs, u.outputs, u.fn, u.args, code="v2") for u in wave]

    s = run_stage(P, "words", {**STAGES, "words": WordsV2()})
    assert (s.computed, s.reused) == (2, 0)


def test_a_unit_finished_but_not_recorded_is_collected_from_its_receipt(tmp_path, monkeypatch):
    """The driver dies after a unit wrote its outputs (and receipt) but before recording it:
    the next driver records it from the receipt instead of computing it again; a receipt
    whose outputs changed since is not trusted."""
    from xalign.pipeline.scheduler import Context

    record = Context.record

    def dies_on_b(self, u, notes):
        if u.key == "b":
            raise KeyboardInterrupt  # as a kill between the unit's end and its record
        record(self, u, notes)

    for tamper in (False, True):
        P = ToyParams(tmp_path / str(tamper))
        CALLS.clear()
        monkeypatch.setattr(Context, "record", dies_on_b)
        with pytest.raises(KeyboardInterrupt):
            run_stage(P, "words", STAGES)
        monkeypatch.setattr(Context, "record", record)
        assert CALLS == ["a", "b"] and len(list((P.run_dir() / ".receipts").rglob("*.json"))) == 1
        if tamper:
            write_table(pd.DataFrame({"word": ["z"], "n": [9]}), P.run_dir() / "words" / "b.parquet")
        s = run_stage(P, "words", STAGES)
        assert (s.computed, s.reused) == ((1, 1) if tamper else (0, 2)) and s.skipped == ["b: nothing to skip"]
        assert CALLS == (["a", "b", "b"] if tamper else ["a", "b"])
        assert not list((P.run_dir() / ".receipts").rglob("*.json"))  # recorded: receipt gone
        assert list(read_table(P.run_dir() / "words" / "b.parquet").word) == ["b"]
