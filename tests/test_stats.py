"""Stage 6: Pearson correlation of overlap and zero-shot transfer (Table 1)."""

from __future__ import annotations

import math
import warnings
from itertools import combinations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import t as student_t

from xalign.overlap import overlap_pairs
from xalign.stats import (TABLE_COLUMNS, correlation_table, mean_transfer, pearson, table1_markdown,
                          task_scores)

D, K = 100, 10
CKS = ["step-000010", "step-000020", "step-000040", "step-000080", "step-000160"]
TARGETS = ["ar", "es", "fr", "zh"]
EN = list(range(K))


def planted_shares(seed: int) -> dict[str, dict[str, int]]:
    """s[checkpoint][target] = |en ∩ target|, distinct per target so r is informative."""
    rng = np.random.default_rng(seed)
    return {ck: dict(zip(TARGETS, rng.choice(np.arange(0, K + 1), len(TARGETS), replace=False).tolist()))
            for ck in CKS}


def selections_from(shares: dict[str, dict[str, int]], attribute: str, layer: int = 3) -> list[dict]:
    """Target t takes the first s_t of en's neurons plus its own private block, so
    |en ∩ t| = s_t and |t ∩ u| = min(s_t, s_u)."""
    rows = []
    for ck, s in shares.items():
        step = int(ck.split("-")[1])
        sets = {"en": EN}
        for i, t in enumerate(TARGETS):
            sets[t] = EN[:s[t]] + list(range(20 + 10 * i, 20 + 10 * i + K - s[t]))
        for lang, neurons in sets.items():
            rows.append(dict(checkpoint=ck, step=step, layer=layer, attribute=attribute, language=lang,
                             d=D, k=K, neurons=neurons))
    return rows


def expected_average(s: dict[str, int]) -> float:
    over = {("en", t): s[t] for t in TARGETS}
    over.update({(a, b): min(s[a], s[b]) for a, b in combinations(TARGETS, 2)})
    return sum(over.values()) / K / len(over)


def t_test_p(r: float, n: int) -> float:
    """Two-sided p of Pearson's r from the t distribution with n-2 dof (independent of pearsonr)."""
    tt = r * math.sqrt((n - 2) / (1 - r * r))
    return float(2 * student_t.sf(abs(tt), n - 2))


@pytest.fixture(scope="module")
def planted():
    num, pos = planted_shares(1), planted_shares(2)
    sel = pd.DataFrame(selections_from(num, "Number") + selections_from(pos, "POS")
                       + selections_from(planted_shares(3), "Number", layer=4))
    pairs = overlap_pairs(sel)
    rng = np.random.default_rng(0)
    y = {(task, ck, lang): float(rng.uniform(0.3, 0.9))
         for task in ("xnli", "pos") for ck in CKS for lang in TARGETS + ["hi"]}
    rows = []
    for (task, ck, lang), v in y.items():
        if task == "pos" and lang == "hi":
            continue  # hi: XNLI only, and no selection (never a pairwise point)
        metric = "accuracy" if task == "xnli" else "f1"
        rows.append(dict(checkpoint=ck, step=int(ck[5:]), task=task, language=lang, metric=metric, value=v, n=50))
    for ck in CKS:  # decoys that must be ignored
        for task, metric in (("xnli", "accuracy"), ("pos", "f1")):
            rows.append(dict(checkpoint=ck, step=int(ck[5:]), task=task, language="en", metric=metric,
                             value=float(rng.uniform(0, 1)), n=50))
            rows.append(dict(checkpoint=ck, step=int(ck[5:]), task=task, language="en-dev", metric=metric,
                             value=float(rng.uniform(0, 1)), n=50))
        for lang in TARGETS:
            rows.append(dict(checkpoint=ck, step=int(ck[5:]), task="pos", language=lang, metric="accuracy",
                             value=float(rng.uniform(0, 1)), n=50))
    return dict(num=num, pos=pos, pairs=pairs, y=y, transfer=pd.DataFrame(rows))


def row(table, task, kind, attribute, layer):
    hit = table[(table["task"] == task) & (table["kind"] == kind) & (table["attribute"] == attribute)
                & (table["layer"] == layer)]
    assert len(hit) == 1, (task, kind, attribute, layer)
    return hit.iloc[0]


def test_pearson_matches_numpy_and_t_test():
    rng = np.random.default_rng(0)
    x = rng.normal(size=12)
    y = 0.6 * x + rng.normal(size=12)
    r, p, n = pearson(x, y)
    assert n == 12
    assert r == pytest.approx(np.corrcoef(x, y)[0, 1], rel=1e-12)
    assert p == pytest.approx(t_test_p(r, 12), rel=1e-6)
    x2, y2 = np.r_[x, np.nan, 1.0], np.r_[y, 2.0, np.inf]
    assert pearson(x2, y2) == pytest.approx((r, p, 12))


def test_pearson_degenerate_is_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r, p, n = pearson([1.0, 2.0], [3.0, 5.0])
        assert math.isnan(r) and math.isnan(p) and n == 2
        r, p, n = pearson([1.0, 2.0, 3.0, 4.0], [0.5] * 4)
        assert math.isnan(r) and math.isnan(p) and n == 4
        r, p, n = pearson([], [])
        assert math.isnan(r) and n == 0
    with pytest.raises(ValueError, match="differ in length"):
        pearson([1, 2, 3], [1, 2])


def test_task_scores_keep_main_metric_on_targets(planted):
    s = task_scores(planted["transfer"])
    assert set(s["language"]) == set(TARGETS) | {"hi"}
    assert set(zip(s["task"], s["metric"])) == {("xnli", "accuracy"), ("pos", "f1")}
    with_src = task_scores(planted["transfer"], targets_only=False)
    assert "en" in set(with_src["language"]) and "en-dev" not in set(with_src["language"])
    m = mean_transfer(planted["transfer"])
    got = m[(m["task"] == "xnli") & (m["checkpoint"] == CKS[0])]
    want = np.mean([planted["y"][("xnli", CKS[0], lang)] for lang in TARGETS + ["hi"]])
    assert got["value"].iloc[0] == pytest.approx(want)
    assert got["n_languages"].iloc[0] == 5


def test_average_correlation_on_planted_data(planted):
    table = correlation_table(planted["pairs"], planted["transfer"])
    assert list(table.columns) == TABLE_COLUMNS
    for task, langs in (("xnli", TARGETS + ["hi"]), ("pos", TARGETS)):
        y = [np.mean([planted["y"][(task, ck, lang)] for lang in langs]) for ck in CKS]
        x_num = [expected_average(planted["num"][ck]) for ck in CKS]
        x_pos = [expected_average(planted["pos"][ck]) for ck in CKS]
        for attr, x in (("Number", x_num), ("POS", x_pos), ("mean", np.add(x_num, x_pos) / 2)):
            got = row(table, task, "average", attr, 3)
            want_r = np.corrcoef(x, y)[0, 1]
            assert got["n"] == len(CKS)
            assert got["r"] == pytest.approx(want_r, rel=1e-9)
            assert got["p"] == pytest.approx(t_test_p(want_r, len(CKS)), rel=1e-6)


def test_pairwise_correlation_on_planted_data(planted):
    table = correlation_table(planted["pairs"], planted["transfer"], layers=[3])
    assert set(table["layer"]) == {3}
    for task in ("xnli", "pos"):
        pts = [(planted["num"][ck][t] / K, (planted["num"][ck][t] + planted["pos"][ck][t]) / 2 / K,
                planted["y"][(task, ck, t)]) for ck in CKS for t in TARGETS]
        x_num, x_mean, y = map(np.array, zip(*pts))
        got = row(table, task, "pairwise", "Number", 3)
        assert got["n"] == len(CKS) * len(TARGETS)  # hi has no selection: not a point
        assert got["r"] == pytest.approx(np.corrcoef(x_num, y)[0, 1], rel=1e-9)
        got = row(table, task, "pairwise", "mean", 3)
        assert got["r"] == pytest.approx(np.corrcoef(x_mean, y)[0, 1], rel=1e-9)


def test_options_filter_rows(planted):
    t = correlation_table(planted["pairs"], planted["transfer"], attributes=["Number"])
    assert set(t["attribute"]) == {"Number"}  # no "mean" of a single attribute
    assert set(t["layer"]) == {3, 4}
    assert len(t) == 2 * 2 * 2  # tasks × kinds × layers
    t = correlation_table(planted["pairs"], planted["transfer"], attribute_mean=False)
    assert "mean" not in set(t["attribute"])
    t = correlation_table(planted["pairs"], planted["transfer"], metrics={"pos": "accuracy"})
    assert set(t["task"]) == {"pos"}
    # pos accuracy decoys are random: the result must differ from the f1 one
    f1 = correlation_table(planted["pairs"], planted["transfer"])
    assert row(t, "pos", "average", "Number", 3)["r"] != pytest.approx(row(f1, "pos", "average", "Number", 3)["r"])


def test_too_few_checkpoints_or_constant_transfer_give_nan(planted):
    pairs = planted["pairs"]
    two = planted["transfer"][planted["transfer"]["checkpoint"].isin(CKS[:2])]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = correlation_table(pairs, two, layers=[3])
        avg = t[t["kind"] == "average"]
        assert avg["r"].isna().all() and avg["p"].isna().all() and (avg["n"] == 2).all()
        pw = row(t, "xnli", "pairwise", "Number", 3)
        assert pw["n"] == 8 and np.isfinite(pw["r"])
        flat = planted["transfer"].assign(value=0.5)
        t = correlation_table(pairs, flat, layers=[3])
        assert t["r"].isna().all() and (t["n"] > 2).all()


def test_bad_transfer_tables(planted):
    tr = planted["transfer"]
    with pytest.raises(ValueError, match=r"transfer table: missing columns \['metric'\]"):
        correlation_table(planted["pairs"], tr.drop(columns="metric"))
    with pytest.raises(ValueError, match="duplicate rows for checkpoint=step-000010 task=xnli language=ar"):
        correlation_table(planted["pairs"], pd.concat([tr, tr.iloc[[0]]]))


def test_table1_markdown(planted):
    table = correlation_table(planted["pairs"], planted["transfer"])
    md = table1_markdown(table)
    lines = md.strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:2] == ["task", "kind"] and header[-1] == "n"
    assert header[2:-1] == ["ℓ=3 Number", "ℓ=3 POS", "ℓ=3 mean", "ℓ=4 Number"]
    assert len(lines) == 2 + 4  # header, rule, (POS, XNLI) × (average, pairwise)
    r = row(table, "xnli", "average", "Number", 3)
    xnli_avg = next(line for line in lines if line.startswith("| XNLI | average |"))
    cell = xnli_avg.strip("|").split("|")[2].strip()
    want_p = "<0.001" if r["p"] < 0.001 else f"{r['p']:.3f}"
    assert cell == f"{r['r']:.2f} ({want_p})"
    nan_table = table.assign(r=np.nan, p=np.nan, n=2)
    assert "n/a (n=2)" in table1_markdown(nan_table)
    with pytest.raises(ValueError, match="missing columns"):
        table1_markdown(table.drop(columns="p"))


# ---- Table 1 as the authors computed it (recipe "paper") ----------------------------------

P_CKS = [("c1", 1000.0), ("c2", 2000.0), ("c3", 4000.0), ("c4", 8000.0), ("final", float("nan"))]
P_LANGS, P_LAYERS = ["en", "es", "fr", "de"], [13, 17]
P_ATTRS = ["Number", "Gender", "POS", "Case"]  # Case is probed but not in the paper's x


@pytest.fixture(scope="module")
def paper_inputs():
    rng = np.random.default_rng(7)
    over = {(c, l, a, x, y): float(rng.uniform(0, 0.5)) for c, _ in P_CKS for l in P_LAYERS for a in P_ATTRS
            for x, y in combinations(P_LANGS, 2)}
    score = {(c, t, lang): float(rng.uniform(0.3, 0.9)) for c, _ in P_CKS for t in ("pos", "xnli")
             for lang in P_LANGS + ["en-dev"]}
    steps = dict(P_CKS)
    pairs = pd.DataFrame([dict(checkpoint=c, step=steps[c], layer=l, attribute=a, lang_a=x, lang_b=y, k=10, d=200,
                               n_overlap=round(v * 10), overlap_rate=v, chance_rate=0.05, p_value=0.5, p_holm=1.0,
                               significant=False) for (c, l, a, x, y), v in over.items()])
    metric = {"pos": "f1", "xnli": "accuracy"}
    rows = [dict(checkpoint=c, step=steps[c], task=t, language=lang, metric=metric[t], value=v, n=100)
            for (c, t, lang), v in score.items()]
    rows += [dict(checkpoint=c, step=steps[c], task="pos", language="es", metric="accuracy", value=0.0, n=100)
             for c, _ in P_CKS]  # another metric: ignored
    return pairs, pd.DataFrame(rows), over, score


def _avg_x(over, ck, layers=P_LAYERS, attrs=("Number", "Gender", "POS")) -> float:
    per_layer = [np.mean([np.mean([v for (c, l, a, _, _), v in over.items() if (c, l, a) == (ck, layer, at)])
                          for at in attrs]) for layer in layers]
    return float(np.mean(per_layer))


def _pair_x(over, ck, lang, attr="POS", layers=P_LAYERS) -> float:
    return float(np.mean([over[(ck, l, attr, *sorted(("en", lang), key=P_LANGS.index))] for l in layers]))


def _r(x, y) -> float:
    return float(np.corrcoef(x, y)[0, 1])


def test_paper_recipe_average_and_pairwise_by_hand(paper_inputs):
    pairs, transfer, over, score = paper_inputs
    t = correlation_table(pairs, transfer, recipe="paper")
    assert list(t.columns) == ["task", "kind", "r", "p", "n", "attributes", "layers"]
    assert list(zip(t.task, t.kind)) == [("pos", "average"), ("pos", "pairwise"), ("xnli", "average"),
                                          ("xnli", "pairwise")]
    inter = [c for c, _ in P_CKS if c != "final"]
    targets = [l for l in P_LANGS if l != "en"]
    for task in ("pos", "xnli"):
        got = t[(t.task == task) & (t.kind == "average")].iloc[0]
        x = [_avg_x(over, c) for c in inter]
        y = [np.mean([score[(c, task, l)] for l in P_LANGS]) for c in inter]  # English test included
        assert got.n == 4 and got.r == pytest.approx(_r(x, y), abs=1e-12)
        assert got.p == pytest.approx(t_test_p(_r(x, y), 4), abs=1e-9)
        # each of the paper's choices matters on these tables
        with_final = _r(x + [_avg_x(over, "final")], y + [np.mean([score[("final", task, l)] for l in P_LANGS])])
        no_en = _r(x, [np.mean([score[(c, task, l)] for l in targets]) for c in inter])
        layer13 = _r([_avg_x(over, c, layers=[13]) for c in inter], y)
        for other in (with_final, no_en, layer13):
            assert abs(other - got.r) > 0.01
        got = t[(t.task == task) & (t.kind == "pairwise")].iloc[0]
        pts = [(c, l) for c, _ in P_CKS for l in targets]  # the final model included
        x = [_pair_x(over, c, l) for c, l in pts]
        y = [score[(c, task, l)] for c, l in pts]
        assert got.n == 15 and got.r == pytest.approx(_r(x, y), abs=1e-12)
        assert abs(_r([_pair_x(over, c, l, "Number") for c, l in pts], y) - got.r) > 0.01
        assert abs(_r(x[:-3], y[:-3]) - got.r) > 0.01  # without the final model
        assert abs(_r([_pair_x(over, c, l, layers=[17]) for c, l in pts], y) - got.r) > 0.01
    assert set(t.attributes) == {"Number,Gender,POS", "POS"} and set(t.layers) == {"13,17"}


def test_paper_recipe_options_and_unknown_recipe(paper_inputs):
    pairs, transfer, over, score = paper_inputs
    inter = [c for c, _ in P_CKS if c != "final"]
    t = correlation_table(pairs, transfer, recipe="paper", layers=[17], attributes=["Number"])
    got = t[(t.task == "xnli") & (t.kind == "average")].iloc[0]
    y = [np.mean([score[(c, "xnli", l)] for l in P_LANGS]) for c in inter]
    assert got.r == pytest.approx(_r([_avg_x(over, c, [17], ["Number"]) for c in inter], y), abs=1e-12)
    assert got.layers == "17" and got.attributes == "Number"
    per_layer = correlation_table(pairs, transfer)  # the default recipe is unchanged
    assert list(per_layer.columns) == TABLE_COLUMNS
    with pytest.raises(ValueError, match="recipe 'papr' unknown"):
        correlation_table(pairs, transfer, recipe="papr")


def test_paper_table_markdown(paper_inputs):
    pairs, transfer, _, _ = paper_inputs
    t = correlation_table(pairs, transfer, recipe="paper")
    md = table1_markdown(t).splitlines()
    assert md[0].startswith("| task | kind | r (p) | n |") and len(md) == 2 + 4
    row = t[(t.task == "xnli") & (t.kind == "pairwise")].iloc[0]
    assert f"| XNLI | pairwise | {row.r:.2f} (" in md[5] and "| 15 | POS | 13,17 |" in md[5]
