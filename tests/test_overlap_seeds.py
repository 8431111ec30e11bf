"""Stage 4 with probe seeds: per-seed pairs, intervals over seeds and languages, the
self-overlap ceiling, and the test for drops between checkpoints (planted data, simulation)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from xalign.overlap import (average_with_intervals, overlap_changes, overlap_pairs, self_overlap,
                            summarise_seeds)

D, K = 120, 10


def _perturb(base: np.ndarray, q: float, rng: np.random.Generator, d: int = D) -> list[int]:
    """``base`` with each neuron replaced with probability q by a random neuron not in it."""
    out = [int(c) for c in base]
    for i in range(len(out)):
        if rng.random() < q:
            while True:
                c = int(rng.integers(d))
                if c not in out:
                    out[i] = c
                    break
    return out


def _world(rng: np.random.Generator, n_lang: int, core: np.ndarray | None = None) -> list[np.ndarray]:
    """Each language's informative neurons: a shared core with a language-specific share
    replaced (a random effect per language, the replaced fraction ~ U(0.2, 0.8))."""
    core = rng.choice(D, K, replace=False) if core is None else core
    return [np.array(_perturb(core, rng.uniform(0.2, 0.8), rng)) for _ in range(n_lang)]


def _selections(world: list[np.ndarray], seeds: int, q: float, rng, checkpoint="c1", step=1) -> pd.DataFrame:
    rows = []
    for li, inf in enumerate(world):
        for s in range(seeds):
            rows.append(dict(checkpoint=checkpoint, step=step, layer=3, attribute="POS", language=f"l{li:02d}",
                             d=D, k=K, neurons=_perturb(inf, q, rng), seed=s))
    return pd.DataFrame(rows)


def test_pairs_are_per_seed_and_summarised_over_seeds():
    rng = np.random.default_rng(0)
    sel = _selections(_world(rng, 4), seeds=3, q=0.3, rng=rng)
    by_seed = overlap_pairs(sel)
    assert len(by_seed) == 6 * 3 and sorted(by_seed.seed.unique()) == [0, 1, 2]
    # a seed's pair is that seed's two selections
    r = by_seed[(by_seed.lang_a == "l00") & (by_seed.lang_b == "l01") & (by_seed.seed == 2)].iloc[0]
    a = set(sel[(sel.language == "l00") & (sel.seed == 2)].neurons.iloc[0])
    b = set(sel[(sel.language == "l01") & (sel.seed == 2)].neurons.iloc[0])
    assert r.n_overlap == len(a & b)
    s = summarise_seeds(by_seed)
    assert len(s) == 6 and (s.n_seeds == 3).all()
    g = by_seed.groupby(["lang_a", "lang_b"])
    np.testing.assert_allclose(s.overlap_rate, g.overlap_rate.mean().to_numpy())
    np.testing.assert_allclose(s.p_value, g.p_value.max().to_numpy())
    assert ((s.overlap_lo <= s.overlap_rate + 1e-12) & (s.overlap_rate <= s.overlap_hi + 1e-12)).all()
    assert (s.significant == g.significant.all().to_numpy()).all()


def test_one_seed_gives_the_plain_table_and_no_interval():
    rng = np.random.default_rng(1)
    sel = _selections(_world(rng, 3), seeds=1, q=0.3, rng=rng)
    plain = overlap_pairs(sel.drop(columns="seed"))
    s = summarise_seeds(overlap_pairs(sel))
    np.testing.assert_array_equal(s.overlap_rate, plain.overlap_rate)
    np.testing.assert_array_equal(s.p_holm, plain.p_holm)
    assert s.overlap_lo.isna().all() and self_overlap(sel).self_overlap_rate.isna().all()


def test_self_overlap_is_the_mean_over_seed_pairs():
    sel = pd.DataFrame([dict(checkpoint="c", step=1, layer=2, attribute="Number", language="en", d=20, k=4,
                             neurons=n, seed=s) for s, n in enumerate([[0, 1, 2, 3], [0, 1, 2, 9], [0, 7, 8, 9]])])
    t = self_overlap(sel).iloc[0]
    # seed pairs: |{0,1,2}| = 3, |{0}| = 1, |{0,9}| = 2 -> rates 0.75, 0.25, 0.5
    assert t.self_overlap_rate == pytest.approx(0.5)
    assert t.jaccard == pytest.approx(np.mean([3 / 5, 1 / 7, 2 / 6]))


def test_seed_noise_lowers_the_ceiling():
    rng = np.random.default_rng(2)
    world = _world(rng, 5)
    quiet = self_overlap(_selections(world, 4, 0.1, rng)).self_overlap_rate.mean()
    noisy = self_overlap(_selections(world, 4, 0.5, rng)).self_overlap_rate.mean()
    assert quiet > noisy + 0.2


def _truth_pair(a: np.ndarray, b: np.ndarray, q: float, n: int = 20_000) -> float:
    rng = np.random.default_rng(99)
    return float(np.mean([len(set(_perturb(a, q, rng)) & set(_perturb(b, q, rng))) for _ in range(n)])) / K


def test_pair_interval_over_seeds_covers_the_planted_overlap():
    """Calibration: a pair with a known expected overlap (informative sets sharing 6 of 10,
    each seed's selection losing each neuron w.p. 0.3); 150 replicates of 5 seeds; the
    nominal 95% t interval covers the truth in >= 90% of them."""
    rng = np.random.default_rng(3)
    a = np.arange(10)
    b = np.r_[np.arange(6), np.arange(50, 54)]
    truth = _truth_pair(a, b, 0.3)
    hits = 0
    for rep in range(150):
        rows = [dict(checkpoint="c", step=1, layer=1, attribute="POS", language=lang, d=D, k=K,
                     neurons=_perturb(inf, 0.3, rng), seed=s) for s in range(5) for lang, inf in (("a", a), ("b", b))]
        s = summarise_seeds(overlap_pairs(pd.DataFrame(rows))).iloc[0]
        hits += s.overlap_lo <= truth <= s.overlap_hi
    assert hits / 150 >= 0.90, (hits, truth)


def test_average_interval_covers_the_population_average():
    """Calibration of the two-level bootstrap (seeds, languages as clusters): languages drawn
    from a population with a known expected average overlap (estimated from 300 languages),
    100 replicates of 13 languages x 3 seeds; coverage of the nominal 95% interval >= 90%."""
    rng = np.random.default_rng(4)
    core = rng.choice(D, K, replace=False)
    big = overlap_pairs(_selections(_world(rng, 300, core), 1, 0.3, rng))
    truth = float(big.overlap_rate.mean())
    hits, widths = 0, []
    for rep in range(100):
        by_seed = overlap_pairs(_selections(_world(rng, 13, core), 3, 0.3, rng))
        avg = average_with_intervals(by_seed, n_boot=400, seed=rep).iloc[0]
        hits += avg.overlap_lo <= truth <= avg.overlap_hi
        widths.append(avg.overlap_hi - avg.overlap_lo)
    assert hits / 100 >= 0.90, (hits, truth)


def test_intervals_widen_with_fewer_languages_and_seeds():
    rng = np.random.default_rng(5)
    core = rng.choice(D, K, replace=False)
    world = _world(rng, 13, core)

    def width(n_lang, seeds):
        ws = []
        for r in range(8):
            a = average_with_intervals(overlap_pairs(_selections(world[:n_lang], seeds, 0.3, rng)), n_boot=400,
                                       seed=r).iloc[0]
            ws.append(a.overlap_hi - a.overlap_lo)
        return np.mean(ws)

    assert width(5, 3) > 1.2 * width(13, 3)
    per_pair = [summarise_seeds(overlap_pairs(_selections(world[:2], s, 0.3, rng))).iloc[0] for s in (3, 12)]
    assert per_pair[0].overlap_hi - per_pair[0].overlap_lo > per_pair[1].overlap_hi - per_pair[1].overlap_lo


def _two_checkpoints(rng, q_to: float, q_from: float = 0.3, n_lang: int = 10, seeds: int = 3) -> pd.DataFrame:
    world = _world(rng, n_lang)
    return pd.concat([_selections(world, seeds, q_from, rng, "c1", 100),
                      _selections(world, seeds, q_to, rng, "c2", 200)], ignore_index=True)


def test_a_planted_drop_is_detected_and_marked():
    rng = np.random.default_rng(6)
    ch = overlap_changes(overlap_pairs(_two_checkpoints(rng, q_to=0.85)), n_boot=1000)
    r = ch.iloc[0]
    assert (r.checkpoint_from, r.checkpoint_to, r.step_to) == ("c1", "c2", 200)
    assert r.delta < 0 and r.delta_hi < 0 and r.p_holm < 0.05 and r.drop and r.significant


def test_no_change_gives_uniform_p_values():
    """Null simulation: both checkpoints from the same process (same languages, fresh seeds):
    the share of p < 0.05 stays near 0.05 (200 replicates), and p is not piled at 1."""
    rng = np.random.default_rng(7)
    ps = np.array([overlap_changes(overlap_pairs(_two_checkpoints(rng, q_to=0.3)), n_boot=400, seed=i).p_value.iloc[0]
                   for i in range(200)])
    assert 0.01 <= np.mean(ps < 0.05) <= 0.10, np.mean(ps < 0.05)
    assert 0.35 <= np.mean(ps < 0.5) <= 0.65, np.mean(ps < 0.5)


def test_holm_runs_over_the_steps_of_one_layer_and_attribute():
    rng = np.random.default_rng(8)
    world = _world(rng, 8)
    sel = pd.concat([_selections(world, 2, q, rng, f"c{i}", 10 * (i + 1)) for i, q in enumerate([0.3, 0.3, 0.8, 0.8])],
                    ignore_index=True)
    ch = overlap_changes(overlap_pairs(sel), n_boot=400)
    assert list(ch.checkpoint_to) == ["c1", "c2", "c3"] and len(ch) == 3
    from statsmodels.stats.multitest import multipletests
    np.testing.assert_allclose(ch.p_holm, multipletests(ch.p_value, method="holm")[1])
    assert bool(ch.set_index("checkpoint_to").loc["c2", "drop"])


def test_probe_seeds_times_split_seeds_are_the_replicates():
    """With data.split_seeds, a replicate is (probe seed, split seed): pairs compare the same
    replicate of two languages, summaries and ceilings run over all S x T replicates."""
    rng = np.random.default_rng(9)
    world = _world(rng, 4)
    sel = pd.concat([_selections(world, 3, 0.3, rng).assign(split_seed=t) for t in (0, 5)], ignore_index=True)
    by_seed = overlap_pairs(sel)
    assert len(by_seed) == 6 * 3 * 2 and {"seed", "split_seed"} <= set(by_seed.columns)
    r = by_seed[(by_seed.lang_a == "l00") & (by_seed.lang_b == "l02") & (by_seed.seed == 1)
                & (by_seed.split_seed == 5)].iloc[0]
    pick = lambda l: set(sel[(sel.language == l) & (sel.seed == 1) & (sel.split_seed == 5)].neurons.iloc[0])  # noqa: E731
    assert r.n_overlap == len(pick("l00") & pick("l02"))
    s = summarise_seeds(by_seed)
    assert (s.n_seeds == 6).all()
    assert (self_overlap(sel).n_seeds == 6).all()
    avg = average_with_intervals(by_seed, self_overlap(sel), n_boot=200).iloc[0]
    assert avg.n_seeds == 6 and avg.overlap_lo <= avg.overlap_rate <= avg.overlap_hi
    with pytest.raises(ValueError, match="split_seed=5"):
        overlap_pairs(pd.concat([sel, sel.iloc[[-1]]]))
