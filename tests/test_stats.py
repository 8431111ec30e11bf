"""Stage 6: Pearson correlation of overlap and zero-shot transfer (Table 1)."""

from __future__ import annotations

import math
import warnings
from itertools import combinations, permutations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sst
from scipy.stats import t as student_t

from xalign.overlap import overlap_pairs
from xalign.stats import (PAPER_COLUMNS, TABLE_COLUMNS, UNCERTAINTY_COLUMNS, cluster_bootstrap_ci,
                          correlation_table, leave_one_out_range, mean_transfer, partial_pearson, pearson,
                          pearson_ci, permutation_p, survives, table1_markdown, task_scores)
from xalign.stats import _cluster_resample_r

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
    fmt = lambda v: "<0.001" if v < 0.001 else f"{v:.3f}"  # noqa: E731
    assert cell == f"{r['r']:.2f} [{r['r_lo']:.2f}, {r['r_hi']:.2f}] p={fmt(r['p'])} (perm {fmt(r['p_perm'])})"
    old = table1_markdown(table[TABLE_COLUMNS[:7]])  # a table without the uncertainty columns: r (p)
    assert f"| {r['r']:.2f} ({fmt(r['p'])}) |" in next(line for line in old.splitlines()
                                                      if line.startswith("| XNLI | average |"))
    assert len({line.count("|") for line in lines}) == 1  # the "|"-free cells keep the columns aligned
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
    assert list(t.columns)[:7] == ["task", "kind", "r", "p", "n", "attributes", "layers"]
    assert list(t.columns) == PAPER_COLUMNS and PAPER_COLUMNS[7:] == UNCERTAINTY_COLUMNS
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


# ---- uncertainty of r: kernels ------------------------------------------------------------

def _bvn(rng, rho: float, size) -> tuple[np.ndarray, np.ndarray]:
    """Standard bivariate normal draws with correlation rho."""
    z = rng.normal(size=(2,) + tuple(np.atleast_1d(size)))
    return z[0], rho * z[0] + math.sqrt(1 - rho * rho) * z[1]


def _exact_r(n: int, r: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n points whose sample Pearson r is exactly r (y = r x* + sqrt(1-r^2) e*, e* ⟂ x*)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    x = (x - x.mean()) / np.linalg.norm(x - x.mean())
    e = rng.normal(size=n)
    e -= e.mean() + (e @ x) * x
    e /= np.linalg.norm(e)
    return x, r * x + math.sqrt(1 - r * r) * e


def test_permutation_p_exact_equals_brute_force_count():
    x, y = _exact_r(6, 0.75, seed=3)
    r = abs(np.corrcoef(x, y)[0, 1])
    hits = sum(abs(np.corrcoef(x, y[list(o)])[0, 1]) >= r - 1e-12 for o in permutations(range(6)))
    p = permutation_p(x, y)
    assert p == pytest.approx(hits / 720, abs=1e-15) and 0.001 < p < 0.5  # informative example
    assert permutation_p(x, y, seed=99) == p  # exact: no randomness
    # independent implementation: scipy's exact pairings test of |r|, one-sided "greater"
    ref = sst.permutation_test((y,), lambda yy: abs(np.corrcoef(x, yy)[0, 1]), permutation_type="pairings",
                               alternative="greater", n_resamples=np.inf, vectorized=False)
    assert p == pytest.approx(ref.pvalue, abs=1e-12)
    # perfectly monotone: only the identity and the reversal reach |r| = 1
    assert permutation_p([1, 2, 3, 4, 5], [2, 3, 5, 8, 13]) == pytest.approx(2 / 120, abs=1e-15)
    assert permutation_p([1, 2, 3, 4, 5], [5, 4, 3, 2, 1]) == pytest.approx(2 / 120, abs=1e-15)
    # ties count: of 3! orderings the identity and the reversal reach |r| = 1; r = 0 gives p = 1
    assert permutation_p([1, 2, 3], [1, 2, 3]) == pytest.approx(2 / 6)
    assert permutation_p([-1, 0, 1, -1, 0, 1], [1, 0, 1, 1, 0, 1]) == pytest.approx(1.0)


def test_permutation_p_monte_carlo_close_to_exact_and_formula():
    x, y = _exact_r(8, 0.65, seed=5)
    exact = permutation_p(x, y)  # 8! = 40,320 orderings
    mc = permutation_p(x, y, exact_max=0, n_resamples=20000, seed=1)
    assert 0.02 < exact < 0.5
    assert abs(mc - exact) < 4 * math.sqrt(exact * (1 - exact) / 20000) + 1e-4  # within ~4 s.e.
    assert permutation_p(x, y, exact_max=0, n_resamples=20000, seed=1) == mc  # seeded
    # p = (1 + hits) / (1 + B): a perfect line of 12 points is never matched by chance
    line = np.arange(12.0)
    assert permutation_p(line, 2 * line + 1, n_resamples=99) == pytest.approx(1 / 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(permutation_p([1, 2], [3, 4])) and math.isnan(permutation_p([1, 2, 3], [1, 1, 1]))
    with pytest.raises(ValueError, match="exact_max"):
        permutation_p(x, y, exact_max=11)
    with pytest.raises(ValueError, match="differ in length"):
        permutation_p([1, 2, 3], [1, 2])


def test_pearson_ci_is_fisher_z_closed_form():
    rng = np.random.default_rng(0)
    x, y = _bvn(rng, 0.4, 12)
    r = np.corrcoef(x, y)[0, 1]
    for conf in (0.95, 0.9):
        half = sst.norm.ppf((1 + conf) / 2) / math.sqrt(12 - 3)
        lo, hi = pearson_ci(x, y, confidence=conf)
        assert (lo, hi) == pytest.approx((math.tanh(math.atanh(r) - half), math.tanh(math.atanh(r) + half)),
                                         abs=1e-12)
        assert lo < r < hi
    assert pearson_ci(np.r_[x, np.nan], np.r_[y, 1.0]) == pytest.approx(pearson_ci(x, y))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert all(math.isnan(v) for v in pearson_ci([1, 2, 3], [1, 3, 2]))  # Fisher z needs n > 3
        assert all(math.isnan(v) for v in pearson_ci([1, 2, 3, 4], [2, 2, 2, 2]))
    with pytest.raises(ValueError, match="confidence"):
        pearson_ci(x, y, confidence=95)


def test_intervals_widen_as_n_shrinks():
    widths_f, widths_b = [], []
    for n_clusters in (40, 20, 10, 5):
        x, y = _exact_r(n_clusters * 3, 0.5, seed=n_clusters)  # sample r = 0.5 at every size
        lo, hi = pearson_ci(x, y)
        widths_f.append(hi - lo)
        lo, hi = cluster_bootstrap_ci(x, y, np.repeat(np.arange(n_clusters), 3))
        widths_b.append(hi - lo)
    assert all(a < b for a, b in zip(widths_f, widths_f[1:])), widths_f
    assert all(a < b for a, b in zip(widths_b, widths_b[1:])), widths_b
    for r in (-0.8, 0.0, 0.3, 0.9):  # property over r too (Fisher width is a function of r and n)
        w = [np.subtract(*pearson_ci(*_exact_r(n, r, seed=n))[::-1]) for n in (50, 20, 8, 4)]
        assert all(a < b for a, b in zip(w, w[1:])), (r, w)


def test_partial_pearson_removes_shared_trend_and_keeps_a_real_link():
    rng = np.random.default_rng(11)
    n = 40
    t = np.log10(np.geomspace(1e3, 1e6, n))  # log step
    trend = (t - t.mean()) / t.std()
    x = trend + 0.5 * rng.normal(size=n)
    y = trend + 0.5 * rng.normal(size=n)
    r_raw = pearson(x, y)[0]
    r_z, p_z, n_z = partial_pearson(x, y, t)
    assert r_raw > 0.8 and abs(r_z) < 0.35 and p_z > 0.05 and n_z == n  # measured: 0.89, 0.25, 0.12
    # over many seeds: raw r always large, partial r centred on 0 and a t test of nominal size
    sims = [(pearson(a, b)[0], *partial_pearson(a, b, t)[:2]) for a, b in
            ((trend + 0.5 * rng.normal(size=n), trend + 0.5 * rng.normal(size=n)) for _ in range(200))]
    raw, part, pp = map(np.array, zip(*sims))
    assert raw.min() > 0.6 and abs(part.mean()) < 0.04 and 0.01 <= np.mean(pp < 0.05) <= 0.12
    # closed form of the first-order partial correlation, and the t test with n - 3 dof
    rxy, rxz, ryz = np.corrcoef([x, y, t])[[0, 0, 1], [1, 2, 2]]
    assert r_z == pytest.approx((rxy - rxz * ryz) / math.sqrt((1 - rxz ** 2) * (1 - ryz ** 2)), abs=1e-12)
    tt = r_z * math.sqrt((n - 3) / (1 - r_z ** 2))
    assert p_z == pytest.approx(2 * student_t.sf(abs(tt), n - 3), rel=1e-9)
    # a real x-y link beyond the trend survives the control
    shared = 0.5 * rng.normal(size=n)
    x2, y2 = trend + shared, trend + shared + 0.3 * rng.normal(size=n)
    r2, p2, _ = partial_pearson(x2, y2, t)
    assert r2 > 0.8 and p2 < 1e-6
    # non-finite z (the final model: step NaN -> log NaN) drops the point; degenerate -> NaN
    assert partial_pearson(np.r_[x, 5.0], np.r_[y, -5.0], np.r_[t, np.nan]) == pytest.approx((r_z, p_z, n))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r, p, k = partial_pearson([1, 2, 3], [3, 1, 2], [1, 2, 3])
        assert math.isnan(r) and math.isnan(p) and k == 3
        assert math.isnan(partial_pearson(x, y, np.ones(n))[0])  # constant z
        assert math.isnan(partial_pearson(2 * t + 1, y, t)[0])  # x is a linear function of z


def test_cluster_resample_r_matches_materialised_resamples():
    rng = np.random.default_rng(2)
    codes = np.array([0, 0, 1, 1, 1, 2, 3, 3])  # unequal cluster sizes
    x, y = rng.normal(size=8), rng.normal(size=8)
    counts = np.array([[1, 1, 1, 1], [2, 0, 1, 1], [0, 4, 0, 0], [0, 0, 3, 1], [4, 0, 0, 0]], dtype=float)
    got = _cluster_resample_r(x, y, codes, counts)
    for b, c in enumerate(counts):
        idx = np.concatenate([np.repeat(np.flatnonzero(codes == g), int(k)) for g, k in enumerate(c)])
        want = np.corrcoef(x[idx], y[idx])[0, 1] if np.ptp(x[idx]) > 0 else math.nan
        assert got[b] == pytest.approx(want, abs=1e-10, nan_ok=True)
    assert np.isfinite(got).all()  # every resample above has a non-constant x and y
    assert math.isnan(_cluster_resample_r(x, y, codes, np.array([[0, 0, 4, 0.0]]))[0])  # one point x4


def test_cluster_bootstrap_wider_than_point_bootstrap_on_duplicated_points():
    rng = np.random.default_rng(4)
    a, b = _bvn(rng, 0.5, 8)
    x, y = np.repeat(a, 6) + 0.05 * rng.normal(size=48), np.repeat(b, 6) + 0.05 * rng.normal(size=48)
    langs = np.repeat([f"l{i}" for i in range(8)], 6)
    r = pearson(x, y)[0]
    c_lo, c_hi = cluster_bootstrap_ci(x, y, langs)
    p_lo, p_hi = cluster_bootstrap_ci(x, y, np.arange(48))  # every point its own cluster: naive bootstrap
    assert c_lo < r < c_hi and p_lo < r < p_hi
    assert (c_hi - c_lo) > 1.8 * (p_hi - p_lo)  # 8 effective points, not 48
    assert cluster_bootstrap_ci(x, y, langs) == (c_lo, c_hi)  # seeded
    assert cluster_bootstrap_ci(x, y, langs, seed=1) != (c_lo, c_hi)
    assert all(math.isnan(v) for v in cluster_bootstrap_ci(x, y, np.repeat(["a", "b"], 24)))  # < 3 clusters
    with pytest.raises(ValueError, match="n_boot"):
        cluster_bootstrap_ci(x, y, langs, n_boot=0)


def test_leave_one_out_range_contains_r_and_shows_an_influential_point():
    rng = np.random.default_rng(8)
    x = rng.normal(size=10)
    y = 0.5 * x + rng.normal(size=10)
    r = pearson(x, y)[0]
    lo, hi = leave_one_out_range(x, y)
    want = [pearson(np.delete(x, i), np.delete(y, i))[0] for i in range(10)]
    assert (lo, hi) == pytest.approx((min(want), max(want)), abs=1e-12) and lo <= r <= hi
    # one far point makes r: leaving it out collapses it
    xn, yn = _exact_r(9, 0.0, seed=8)  # r = 0 without the far point
    xo, yo = np.r_[xn, 8.0], np.r_[yn, 8.0]
    r_o = pearson(xo, yo)[0]
    lo, hi = leave_one_out_range(xo, yo)
    assert r_o > 0.8 and lo == pytest.approx(pearson(xn, yn)[0], abs=1e-12) and lo < 0.5 < r_o <= hi + 1e-12
    # groups: leave one checkpoint out with all its languages
    ck = np.repeat(["c1", "c2", "c3", "c4", "c5"], 2)
    want = [pearson(x[ck != c], y[ck != c])[0] for c in ["c1", "c2", "c3", "c4", "c5"]]
    assert leave_one_out_range(x, y, groups=ck) == pytest.approx((min(want), max(want)), abs=1e-12)
    assert all(math.isnan(v) for v in leave_one_out_range([1, 2, 3], [1, 3, 2]))  # 2 points left: undefined


# ---- calibration (seeded, small; benchmarks/bench_calibration.py runs the large version) ----

def test_fisher_interval_covers_rho_on_bivariate_normal():
    rng = np.random.default_rng(1)
    covered = [lo <= 0.5 <= hi for lo, hi in (pearson_ci(*_bvn(rng, 0.5, 12)) for _ in range(200))]
    assert np.mean(covered) >= 0.90  # nominal 0.95; measured 0.945 with this seed


def _clustered(rng, n_clusters: int = 8, size: int = 6):
    """x_ij = sqrt(3) a_i + e_ij, y_ij = sqrt(3) b_i + f_ij with corr(a, b) = 0.6 (cluster
    effect shared by x and y), corr(e, f) = 0.2, all unit variance: the generating process
    has corr(x, y) = (3 * 0.6 + 0.2) / (3 + 1) = 0.5."""
    a, b = _bvn(rng, 0.6, n_clusters)
    e, f = _bvn(rng, 0.2, (n_clusters, size))
    x = (math.sqrt(3) * a[:, None] + e).ravel()
    y = (math.sqrt(3) * b[:, None] + f).ravel()
    return x, y, np.repeat(np.arange(n_clusters), size)


CLUSTERED_RHO = 0.5


def test_cluster_bootstrap_covers_truth_where_point_bootstrap_does_not():
    rng = np.random.default_rng(2)
    cl = pt = 0
    for _ in range(200):
        x, y, c = _clustered(rng)
        lo, hi = cluster_bootstrap_ci(x, y, c)
        cl += lo <= CLUSTERED_RHO <= hi
        lo, hi = cluster_bootstrap_ci(x, y, np.arange(x.size))
        pt += lo <= CLUSTERED_RHO <= hi
    # nominal 0.95; with 8 clusters the percentile cluster bootstrap under-covers a little
    # (measured 0.90 here, 0.89 over 1000 replicates); the point bootstrap ignores the
    # clustering (measured 0.68)
    assert cl / 200 >= 0.85 and cl / 200 - pt / 200 >= 0.10


def test_permutation_p_is_uniform_under_the_null():
    rng = np.random.default_rng(6)
    exact = np.array([permutation_p(rng.normal(size=7), rng.normal(size=7)) for _ in range(400)])
    mc = np.array([permutation_p(rng.normal(size=15), rng.normal(size=15), n_resamples=999, seed=i)
                   for i in range(400)])
    for ps in (exact, mc):
        assert 0.02 <= np.mean(ps < 0.05) <= 0.09
        assert 0.42 <= np.mean(ps < 0.5) <= 0.58
        assert sst.kstest(ps, "uniform").pvalue > 0.001


# ---- uncertainty of r: both Table 1 recipes ------------------------------------------------

def test_per_layer_rows_carry_uncertainty(planted):
    table = correlation_table(planted["pairs"], planted["transfer"], layers=[3])
    assert list(table.columns) == TABLE_COLUMNS and TABLE_COLUMNS[7:] == UNCERTAINTY_COLUMNS
    z = {ck: math.log10(int(ck[5:])) for ck in CKS}
    y = [np.mean([planted["y"][("xnli", ck, lang)] for lang in TARGETS + ["hi"]]) for ck in CKS]
    x = [expected_average(planted["num"][ck]) for ck in CKS]
    got = row(table, "xnli", "average", "Number", 3)
    assert (got.r_lo, got.r_hi) == pytest.approx(pearson_ci(x, y), abs=1e-12)
    assert got.r_lo < got.r < got.r_hi
    assert got.p_perm == pytest.approx(permutation_p(x, y)) and (got.p_perm * 120) == pytest.approx(
        round(got.p_perm * 120))  # exact over 5! orderings
    assert (got.r_loo_min, got.r_loo_max) == pytest.approx(leave_one_out_range(x, y), abs=1e-12)
    assert (got.r_partial, got.p_partial, got.n_partial) == pytest.approx(
        partial_pearson(x, y, [z[ck] for ck in CKS]), abs=1e-12)
    assert math.isnan(got.r_boot_lo) and math.isnan(got.r_boot_hi)
    pts = [(planted["num"][ck][t] / K, planted["y"][("xnli", ck, t)], ck, t) for ck in CKS for t in TARGETS]
    xs, ys, cks, langs = map(np.array, zip(*pts))
    got = row(table, "xnli", "pairwise", "Number", 3)
    assert (got.r_boot_lo, got.r_boot_hi) == pytest.approx(cluster_bootstrap_ci(xs, ys, langs), abs=1e-12)
    assert (got.r_loo_min, got.r_loo_max) == pytest.approx(leave_one_out_range(xs, ys, groups=cks), abs=1e-12)
    assert got.p_perm == pytest.approx(permutation_p(xs, ys))  # 20 points: Monte Carlo, seeded
    assert got.r_partial == pytest.approx(partial_pearson(xs, ys, [z[c] for c in cks])[0], abs=1e-12)
    assert got.n_partial == 20
    again = correlation_table(planted["pairs"], planted["transfer"], layers=[3])
    pd.testing.assert_frame_equal(table, again)  # deterministic


def test_paper_rows_carry_uncertainty_final_model_out_of_partial(paper_inputs):
    pairs, transfer, over, score = paper_inputs
    t = correlation_table(pairs, transfer, recipe="paper")
    targets = [l for l in P_LANGS if l != "en"]
    steps = dict(P_CKS)
    for task in ("pos", "xnli"):
        av = t[(t.task == task) & (t.kind == "average")].iloc[0]
        assert av.n_partial == 4 and math.isnan(av.r_boot_lo)
        assert (av.p_perm * 24) == pytest.approx(round(av.p_perm * 24))  # exact over 4! orderings
        pw = t[(t.task == task) & (t.kind == "pairwise")].iloc[0]
        pts = [(c, l) for c, _ in P_CKS for l in targets]
        x = [_pair_x(over, c, l) for c, l in pts]
        y = [score[(c, task, l)] for c, l in pts]
        z = [math.log10(steps[c]) if c != "final" else math.nan for c, _ in pts]
        assert pw.n == 15 and pw.n_partial == 12  # the final model has no step
        assert (pw.r_partial, pw.p_partial) == pytest.approx(partial_pearson(x, y, z)[:2], abs=1e-12)
        assert (pw.r_boot_lo, pw.r_boot_hi) == pytest.approx(
            cluster_bootstrap_ci(x, y, [l for _, l in pts]), abs=1e-12)
        assert (pw.r_loo_min, pw.r_loo_max) == pytest.approx(
            leave_one_out_range(x, y, groups=[c for c, _ in pts]), abs=1e-12)
        assert (pw.r_lo, pw.r_hi) == pytest.approx(pearson_ci(x, y), abs=1e-12)
    md = table1_markdown(t).splitlines()
    assert "95% CI (Fisher z)" in md[0] and "p (permutation)" in md[0] and "language bootstrap" in md[0]
    assert len({line.count("|") for line in md}) == 1  # header, rule and rows: same number of columns
    pw = t[(t.task == "xnli") & (t.kind == "pairwise")].iloc[0]
    assert (f"| [{pw.r_lo:.2f}, {pw.r_hi:.2f}] |" in md[5]
            and f"[{pw.r_boot_lo:.2f}, {pw.r_boot_hi:.2f}] |" in md[5] and f"n={int(pw.n_partial)})" in md[5])
    assert md[4].rstrip().endswith("| — |")  # XNLI average: no language bootstrap


def _row(**kw):
    base = dict(task="xnli", kind="pairwise", r=0.62, p=0.001, n=40, r_lo=0.38, r_hi=0.78, p_perm=0.002,
                r_loo_min=0.55, r_loo_max=0.70, r_partial=0.41, p_partial=0.01, n_partial=32,
                r_boot_lo=0.21, r_boot_hi=0.86)
    return pd.Series({**base, **kw})


def test_survives_sentences():
    s = survives(_row())
    assert s.startswith("XNLI pairwise: r = 0.62, 95% CI [0.38, 0.78] excludes 0, permutation p = 0.002")
    assert ": distinguishable from no correlation (alpha = 0.05)" in s
    assert "controlling for log step, r = 0.41 (p = 0.010)" in s and "crosses 0" not in s
    # each condition alone sinks it
    assert "not distinguishable" in survives(_row(r_lo=-0.02))
    assert "not distinguishable" in survives(_row(p_perm=0.06))
    assert "not distinguishable" in survives(_row(p_perm=0.03), alpha=0.01)
    s = survives(_row(r_boot_lo=-0.1))
    assert "language-bootstrap 95% CI [-0.10, 0.86] includes 0" in s and "not distinguishable" in s
    # the bootstrap is not required for average rows (it is NaN there)
    assert ": distinguishable" in survives(_row(kind="average", r_boot_lo=np.nan, r_boot_hi=np.nan))
    s = survives(_row(r_loo_min=-0.05))
    assert "leaving one checkpoint out, r ranges from -0.05 to 0.70 (crosses 0)" in s
    assert survives(_row(r=np.nan, n=2)).endswith("r is undefined (n = 2 points or constant input): no evidence "
                                                  "either way.")
    s = survives(_row(kind="average", n=3, r_lo=np.nan, r_hi=np.nan, r_partial=np.nan))
    assert "95% CI undefined" in s and "not distinguishable" in s and "log step" not in s


def test_survives_on_real_table_rows(planted, paper_inputs):
    table = correlation_table(planted["pairs"], planted["transfer"], layers=[3])
    for _, r in table.iterrows():
        s = survives(r)
        assert s.startswith(f"{r.task.upper()} {r.kind} (ℓ=3 {r.attribute}): ") and s.endswith(".")
        assert ("not distinguishable" in s) or (r.r_lo > 0 or r.r_hi < 0)
    t = correlation_table(*paper_inputs[:2], recipe="paper")  # random planted data: nothing survives
    assert all("not distinguishable" in survives(r) for _, r in t.iterrows())
