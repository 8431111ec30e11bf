"""What every numbered notebook does first, in one call: :func:`setup`.

A notebook's parameters cell declares three typed parameters (``papermill --help-notebook``
lists them)::

    params: str = "params/tiny-lab.yaml"  # a params file, or the dict papermill -f injects
    overrides: dict = {}                  # dotted params keys, e.g. {"probe.k": 20}
    missing_upstream: str = "slice"       # "slice" or "error" (what run_all.sh passes)

and its first code cell calls ``P = notebook.setup(params, overrides, missing_upstream,
stage="probing", namespace=globals())``, which

* rejects a papermill parameter the notebook does not declare (``-p k 20`` used to be
  ignored silently) with one line saying how to set a params key instead;
* validates the params with the overrides applied (:func:`xalign.params.load_params`: an
  unknown or misspelt key is a one-line error);
* configures logging and pandas display, prints the run and its folder;
* checks that the stages before this one are current for the params. If they are not, a
  notebook opened on a fresh clone does not fail at its runner cell: it says so in one line
  and continues on the built-in slice (:func:`slice_params`: ``params/minimal.yaml`` as
  ``<run>-slice``, every stage in about a minute on 2 CPU cores), running the stages before
  it first. ``missing_upstream: error`` (what ``run_all.sh`` passes) stops with the
  scheduler's one line instead, so a headless run never silently analyses another run.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Mapping

import yaml

from .errors import XalignError
from .params import ParamsError, RunParams, load_params, repo_root

log = logging.getLogger("xalign.notebook")

#: The parameters every numbered notebook declares (its ``parameters`` cell).
PARAMETERS = ("params", "overrides", "missing_upstream")
#: The slice a notebook falls back on (``missing_upstream: slice``).
SLICE_PARAMS = "params/minimal.yaml"


def parse_overrides(overrides: Mapping[str, Any] | str | None) -> dict[str, Any]:
    """Dotted-key overrides from a dict, or from a YAML / JSON string (``papermill -p
    overrides '{"probe.k": 20}'`` passes a string).

    Raises:
        ParamsError: not a mapping of dotted keys (one line).
    """
    if overrides is None or overrides == "":
        return {}
    if isinstance(overrides, str):
        try:
            overrides = yaml.safe_load(overrides)
        except yaml.YAMLError as e:
            raise ParamsError(f"overrides: not valid YAML/JSON ({' '.join(str(e).split())})") from None
    if not isinstance(overrides, Mapping) or not all(isinstance(k, str) for k in overrides):
        raise ParamsError(f"overrides: must map dotted params keys to values, e.g. {{'probe.k': 20}}, "
                          f"got {overrides!r}")
    return dict(overrides)


def injected_names(namespace: Mapping[str, Any]) -> list[str]:
    """The names papermill injected into this kernel: the assignments of the cells in IPython's
    input history (``In``) that start with papermill's ``# Parameters`` comment."""
    import ast

    names: list[str] = []
    for src in namespace.get("In") or []:
        if isinstance(src, str) and src.lstrip().startswith("# Parameters"):
            try:
                tree = ast.parse(src)
            except SyntaxError:
                continue
            names += [t.id for node in tree.body if isinstance(node, ast.Assign)
                      for t in node.targets if isinstance(t, ast.Name)]
    return names


def check_injected(namespace: Mapping[str, Any], declared: tuple[str, ...] = PARAMETERS) -> None:
    """Raise if papermill injected a parameter the notebook does not declare (``-p k 20``;
    papermill itself only logs a warning and the value is never used).

    Raises:
        ParamsError: one line naming the parameter(s) and the way to set a params key.
    """
    unknown = sorted(set(injected_names(namespace)) - set(declared))
    if unknown:
        raise ParamsError(f"papermill parameter(s) {unknown} are not parameters of this notebook "
                          f"(it has {list(declared)}); set a params key with "
                          f"-p overrides '{{\"probe.k\": 20}}' or -f a YAML file with 'overrides:'")


def slice_params(P: RunParams) -> RunParams:
    """The built-in slice for ``P``: ``params/minimal.yaml`` (3 languages, a d = 64 lab with
    3 checkpoints, every stage in about a minute), named ``<run>-slice``, in ``P``'s runs and
    figures folders and data root."""
    return load_params(repo_root() / SLICE_PARAMS, overrides={
        "run_name": f"{P.run_name}-slice", "runs_dir": P.runs_dir, "figures_dir": P.figures_dir,
        "data_root": P.data_root})


def stale_upstream(P: RunParams, stage: str) -> str | None:
    """Why the stages before ``stage`` are not current for ``P`` (one line), or None."""
    from .pipeline.manifest import Manifest
    from .pipeline.scheduler import Context
    from .stages import STAGES

    ctx = Context(P, P.run_dir(), Manifest.open(P.run_dir()), STAGES)
    try:
        for up in STAGES[stage].upstream:
            ctx.require_current(up)
    except (XalignError, FileNotFoundError) as e:
        return str(e)
    return None


def upstream_of(stage: str) -> list[str]:
    """Every stage ``stage`` depends on, in pipeline order (not ``stage`` itself)."""
    from .stages import STAGES

    need: set[str] = set()
    todo = list(STAGES[stage].upstream)
    while todo:
        s = todo.pop()
        if s not in need:
            need.add(s)
            todo += STAGES[s].upstream
    return [s for s in STAGES if s in need]


def ensure_upstream(P: RunParams, stage: str, missing_upstream: str = "slice") -> RunParams:
    """``P`` if the stages before ``stage`` are current for it; else (``"slice"``) the slice
    with those stages run, announced in one line; else (``"error"``) raise.

    Raises:
        StaleUpstream (or the artefact error): ``missing_upstream`` is ``"error"``.
        ParamsError: ``missing_upstream`` is neither.
    """
    from . import runs
    from .stages import STAGES

    if missing_upstream not in ("slice", "error"):
        raise ParamsError(f"missing_upstream: {missing_upstream!r} must be 'slice' or 'error'")
    why = stale_upstream(P, stage)
    if why is None:
        return P
    if missing_upstream == "error":
        from .pipeline.scheduler import StaleUpstream

        raise StaleUpstream(why)
    S = slice_params(P)
    before = upstream_of(stage)
    print(f"{STAGES[stage].notebook}: {P.run_name} is not ready for this stage ({why}); this notebook runs on "
          f"the built-in slice {S.run_name} ({SLICE_PARAMS}) instead, after its stages {', '.join(before)} "
          f"(reused where current). For {P.run_name} itself run the notebooks before this one, or bash run_all.sh.")
    for s in before:
        getattr(runs, f"run_{s}")(S)
    return S


def _show_figures_as_png() -> None:
    """Let ``display(fig)`` of a matplotlib Figure made without pyplot (as xalign.plots does)
    render as a PNG in the notebook; outside IPython, nothing."""
    try:
        from IPython import get_ipython
        from IPython.core.pylabtools import print_figure
        from matplotlib.figure import Figure
    except ImportError:
        return
    ip = get_ipython()
    if ip is not None:
        ip.display_formatter.formatters["image/png"].for_type(Figure, lambda fig: print_figure(fig, "png"))


def setup(params: Any, overrides: Mapping[str, Any] | str | None = None, missing_upstream: str = "slice", *,
          stage: str | None = None, namespace: Mapping[str, Any] | None = None) -> RunParams:
    """A notebook's first cell: check parameters, load params, set up logging and display,
    make sure the stages before ``stage`` are current (see the module docstring).

    Args:
        params: a params file path or the dict papermill injects with ``-f``.
        overrides: dotted-key overrides (dict, or YAML/JSON string).
        missing_upstream: ``"slice"`` or ``"error"``.
        stage: the notebook's stage (``"probing"``); None skips the upstream check.
        namespace: the notebook's ``globals()``, to reject undeclared papermill parameters.

    Returns:
        The validated params the notebook works on (``P``, or the slice).

    Raises:
        ParamsError: an undeclared parameter, bad overrides, invalid params (one line).
    """
    import pandas as pd

    if namespace is not None:
        check_injected(namespace)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # On CPU, bitsandbytes warns at import that the optional `kernels` package (which would
    # download from the Hub) is missing; 4-bit runs without it (README). Known harmless.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    pd.set_option("display.width", 160, "display.max_columns", 30)
    _show_figures_as_png()
    over = parse_overrides(overrides)
    from .colab import gpu_overrides, in_colab

    if in_colab():  # one GPU: device, bf16, batch sizes; the notebook's overrides win
        over = {**gpu_overrides(), **over}
    P = load_params(params, over)
    if stage is not None:
        P = ensure_upstream(P, stage, missing_upstream)
    print(P.run_name, "->", P.run_dir())
    return P
