"""Entropy weighting x batch size: seed agreement of the selected neurons and saturation of q.

Issue 11 (section 3). The reference trainer (copenlu multilingual-typology-probing) weights
the entropy of q(m) once per minibatch of 256 (``entropy_scale="reference"``: mean
log-likelihood + H(q)); xalign's ``"per_example"`` weights it ``H(q)/N`` (the ELBO of one
subset shared by the dataset). This script trains, for planted and for real word vectors,
``--seeds`` probes per setting under the reference protocol (``--max-epochs`` 5000,
``--patience`` 50, the last epoch's parameters, ``restore="last"``) and prints per setting:

* ``agree``: seed agreement of the greedy top-k selections on dev, the mean over seed pairs
  of |A ∩ B| / k (:func:`xalign.selection.greedy_select`);
* ``sat``: the fraction of marginals σ(φ_d) > 0.9 (mean over seeds);
* ``elbo``: the per-example objective reached, ``E_q[log p(π | h ⊙ m)] + H(q)/N`` in
  nats/example on the whole training split (:func:`xalign.probe.held_out_log_lik`'s fixed
  masks), mean over seeds: the quantity both batch modes maximise with ``per_example``;
* ``epochs`` (median) and ``steps`` (Adam steps, median), and the wall time.

Settings: {per_example, reference} x {full batch, minibatch 256}, plus

* ``per_example, full batch, = steps`` (``--same-steps``; default on planted data only):
  full batch for as many Adam steps as the
  per-example minibatch run took (median over seeds), no early stopping. It tells apart a
  mis-weighting by the minibatches from the objective itself: it saturates like the
  minibatch run, so the minibatches optimise the *same* objective, further per epoch.
* the fix: :func:`xalign.probe.train_probe` rejects ``per_example`` with minibatches; the
  line ``per_example mb256 via train_probe`` prints its one-line error. The per-example
  minibatch numbers above it come from the private training loop with the check off.

Real vectors: ``--run`` (default ``runs/bench-probe``), made with ``--prepare``: the tiny lab
of ``params/tiny-lab.yaml`` pretrained to step 600 on en/es/fr, data prep, layer-4 vectors
(about 4 minutes on 2 CPU cores). Raw and standardised inputs (``--inputs``).

Usage::

    python benchmarks/bench_entropy_minibatch.py --prepare      # once: makes runs/bench-probe
    python benchmarks/bench_entropy_minibatch.py                # planted + real, ~5 min
    python benchmarks/bench_entropy_minibatch.py --same-steps all   # + the = steps rows, ~20 min

One torch thread (``--threads``).

Measured (2 CPU cores, 1 thread, ``--same-steps all``, 4 seeds, k = 10; agreement /
fraction σ > 0.9), per_example mb256 vs reference mb256 vs per_example full batch vs
per_example full batch for the minibatch run's number of steps:

=============================  =========  =========  =========  =========
data                           pe mb256   ref mb256  pe full    pe = steps
=============================  =========  =========  =========  =========
planted d=256                  0.52/0.08  0.75/0.00  0.57/0.01  0.77/0.08
planted d=512                  0.42/0.03  0.65/0.00  0.67/0.00  0.53/0.03
es Gender raw                  0.17/0.00  0.32/0.00  0.18/0.00  0.20/0.00
es Gender standardised         0.35/0.14  0.58/0.00  0.73/0.00  0.33/0.22
fr POS raw                     0.13/0.10  0.55/0.00  0.42/0.00  0.22/0.16
fr POS standardised            0.30/0.40  0.60/0.00  0.62/0.00  0.22/0.54
=============================  =========  =========  =========  =========

Per-example weighting with minibatches was below the reference weighting on every set, and
full batch run for the same number of steps reached the same (higher) per-example ELBO and
saturated as much: the minibatches optimise the same objective further, they do not
mis-weight it. Hence the rejection.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import statistics
import time
from pathlib import Path

import torch

from xalign import probe as probe_mod
from xalign.probe import ProbeConfig, held_out_log_lik, standardize, train_probe
from xalign.selection import greedy_select


def planted(n: int, d: int, n_classes: int, n_informative: int, n_factors: int, seed: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Planted word vectors: graded, redundant class signal in a few dims, correlated noise.

    Dims ``0 .. n_informative-1`` carry the class mean ``μ_y`` (per-dim scale decaying
    linearly from 1.0 to 0.2, so neighbours in rank are near-ties, as in real vectors);
    every dim has N(0, 1) noise plus ``n_factors`` shared Gaussian factors (loadings
    N(0, 0.25)), so dims are correlated. Returns X (n, d) float32, y (n,) int64 in [0, C).
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, n_classes, (n,), generator=g)
    means = torch.randn(n_classes, n_informative, generator=g) * torch.linspace(1.0, 0.2, n_informative)
    X = torch.randn(n, d, generator=g)
    X += torch.randn(n, n_factors, generator=g) @ torch.randn(n_factors, d, generator=g) * 0.5
    X[:, :n_informative] += means[y]
    return X, y


def _train(X, y, C, cfg: ProbeConfig):
    """train_probe without the per_example x minibatch check (to measure what it rejects)."""
    return probe_mod._train(X, y, C, cfg, latent=True, check_entropy_batch=False)


def _steps(probe, n_train: int) -> int:
    cfg = probe.config
    n_tr = n_train - int(round(cfg.held_out_fraction * n_train))
    bs = n_tr if cfg.batch_size is None else min(cfg.batch_size, n_tr)
    return len(probe.history) * -(-n_tr // bs)


def _elbo(probe, X, y) -> float:
    """E_q[log p] on all of X (fixed masks) + H(q)/N, nats/example."""
    return held_out_log_lik(probe, X, y, probe.config.seed) + probe.history[-1]["entropy"] / X.shape[0]


def run_setting(name: str, X, y, Xdv, ydv, C, k, cfg: ProbeConfig, seeds: int) -> dict:
    t0 = time.perf_counter()
    sels, sat, elbo, epochs, steps = [], [], [], [], []
    for s in range(seeds):
        pr = _train(X, y, C, dataclasses.replace(cfg, seed=s))
        sels.append(set(greedy_select(pr, Xdv, ydv, k=k).neurons))
        sat.append(float((pr.marginals > 0.9).float().mean()))
        elbo.append(_elbo(pr, X, y))
        epochs.append(len(pr.history))
        steps.append(_steps(pr, X.shape[0]))
    agree = statistics.mean(len(a & b) / k for a, b in itertools.combinations(sels, 2))
    row = {"setting": name, "agree": agree, "sat": statistics.mean(sat), "elbo": statistics.mean(elbo),
           "epochs": int(statistics.median(epochs)), "steps": int(statistics.median(steps)),
           "s": time.perf_counter() - t0}
    print(f"  {name:34s} agree {row['agree']:.2f}  sat {row['sat']:.2f}  elbo {row['elbo']:+.4f}  "
          f"epochs {row['epochs']:5d}  steps {row['steps']:6d}  {row['s']:5.0f} s", flush=True)
    return row


def compare(title: str, X, y, Xdv, ydv, C, k, args, same_steps: bool) -> None:
    print(f"\n{title}: train {tuple(X.shape)}, dev {tuple(Xdv.shape)}, C={C}, k={k}, {args.seeds} seeds", flush=True)
    base = ProbeConfig(max_epochs=args.max_epochs, patience=args.patience, restore="last")
    rows = {}
    for es, bs in itertools.product(("per_example", "reference"), (None, 256)):
        name = f"{es}, {'full batch' if bs is None else 'minibatch 256'}"
        rows[name] = run_setting(name, X, y, Xdv, ydv, C, k,
                                 dataclasses.replace(base, entropy_scale=es, batch_size=bs), args.seeds)
    if same_steps:
        n = rows["per_example, minibatch 256"]["steps"]
        run_setting("per_example, full batch, = steps", X, y, Xdv, ydv, C, k,
                    dataclasses.replace(base, batch_size=None, max_epochs=n, patience=n), args.seeds)
    try:
        train_probe(X, y, C, dataclasses.replace(base, batch_size=256))
        print("  per_example mb256 via train_probe: accepted (not rejected!)")
    except ValueError as e:
        print(f"  per_example mb256 via train_probe: ValueError: {e}")


def prepare(run_name: str) -> None:
    """Pretrain the tiny lab to step 600 on en/es/fr, data prep, layer-4 vectors (~4 min)."""
    from xalign import runs
    from xalign.params import load_params

    P = load_params("params/tiny-lab.yaml", overrides={
        "run_name": run_name, "pretrain.checkpoint_steps": [600], "data.languages": ["en", "es", "fr"],
        "extraction.layers": [4], "extraction.sweep_layers": [4]})
    for stage in (runs.run_pretrain, runs.run_data_prep, runs.run_extraction):
        stage(P)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/bench-probe", help="run folder with data/ and vectors/")
    ap.add_argument("--prepare", action="store_true", help="make --run first (tiny lab, ~4 min)")
    ap.add_argument("--real", nargs="*", default=["es:Gender", "fr:POS"], help="lang:attribute pairs")
    ap.add_argument("--layer", type=int, default=4)
    ap.add_argument("--inputs", nargs="+", default=["raw", "standardised"], choices=["raw", "standardised"])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--max-epochs", type=int, default=5000)
    ap.add_argument("--patience", type=int, default=50)
    ap.add_argument("--no-planted", action="store_true")
    ap.add_argument("--same-steps", choices=["planted", "all", "none"], default="planted",
                    help="where to run the 'full batch, = steps' row (minutes per real set)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    if args.prepare:
        prepare(run.name)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); protocol: max_epochs "
          f"{args.max_epochs}, patience {args.patience}, restore last, lr {ProbeConfig.lr}, "
          f"mc_samples {ProbeConfig.mc_samples}")

    if not args.no_planted:
        for d in (256, 512):
            X, y = planted(5500, d, 4, 64, 8, seed=0)
            compare(f"planted d={d} (64 graded informative dims, 8 noise factors)",
                    X[:4000], y[:4000], X[4000:], y[4000:], 4, args.k, args, args.same_steps != "none")

    if args.real:
        from xalign.stages.probing import probe_splits
        from xalign.store import load_tensors, read_table

        vec = sorted(p for p in (run / "vectors").glob("*") if p.is_dir())
        if not vec:
            raise SystemExit(f"{run}/vectors: no vectors; run with --prepare first")
        labels = read_table(run / "data" / "labels.parquet")
        for pair in args.real:
            lang, attr = pair.split(":")
            tensors, _ = load_tensors(vec[-1] / f"{lang}.safetensors")
            sp, values = probe_splits(labels[(labels.language == lang) & (labels.attribute == attr)],
                                      tensors, args.layer)
            (Xtr, ytr), (Xdv, ydv) = sp["train"], sp["dev"]
            for inputs in args.inputs:
                A, B = standardize(Xtr, Xdv) if inputs == "standardised" else (Xtr, Xdv)
                compare(f"real {run.name}/{vec[-1].name} layer {args.layer} {lang} {attr}, {inputs}",
                        A, ytr, B, ydv, len(values), args.k, args, args.same_steps == "all")


if __name__ == "__main__":
    main()
