"""Stage 4: pairwise neuron overlap, hypergeometric p-values and Holm correction."""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pandas as pd
import pytest

from xalign.overlap import (PAIR_COLUMNS, average_overlap, overlap_matrix, overlap_p_value,
                            overlap_pairs, pair_overlap_with)

D, K = 50, 5
#: Planted selections: en–fr share {0,1,2}, en–es {0,1,2,3}, fr–es {0,1,2}; zh shares none.
PLANTED = {
    "en": [0, 1, 2, 3, 4],
    "fr": [11, 0, 10, 1, 2],
    "es": [3, 2, 1, 0, 20],
    "zh": [30, 31, 32, 33, 34],
}
EXPECTED_O = {("en", "es"): 4, ("en", "fr"): 3, ("en", "zh"): 0,
              ("es", "fr"): 3, ("es", "zh"): 0, ("fr", "zh"): 0}


def tail(o: int, d: int, k: int) -> float:
    """P[|A∩B| >= o] for random k-subsets of d, from the hypergeometric pmf with math.comb."""
    return sum(math.comb(k, j) * math.comb(d - k, k - j) for j in range(o, k + 1)) / math.comb(d, k)


def holm(p: list[float]) -> list[float]:
    """Holm step-down adjusted p-values, written out from the definition."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adj, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adj[i] = running
    return adj


def sel_rows(sets: dict[str, list[int]], checkpoint="step-000200", step=200, layer=3,
             attribute="Number", d=D, k=K) -> list[dict]:
    return [dict(checkpoint=checkpoint, step=step, layer=layer, attribute=attribute, language=lang,
                 d=d, k=k, neurons=list(neurons), dev_mi=0.1, test_mi=0.1, dev_acc=0.9, test_acc=0.9,
                 dev_mi_all=0.2, test_mi_all=0.2)
            for lang, neurons in sets.items()]


def test_planted_overlaps_and_exact_p_values():
    pairs = overlap_pairs(pd.DataFrame(sel_rows(PLANTED)))
    assert list(pairs.columns) == PAIR_COLUMNS
    assert len(pairs) == 6
    assert (pairs["lang_a"] < pairs["lang_b"]).all()
    got = {(a, b): o for a, b, o in zip(pairs["lang_a"], pairs["lang_b"], pairs["n_overlap"])}
    assert got == EXPECTED_O
    np.testing.assert_allclose(pairs["overlap_rate"], pairs["n_overlap"] / K)
    np.testing.assert_allclose(pairs["chance_rate"], K / D)
    want_p = [tail(o, D, K) for o in pairs["n_overlap"]]
    np.testing.assert_allclose(pairs["p_value"], want_p, rtol=1e-9)
    np.testing.assert_allclose(pairs["p_holm"], holm(want_p), rtol=1e-9)
    # zero overlap is never surprising
    np.testing.assert_allclose(pairs.loc[pairs["n_overlap"] == 0, "p_value"], 1.0)
    assert pairs["step"].tolist() == [200] * 6
    assert (pairs["k"] == K).all() and (pairs["d"] == D).all()


def test_significance_follows_holm_and_alpha():
    sel = pd.DataFrame(sel_rows(PLANTED))
    strict = overlap_pairs(sel, alpha=0.05)
    assert (strict["significant"] == (strict["p_holm"] < 0.05)).all()
    # o=3 of k=5 in d=50: p ≈ 1.9e-3, Holm x≤6 stays < 0.05; o=0 never significant
    assert set(strict.loc[strict["significant"], "n_overlap"]) == {3, 4}
    tight = overlap_pairs(sel, alpha=tail(4, D, K) * 6 * 1.01)
    assert tight["significant"].sum() == 1  # only the o=4 pair survives that alpha
    with pytest.raises(ValueError, match="alpha"):
        overlap_pairs(sel, alpha=1.5)


def test_holm_family_is_one_group():
    """Holm corrects within (checkpoint, layer, attribute), not across the whole table."""
    two = {"en": PLANTED["en"], "es": PLANTED["es"]}
    sel = pd.DataFrame(sel_rows(two, layer=3) + sel_rows(PLANTED, layer=4))
    pairs = overlap_pairs(sel)
    l3 = pairs[pairs["layer"] == 3]
    assert len(l3) == 1
    assert l3["p_holm"].iloc[0] == pytest.approx(l3["p_value"].iloc[0])  # family of one
    l4 = pairs[pairs["layer"] == 4]
    np.testing.assert_allclose(l4["p_holm"], holm(l4["p_value"].tolist()), rtol=1e-9)
    same = l4[(l4["lang_a"] == "en") & (l4["lang_b"] == "es")]
    assert same["p_value"].iloc[0] == pytest.approx(l3["p_value"].iloc[0])
    assert same["p_holm"].iloc[0] > l3["p_holm"].iloc[0]


def test_single_language_group_gives_no_pairs_and_empty_input():
    pairs = overlap_pairs(pd.DataFrame(sel_rows({"en": PLANTED["en"]})))
    assert pairs.empty and list(pairs.columns) == PAIR_COLUMNS
    empty = pd.DataFrame(columns=list(sel_rows(PLANTED)[0]))
    assert overlap_pairs(empty).empty


def test_random_selections_average_chance_rate():
    """Under the null (independent random k-subsets) the mean overlap rate is ≈ k/d."""
    rng = np.random.default_rng(0)
    d, k = 40, 8
    sets = {f"l{i:02d}": rng.choice(d, k, replace=False).tolist() for i in range(50)}
    pairs = overlap_pairs(pd.DataFrame(sel_rows(sets, d=d, k=k)))
    assert len(pairs) == 50 * 49 // 2
    assert pairs["overlap_rate"].mean() == pytest.approx(k / d, abs=0.02)
    assert pairs["significant"].mean() < 0.01  # Holm controls the family-wise error


def test_parquet_round_trip_numpy_neurons(tmp_path):
    sel = pd.DataFrame(sel_rows(PLANTED))
    sel.to_parquet(tmp_path / "selections.parquet", index=False)
    back = pd.read_parquet(tmp_path / "selections.parquet")
    assert isinstance(back["neurons"].iloc[0], np.ndarray)
    pd.testing.assert_frame_equal(overlap_pairs(back), overlap_pairs(sel))


def test_final_checkpoint_without_step_sorts_last():
    sel = pd.DataFrame(sel_rows(PLANTED, checkpoint="main", step=None)
                       + sel_rows(PLANTED, checkpoint="step-000025", step=25))
    pairs = overlap_pairs(sel)
    assert str(pairs["step"].dtype) == "Int64"
    assert pairs["checkpoint"].iloc[0] == "step-000025" and pairs["checkpoint"].iloc[-1] == "main"
    assert pairs.loc[pairs["checkpoint"] == "main", "step"].isna().all()
    avg = average_overlap(pairs)
    assert avg["checkpoint"].tolist() == ["step-000025", "main"]


@pytest.mark.parametrize("field,bad,match", [
    ("d", 64, r"checkpoint=step-000200 layer=3 attribute=Number mixes d values \[50, 64\].*hidden-size"),
    ("k", 4, r"checkpoint=step-000200 layer=3 attribute=Number mixes k values \[4, 5\]"),
])
def test_mismatched_d_or_k_in_group(field, bad, match):
    rows = sel_rows(PLANTED)
    rows[1][field] = bad
    if field == "k":
        rows[1]["neurons"] = rows[1]["neurons"][:4]
    with pytest.raises(ValueError, match=match):
        overlap_pairs(pd.DataFrame(rows))


@pytest.mark.parametrize("neurons,match", [
    ([0, 1, 1, 3, 4], "duplicate neuron"),
    ([0, 1, 2, 3, 50], r"out of \[0, d=50\)"),
    ([-1, 1, 2, 3, 4], r"out of \[0, d=50\)"),
    ([0, 1, 2, 3], "4 neurons but k=5"),
    ([0, 1, 2.5, 3, 4], "non-integer"),
    (None, "expected a list"),
])
def test_bad_selection_names_the_probe(neurons, match):
    rows = sel_rows(PLANTED)
    rows[2]["neurons"] = neurons  # es
    with pytest.raises(ValueError, match=match) as e:
        overlap_pairs(pd.DataFrame(rows))
    assert "checkpoint=step-000200 layer=3 attribute=Number language=es" in str(e.value)


def test_missing_columns_and_duplicate_rows():
    sel = pd.DataFrame(sel_rows(PLANTED))
    with pytest.raises(ValueError, match=r"missing columns \['neurons'\]"):
        overlap_pairs(sel.drop(columns="neurons"))
    with pytest.raises(ValueError, match="duplicate rows.*language=en"):
        overlap_pairs(pd.concat([sel, sel.iloc[[0]]]))


def test_average_overlap_planted():
    sel = pd.DataFrame(sel_rows(PLANTED) + sel_rows(PLANTED, attribute="POS", layer=4))
    avg = average_overlap(overlap_pairs(sel))
    assert len(avg) == 2
    want = sum(EXPECTED_O.values()) / K / len(EXPECTED_O)
    np.testing.assert_allclose(avg["overlap_rate"], want)
    assert avg["n_pairs"].tolist() == [6, 6]
    assert avg["n_significant"].tolist() == [3, 3]
    np.testing.assert_allclose(avg["chance_rate"], K / D)
    assert avg["overlap_rate_std"].iloc[0] == pytest.approx(np.std([o / K for o in EXPECTED_O.values()], ddof=1))
    assert average_overlap(overlap_pairs(sel.iloc[:0])).empty


def test_overlap_matrix_symmetric_with_blank_diagonal():
    pairs = overlap_pairs(pd.DataFrame(sel_rows(PLANTED)))
    rate, sig = overlap_matrix(pairs, "step-000200", 3, "Number")
    langs = sorted(PLANTED)
    assert rate.index.tolist() == langs and rate.columns.tolist() == langs
    assert np.isnan(np.diag(rate.to_numpy())).all()
    np.testing.assert_allclose(rate.to_numpy(), rate.to_numpy().T, equal_nan=True)
    for (a, b), o in EXPECTED_O.items():
        assert rate.loc[a, b] == pytest.approx(o / K)
        assert sig.loc[a, b] == sig.loc[b, a] == (o >= 3)
    assert not np.diag(sig.to_numpy()).any()
    rate2, _ = overlap_matrix(pairs, "step-000200", 3, "Number", languages=["zh", "en", "xx"])
    assert rate2.index.tolist() == ["zh", "en", "xx"]
    assert rate2.loc["en", "zh"] == 0.0 and np.isnan(rate2.loc["en", "xx"])
    with pytest.raises(ValueError, match="no rows for checkpoint=step-000200 layer=9 attribute=Number"):
        overlap_matrix(pairs, "step-000200", 9, "Number")


def test_pair_overlap_with_pivot():
    pairs = overlap_pairs(pd.DataFrame(sel_rows(PLANTED)))
    en = pair_overlap_with(pairs, "en")
    assert sorted(en["language"]) == ["es", "fr", "zh"]
    got = dict(zip(en["language"], en["n_overlap"]))
    assert got == {"es": 4, "fr": 3, "zh": 0}
    fr = pair_overlap_with(pairs, "fr")
    assert dict(zip(fr["language"], fr["n_overlap"])) == {"en": 3, "es": 3, "zh": 0}
    assert pair_overlap_with(pairs, "ta").empty


def test_overlap_p_value_helper():
    for o in range(K + 1):
        assert overlap_p_value(o, D, K) == pytest.approx(tail(o, D, K), rel=1e-9)
    assert sum(math.comb(K, j) * math.comb(D - K, K - j) for j in range(K + 1)) == math.comb(D, K)
    with pytest.raises(ValueError):
        overlap_p_value(6, D, K)
    with pytest.raises(ValueError):
        overlap_p_value(1, 4, 5)


def test_pairs_are_all_unordered_combinations():
    langs = {f"{c}": [i, i + 1, i + 2, i + 3, i + 4] for i, c in enumerate("abcdefg")}
    pairs = overlap_pairs(pd.DataFrame(sel_rows(langs)))
    assert list(zip(pairs["lang_a"], pairs["lang_b"])) == list(combinations(sorted(langs), 2))
    # shifted windows: |A∩B| = max(0, 5 - shift)
    shift = pairs["lang_b"].map(ord) - pairs["lang_a"].map(ord)
    assert (pairs["n_overlap"] == np.maximum(0, K - shift)).all()
