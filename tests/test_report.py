"""The run report (``xalign.report``, written by stage 7): self-contained HTML with the
figures as PNG data URIs, Table 1 with its intervals, headline numbers, skipped datasets,
stage timings and provenance; deterministic, tracked by the scheduler, and loaded by a real
browser (headless Chromium, when installed)."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from xalign import report, runs
from xalign.params import load_params

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ["headline", "table1", "figures", "datasets", "timings", "provenance"]
HEADINGS = ["Headline numbers", "Table 1: overlap vs transfer", "Figures", "Datasets kept and skipped",
            "Stage timings", "Provenance"]
PNG = b"\x89PNG\r\n\x1a\n"


class _Page(HTMLParser):
    """Tags, attributes and heading texts of a page (standard library only)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.imgs: list[str] = []
        self.figure_imgs: dict[str, str] = {}  # figure id (fig-<name>) -> its img's src
        self._figure: str | None = None
        self.ids: list[str] = []
        self.refs: list[tuple[str, str, str]] = []  # (tag, attribute, value) of src / href
        self.tags: list[str] = []
        self.headings: list[str] = []
        self._h: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "figure":
            self._figure = a.get("id")
        if tag == "img":
            self.imgs.append(a.get("src", ""))
            if self._figure:
                self.figure_imgs[self._figure] = a.get("src", "")
        if "id" in a:
            self.ids.append(a["id"])
        for k in ("src", "href"):
            if k in a:
                self.refs.append((tag, k, a[k]))
        if tag in ("h1", "h2"):
            self._h = []

    def handle_data(self, data):
        if self._h is not None:
            self._h.append(data)

    def handle_endtag(self, tag):
        if tag in ("h1", "h2") and self._h is not None:
            self.headings.append("".join(self._h).strip())
            self._h = None


def _parse(text: str) -> _Page:
    p = _Page()
    p.feed(text)
    return p


def _png(w: int = 40, h: int = 30) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w / 10, h / 10), dpi=10)
    FigureCanvasAgg(fig)
    fig.add_subplot().plot([0, 1], [1, 0])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _assert_self_contained(page: _Page, n_figures: int) -> None:
    assert len(page.imgs) == n_figures
    for src in page.imgs:
        assert src.startswith("data:image/png;base64,"), src[:40]
        assert base64.b64decode(src.split(",", 1)[1], validate=True).startswith(PNG)
    assert not {"script", "link", "iframe", "object", "embed"} & set(page.tags)
    assert all(v.startswith(("#", "data:")) for _, _, v in page.refs), [r for r in page.refs if r[2][:1] != "#"]
    assert [i for i in page.ids if i in SECTIONS] == SECTIONS
    assert page.headings[1:] == HEADINGS


# ----------------------------------------------------------------------------- fast: no run
def test_build_escapes_orders_and_embeds_png_only() -> None:
    ctx = report.context({"seed": 3, "git_commit": "a" * 40, "git_dirty": False, "packages": {"torch": "2.13.0"},
                          "time": "2030-01-01T00:00:00+00:00"},
                         {"figures": {"seconds": 9.0}, "probing": {"computed": 2, "reused": 1, "seconds": 1.5,
                                                                    "skipped": ["a <b> note"]}},
                         {"run_name": "x<script>", "data": {"languages": ["en", "fr"]},
                          "extraction": {"layers": [1]}, "correlation": {"recipe": "per_layer"}})
    assert "time" not in ctx["provenance"] and "figures" not in ctx["stages"]  # volatile: left out
    avg = pd.DataFrame({"checkpoint": ["c1"], "step": [5], "layer": [1], "attribute": ["Number"], "k": [2],
                        "d": [8], "overlap_rate": [0.5], "n_pairs": [1], "chance_rate": [0.25],
                        "n_significant": [1], "n_seeds": [2], "overlap_lo": [0.25], "overlap_hi": [0.75],
                        "self_overlap_rate": [0.9]})
    summary = pd.DataFrame({"language": ["en", "fr"], "attribute": ["Number", "Number"],
                            "status": ["kept", "skipped"], "reason": ["", "too few & rare"], "split_seed": [0, 0]})
    kw = dict(ctx=ctx, average=avg, transfer=None, tables1={}, summary=summary,
              checkpoints=[{"name": "c1", "step": 5, "source": "lab", "weights_sha256": "f" * 64}], layers=[1])
    png = _png()
    text = report.build(figures={"fig2_overlap_vs_layer": png, "fig1_overlap_vs_step": png}, **kw)
    assert text == report.build(figures={"fig1_overlap_vs_step": png, "fig2_overlap_vs_layer": png}, **kw)
    page = _parse(text)
    _assert_self_contained(page, 2)
    assert page.headings[0] == "xalign report: x<script>" and "<script>" not in text
    assert text.index('id="fig-fig1_overlap_vs_step"') < text.index('id="fig-fig2_overlap_vs_layer"')
    assert "0.500" in text and "[0.250, 0.750]" in text and "1 of 1" in text  # the headline overlap row
    assert "too few &amp; rare" in text and "a &lt;b&gt; note" in text and "No Table 1" in text
    assert "2030" not in text and "a" * 40 in text
    with pytest.raises(report.ArtefactError, match="not a PNG"):
        report.build(figures={"fig1_overlap_vs_step": b"GIF89a"}, **kw)


def test_numbers_have_no_negative_zero() -> None:
    assert report._num(-0.0004, 2) == "0.00" and report._num(-0.006, 2) == "-0.01"
    assert report._ci(-0.001, 0.44, 2) == "[0.00, 0.44]" and report._num(float("nan")) == "—"


# ----------------------------------------------------------------------------- the minimal run
@pytest.mark.e2e
def test_the_minimal_runs_report(minimal_run: Path) -> None:
    """run_all.sh on params/minimal.yaml writes the report twice (run folder, figure folder),
    recorded as stage 7's; it embeds every PNG figure, shows Table 1 with its intervals and
    the provenance, and rebuilding it from the run folder gives the same bytes."""
    run, fig_dir = minimal_run / "runs" / "minimal", minimal_run / "figures" / "minimal"
    a, b = run / "report.html", fig_dir / "report.html"
    assert a.read_bytes() == b.read_bytes()
    m = json.loads((run / "manifest.json").read_text())
    for key in ("report.html", "../../figures/minimal/report.html"):
        assert m["artefacts"][key]["stage"] == "figures", key
    text = a.read_text(encoding="utf-8")
    pngs = [n for n in json.loads((run / "figures.json").read_text()) if n.endswith(".png")]
    page = _parse(text)
    _assert_self_contained(page, len(pngs))
    assert sorted(page.figure_imgs) == sorted(f"fig-{Path(n).stem}" for n in pngs)
    for name in pngs:  # each figure's own bytes
        src = page.figure_imgs[f"fig-{Path(name).stem}"]
        assert base64.b64decode(src.split(",", 1)[1]) == (fig_dir / name).read_bytes(), name

    t1 = pd.read_csv(run / "correlation" / "table1.csv")
    assert text.count("<td>XNLI</td>") + text.count("<td>POS</td>") >= len(t1)
    row = t1[t1.r_lo.notna()].iloc[0]
    assert report._ci(row.r_lo, row.r_hi, 2) in text and "p (permutation)" in text
    assert "language bootstrap" in text and "distinguishable from no correlation" in text
    prov = m["run"]
    assert prov["git_commit"] is None or prov["git_commit"] in text
    assert f"<td>{prov['packages']['torch']}</td>" in text and "params.json" in text
    assert "05_finetuning" in text and "Skipped datasets" in text  # en/Gender has too few values
    assert re.search(r'<meta name="xalign-summary" content="minimal: 3 checkpoints, 3 languages, \d+ figures;', text)
    assert report.build_from_run(run, fig_dir) == text  # deterministic: same inputs, same bytes
    assert report.describe(a).startswith(f"{a} (")


@pytest.mark.e2e
def test_the_report_follows_its_inputs(minimal_run: Path, tmp_path: Path) -> None:
    """Stage 7 reuses its report while nothing it shows changes, redraws it when something
    does (a stage timing, the Table 1 recipe), and needs stage 6 current first."""
    from xalign.pipeline import StaleUpstream

    shutil.copytree(minimal_run / "runs", tmp_path / "runs")
    shutil.copytree(minimal_run / "figures", tmp_path / "figures")

    def params(**over):
        return load_params(REPO / "params" / "minimal.yaml", overrides={
            "runs_dir": str(tmp_path / "runs"), "figures_dir": str(tmp_path / "figures"), **over})

    P = params()
    run = P.run_dir()
    f = run / "report.html"
    runs.run_figures(P)  # the copy's params (its folders) differ from the original's
    before = f.read_bytes()
    assert runs.run_figures(P).computed == 0 and f.read_bytes() == before
    with (run / "timings.csv").open("a") as t:
        t.write("2030-01-01T00:00:00+00:00,03_probing,1234.5\n")
    assert runs.run_figures(P).computed == 1 and "<td>1234.5</td>" in f.read_text()

    Q = params(**{"correlation.recipe": "paper"})
    with pytest.raises(StaleUpstream, match="run correlation first"):
        runs.run_figures(Q)
    runs.run_correlation(Q)
    assert runs.run_figures(Q).computed == 1
    text = f.read_text()
    assert "recipe <code>paper</code>" in text and "The other recipe (per_layer)" in text
    assert (P.figure_dir() / "report.html").read_bytes() == f.read_bytes()

    R = params(**{"transfer.tasks": []})
    runs.run_correlation(R)
    runs.run_figures(R)
    text = f.read_text()
    assert "No Table 1" in text and "no transfer results" in text


# ----------------------------------------------------------------------------- a real browser
def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


_COUNT = ("<script>addEventListener('load', () => { const i = [...document.images];"
          " document.body.dataset.images = i.length;"
          " document.body.dataset.loaded = i.filter(x => x.complete && x.naturalWidth > 0).length; });</script>")


@pytest.mark.e2e
def test_the_report_loads_in_headless_chromium(minimal_run: Path, tmp_path: Path) -> None:
    """Chromium opens the report from disk with the network off: every figure decodes
    (naturalWidth > 0), the headings are there, and the screenshot is not blank."""
    exe = _chromium()
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium; .ci/run installs it): "
                    "the browser check of the report needs it")
    run = minimal_run / "runs" / "minimal"
    n_figs = len([n for n in json.loads((run / "figures.json").read_text()) if n.endswith(".png")])
    probe = tmp_path / "probe.html"  # the report plus a counter of decoded images
    probe.write_text((run / "report.html").read_text(encoding="utf-8").replace("</body>", _COUNT + "</body>"),
                     encoding="utf-8")
    dom = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'profile'}", "--proxy-server=127.0.0.1:9",
                          "--run-all-compositor-stages-before-draw", "--virtual-time-budget=5000", "--dump-dom",
                          probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    body = re.search(r"<body[^>]*>", dom)
    assert body, dom[-2000:]
    assert f'data-images="{n_figs}"' in body[0] and f'data-loaded="{n_figs}"' in body[0], body[0]
    for h in HEADINGS:
        assert f">{h}</h2>" in dom.replace("&amp;", "&"), h

    shot = tmp_path / "report.png"
    out = subprocess.run(["bash", str(REPO / "scripts" / "screenshot.sh"), str(run / "report.html"), str(shot)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    from PIL import Image

    im = Image.open(shot).convert("L")
    assert im.size == (1280, 2400)
    lo, hi = im.getextrema()
    assert hi - lo > 100 and len(im.getcolors(1 << 16) or []) > 16  # text and figures, not a blank page
