"""The evaluation report on plain tables: run labels say what differs, the privacy-vs-utility scatter draws one
marker per run and per baseline, the scatter over earlier runs, and per-run attribute bars."""

import base64
import io
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from evaluation.report import write_report
from evaluation.runs import differing_keys, run_labels

PRIVACY, UTILITY = "reid/dlib/top1_rate", "attributes/anycost_seeded/mean_agreement"


def test_runs_are_labelled_by_the_parameters_that_differ():
    base = {"optimization.margin": "0.0", "optimization.steps": "50", "inversion.steps": "40", "seed": "0"}
    margins = [base | {"optimization.margin": m} for m in ("0.0", "0.5", "1.0")]
    assert run_labels(margins, ["a", "b", "c"]) == ["m=0.0", "m=0.5", "m=1.0"]
    # Two keys ending in "steps" keep their full names; a key only one run has (a newer code version's setting)
    # labels nothing while a shared key differs, and shows as "unset" in the other run when it alone differs.
    both = [base, base | {"optimization.steps": "3", "inversion.steps": "2", "extra": "x"}]
    assert differing_keys(both) == ["extra", "inversion.steps", "optimization.steps"]
    assert run_labels(both, ["a", "b"]) == ["inversion.steps=40, optimization.steps=50",
                                            "inversion.steps=2, optimization.steps=3"]
    assert run_labels([base, base | {"extra": "x"}], ["a", "b"]) == ["extra=unset", "extra=x"]
    # A whole new section of settings (more than two keys) is named once, not key by key.
    speed = {"speed.amp": "auto", "speed.compile": "False", "speed.channels_last": "True", "speed.auto_max": "64"}
    assert run_labels([base, base | speed, base | speed], ["a", "b", "c"]) == ["speed.*=unset", "speed.*=set [b]",
                                                                              "speed.*=set [c]"]
    # ... but a value that differs among the runs that have the section is still shown.
    speeds = [base, base | speed, base | speed | {"speed.amp": "off"}]
    assert run_labels(speeds, ["a", "b", "c"]) == ["speed.*=unset, amp=unset", "speed.*=set, amp=auto",
                                                   "speed.*=set, amp=off"]
    # Equal parameters: the fallbacks (folder names) tell the runs apart; repeated labels get them appended.
    assert run_labels([base, base], ["run_a", "run_b"]) == ["run_a", "run_b"]
    repeated = [base | {"seed": "1"}, base | {"seed": "1"}, base]
    assert run_labels(repeated, ["x", "y", "z"]) == ["seed=1 [x]", "seed=1 [y]", "seed=0"]
    assert run_labels([base, base], ["same", "same"]) == ["same #1", "same #2"]
    with pytest.raises(ValueError, match="fallback"):
        run_labels([base], [])


def _summary() -> pd.DataFrame:
    """Three runs and two baselines far apart on both axes."""
    rows = {"m=0.0": (0.1, 0.9), "m=0.5": (0.5, 0.5), "m=1.0": (0.9, 0.1), "blur": (0.1, 0.1), "mask": (0.9, 0.9)}
    return pd.DataFrame({PRIVACY: [x for x, _ in rows.values()], UTILITY: [y for _, y in rows.values()],
                         "detection/mtcnn/rate": 1.0}, index=pd.Index(list(rows), name="method"))


def _blobs(png: bytes, rgb: tuple[int, int, int], tolerance: int = 4, min_pixels: int = 30) -> int:
    """Connected regions of about `rgb` in a PNG (markers; antialiased edges fall outside the tolerance)."""
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    mask = (np.abs(image - np.array(rgb)).max(axis=-1) <= tolerance)
    labels, count = ndimage.label(mask)
    return int((np.bincount(labels.ravel())[1:] >= min_pixels).sum())


def _report(tmp_path, runs=None):
    attributes = pd.DataFrame({
        "predictor": "anycost_seeded", "attribute": ["Smiling", "Young"] * 2, "agreement": [1.0, 0.5, 0.75, 0.25],
        "run": ["m=0.0", "m=0.0", "m=0.5", "m=0.5"]})
    per_image = pd.DataFrame({"run": ["m=0.0", "m=0.5"], "name": ["a.png", "a.png"], "dlib/rank": [1, 3],
                              "dlib/passed": [False, True]})
    faces = np.zeros((2, 16, 16, 3), np.uint8)
    return write_report(tmp_path, _summary(), per_image, attributes, [faces, faces], ["m=0.0", "m=0.5"],
                        {"profile": "tiny"}, runs=runs)


def test_scatter_has_a_blue_dot_per_run_and_a_grey_cross_per_baseline(tmp_path):
    paths = _report(tmp_path)
    png = paths["privacy_vs_utility.png"].read_bytes()
    # matplotlib's tab:blue and tab:gray; the legend adds one of each.
    assert _blobs(png, (31, 119, 180)) == 3 + 1
    assert _blobs(png, (127, 127, 127)) == 2 + 1
    points = pd.read_csv(paths["privacy_vs_utility.csv"])
    assert points["label"].tolist() == ["m=0.0", "m=0.5", "m=1.0", "blur", "mask"]
    assert points["kind"].tolist() == ["run"] * 3 + ["baseline"] * 2
    assert points[PRIVACY].tolist() == [0.1, 0.5, 0.9, 0.1, 0.9]

    md = paths["markdown"].read_text()
    assert "## Attribute agreement per run" in md and "| ('anycost_seeded', 'Young')" in md
    assert "privacy_vs_utility_runs" not in md  # no earlier runs given
    assert pd.read_parquet(paths["per_image"])["dlib/passed"].tolist() == [False, True]
    page = paths["html"].read_text()  # self-contained: the figures are embedded
    assert f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}"' in page
    with Image.open(paths["attributes_anycost_seeded.png"]) as chart:  # 2 attributes
        assert chart.size == (760, round(100 * (1.6 + 0.24 * 2)))


def test_scatter_over_earlier_runs_shows_them_with_the_baselines(tmp_path):
    runs = pd.DataFrame({PRIVACY: [0.2, 0.4, np.nan], UTILITY: [0.7, 0.6, 0.5], "other": 1.0},
                        index=["m=0.0", "m=0.5 (this run)", "m=1.0"])  # m=1.0 lacks the privacy metric
    paths = _report(tmp_path, runs=runs)
    points = pd.read_csv(paths["privacy_vs_utility_runs.csv"])
    assert points["label"].tolist() == ["m=0.0", "m=0.5 (this run)", "blur", "mask"]
    assert points["kind"].tolist() == ["run", "run", "baseline", "baseline"]
    assert _blobs(paths["privacy_vs_utility_runs.png"].read_bytes(), (31, 119, 180)) == 2 + 1
    md = paths["markdown"].read_text()
    assert "## Runs compared" in md and "m=0.5 (this run)" in md


def test_the_html_page_states_directions_thresholds_and_seeded_networks(tmp_path):
    from evaluation.report import seeded_banners

    summary = _summary().assign(**{"reid/dlib/distance_to_source_median": 0.7,
                                   "attributes/anycost_seeded/mean_agreement": 0.9})
    faces = np.zeros((2, 16, 16, 3), np.uint8)
    banners = seeded_banners(True, list(summary.columns), 64)
    paths = write_report(tmp_path, summary, pd.DataFrame({"run": ["m=0.0"]}), None, [faces, faces, faces],
                         ["Fake NN", "FALCO m=0.0", "FALCO m=0.5"], {"profile": "tiny"}, banners=banners,
                         settings=pd.DataFrame({"optimization.margin": ["0.0", "0.5"]}, index=["m=0.0", "m=0.5"]))
    page = paths["html"].read_text()
    assert "**" not in page and "|---" not in page and "<pre>" not in page  # no markdown pasted into the page
    assert page.count("<table") >= 5
    assert '<th scope="col">Fake NN</th><th scope="col">FALCO m=0.0</th>' in page  # the grid's column headers
    assert "distance &lt; 0.6 counts as the same person; distance &gt;= 0.6 counts as not matched" in page
    assert "64 px images are blobs" in page and "anycost_seeded are seeded" in page
    assert "lower = more private" in page and "higher = more private" in page  # distance: larger is safer
    md = paths["markdown"].read_text()
    assert any("reid/dlib/distance_to_source_median" in line and "higher = more private" in line
               for line in md.splitlines())
    assert "optimization.margin" in md  # the settings that tell the rows apart


def test_a_report_stopped_while_it_is_written_is_the_old_one_and_a_new_one_drops_old_figures(tmp_path, monkeypatch):
    """Ctrl-C while the report's files are written leaves the previous report whole (not a new metrics.csv beside
    an old report.html); a report over an earlier one keeps none of the earlier one's figures it does not draw."""
    import os

    runs = pd.DataFrame({PRIVACY: [0.2], UTILITY: [0.7]}, index=["m=0.0"])
    before = {p: p.read_bytes() for p in _report(tmp_path, runs=runs).values()}
    assert (tmp_path / "figures" / "privacy_vs_utility_runs.png") in before
    (tmp_path / "figures" / "notes.txt").write_text("the user's own file")

    fsync, calls = os.fsync, []

    def stopped_on_the_fourth_file(fd):
        calls.append(fd)
        if len(calls) == 4:
            raise KeyboardInterrupt
        fsync(fd)

    monkeypatch.setattr(os, "fsync", stopped_on_the_fourth_file)
    summary = _summary()
    summary[PRIVACY] = 0.3  # another report's numbers
    with pytest.raises(KeyboardInterrupt):
        write_report(tmp_path, summary, pd.DataFrame({"run": ["m=0.0"]}), None, [np.zeros((1, 16, 16, 3), np.uint8)],
                     ["m=0.0"], {"profile": "tiny"})
    assert {p: p.read_bytes() for p in before} == before
    assert not list(tmp_path.rglob("*.tmp"))

    monkeypatch.setattr(os, "fsync", fsync)
    paths = write_report(tmp_path, summary, pd.DataFrame({"run": ["m=0.0"]}), None,
                         [np.zeros((1, 16, 16, 3), np.uint8)], ["m=0.0"], {"profile": "tiny"})
    assert pd.read_csv(paths["metrics"])[PRIVACY].tolist() == [0.3] * 5
    figures = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert figures == ["examples.png", "notes.txt", "privacy_vs_utility.csv", "privacy_vs_utility.png"]


def test_the_scatter_plots_utility_by_a_trained_attribute_predictor_over_a_seeded_one():
    """Before, the report's and `runs compare --plot`'s utility axis was the seeded predictor's agreement, which the
    report's own banner says means nothing, while the trained attribute classifier's was logged beside it."""
    from evaluation.report import privacy_utility_axes

    seeded, trained = "attributes/anycost_seeded/mean_agreement", "attributes/attribute_classifier/mean_agreement"
    columns = ["reid/dlib/top1_rate", seeded, "attributes/attribute_classifier/mean_accuracy_anon", trained]
    assert privacy_utility_axes(columns) == ("reid/dlib/top1_rate", trained)
    assert privacy_utility_axes(columns[:2]) == ("reid/dlib/top1_rate", seeded)  # nothing better logged
    assert privacy_utility_axes(["reid/arcface/top5_rate", "quality/fd_dlib"]) == ("reid/arcface/top1_rate",
                                                                                   "quality/fd_dlib")


def test_a_classifier_that_learned_no_attribute_is_not_the_scatters_axis():
    """On a small folder the classifier's test split was 2 images, to which it gave one label per attribute: its
    agreement was 1.0 for every variant and baseline, a black mask's included, and the scatter drew them all on one
    line at 1.0 without a word (hI). A classifier that gives both labels of one attribute stays the axis."""
    from evaluation.attribute_classifier import classifier_metrics
    from evaluation.report import privacy_utility_axes, uninformative_banners, uninformative_predictors

    def scores(real_rates):
        return pd.DataFrame({"accuracy_real": 0.9, "accuracy_anon": 0.9, "agreement": 1.0, "n": 2,
                             "real_positive_rate": real_rates, "anon_positive_rate": real_rates})

    constant = classifier_metrics(scores([0.0, 1.0, 0.0]))
    assert constant["attributes/attribute_classifier/test_images"] == 2
    seeded = "attributes/anycost_seeded/mean_agreement"
    metrics = pd.DataFrame([{"reid/dlib/top1_rate": r, seeded: a, **constant} for r, a in ((0.0, 0.92), (0.1, 0.84))],
                           index=["m0.5", "mask"])
    assert uninformative_predictors(metrics) == ["attribute_classifier"]
    assert privacy_utility_axes(metrics.columns, skip=["attribute_classifier"]) == ("reid/dlib/top1_rate", seeded)
    [banner] = uninformative_banners(metrics)
    assert banner.startswith("the attribute classifier gave all 2 real test images one label per attribute")
    assert banner.endswith(f"the scatter's utility axis is {seeded} instead.")

    learned = metrics.assign(**classifier_metrics(scores([0.0, 0.5, 1.0])))
    assert learned["attributes/attribute_classifier/varied_attributes"].tolist() == [1.0, 1.0]
    assert uninformative_predictors(learned) == [] and uninformative_banners(learned) == []
    assert uninformative_predictors(metrics.drop(columns="attributes/attribute_classifier/varied_attributes")) == []


def test_variants_that_made_the_same_codes_are_named_together():
    """Margins above every identity similarity a short optimization reached pull the codes the same way: m0.3, m0.5
    and m0.9 at 5 steps made byte-identical images, shown as three results with no note (hI)."""
    from types import SimpleNamespace

    from evaluation.report import same_codes_banners
    from orchestration.assets.report import _codes_digest

    ws = np.random.default_rng(0).normal(size=(4, 3, 2)).astype(np.float32)
    by_rows = [{"row": np.array([2, 0]), "ws": ws[[2, 0]]}, {"row": np.array([3, 1]), "ws": ws[[3, 1]]}]
    in_order = [{"row": np.arange(4), "ws": ws}]
    assert _codes_digest(by_rows) == _codes_digest(in_order)  # the codes by real row, however the shards hold them
    moved = ws.copy()
    moved[1, 0, 0] += 1e-6
    variants = {"m0.3": SimpleNamespace(codes=_codes_digest(by_rows)), "m0.5": SimpleNamespace(codes=_codes_digest(
        in_order)), "m0.9": SimpleNamespace(codes=_codes_digest(in_order)),
        "m0": SimpleNamespace(codes=_codes_digest([{"row": np.arange(4), "ws": moved}])),
        "old": SimpleNamespace(codes=None)}
    [banner] = same_codes_banners(variants)
    assert banner.startswith("variants m0.3, m0.5 and m0.9 made bit-identical codes for every image, so their images "
                             "and figures are the same")


def test_a_variant_whose_loss_rose_gets_a_warning_above_the_numbers():
    """A sweep over learning rates: the variant whose optimization diverged (its mean loss ended above step 0's) is
    named at the top of the report, with its own learning rate; the one that converged is not."""
    from types import SimpleNamespace

    from evaluation.report import divergence_banners

    def curve(totals):
        return pd.DataFrame({"step": range(len(totals)), "total": totals})

    variants = {"lr0.01": SimpleNamespace(losses=curve([7.1, 6.0, 4.8])),
                "lr100": SimpleNamespace(losses=curve([7.1, 7.9, 7.7]))}
    banners = divergence_banners(variants, {"lr0.01": 0.01, "lr100": 100.0})
    assert banners == ["variant lr100: the mean loss rose from 7.1 at step 0 to 7.7 at step 2: the optimization "
                       "diverged (optimization.lr = 100 is likely too large; the paper's is 0.01), so its images are "
                       "not what the method makes and no recognizer matching them says they are private."]


def test_a_number_reads_the_same_in_report_md_report_html_and_runs_compare(tmp_path):
    """report.md rounded half to even by decimals (0.91875 -> 0.9188, 123.456789 -> 123.4568) while report.html and
    `falco runs compare` wrote 4 significant digits of the exact value (0.9187, 123.5)."""
    from orchestration.cli_runs import side_by_side

    values = {"fid": 123.456789, "kid": 0.000123456, "mean_agreement": 0.91875, "images": 30000.0}
    summary = _summary().assign(**values)
    faces = np.zeros((2, 16, 16, 3), np.uint8)
    paths = write_report(tmp_path, summary, pd.DataFrame({"run": ["m=0.0"]}), None, [faces, faces],
                         ["m=0.0", "m=0.5"], {"profile": "tiny"})
    md, page = paths["markdown"].read_text(), paths["html"].read_text()
    terminal = side_by_side(pd.DataFrame({"variant": ["m0"], "started": ["2026-12-07 12:00:00"], **{
        k: [v] for k, v in values.items()}}), list(values))
    def in_markdown(text):
        return re.search(rf"\|\s+{re.escape(text)}\s+\|", md) is not None

    for shown in ("123.5", "0.0001235", "0.9187", "30000"):  # a count in full (.4g wrote 3e+04)
        assert in_markdown(shown) and f">{shown}</td>" in page and shown in terminal, shown
    for other in ("123.4568", "0.0001", "0.9188", "3e+04"):
        assert not in_markdown(other) and f">{other}<" not in page, other


def test_the_labels_of_a_sweep_whose_points_are_close_do_not_overlap():
    """Before: each label sat at its point, so ten variants with close metrics (a sweep) drew ten labels on top of
    each other, none readable. A lone point's label stays at its point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.text import Text

    from evaluation.report import spread_labels

    rng = np.random.default_rng(0)
    xy = [(0.5 + rng.normal(0, 0.005), 0.9 + rng.normal(0, 0.002)) for _ in range(10)] + [(0.05, 0.2)]
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=100)
    ax.scatter(*zip(*xy))
    labels = [ax.annotate(f"m0.{i}_steps{10 * i}", p, fontsize=8, xytext=(3, 3), textcoords="offset points",
                          arrowprops={"arrowstyle": "-"}) for i, p in enumerate(xy)]
    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    boxes = [Text.get_window_extent(a, renderer) for a in labels]  # the texts' (not their lines')
    assert sum(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:]) > 10  # as they were drawn
    spread_labels(ax, labels)
    boxes = [Text.get_window_extent(a, renderer) for a in labels]  # the texts' (not their lines')
    assert not [(i, j) for i, a in enumerate(boxes) for j, b in enumerate(boxes[i + 1:], i + 1) if a.overlaps(b)]
    frame = ax.get_window_extent(renderer)
    assert all(frame.y0 <= b.y0 and b.y1 <= frame.y1 for b in boxes)
    assert labels[-1].xyann == (3, 3) and not labels[-1].arrow_patch.get_visible()
    plt.close(fig)

    # hE's sweep: seven variants on one point, two on another, three baselines on a third; with labels moved only up
    # or down, the last found no free place and was left on the ones placed before it
    names = {(0.0, 1.0): 7, (0.08, 1.0): 2, (0.0, 0.9889): 2, (0.08, 0.9889): 3, (0.67, 1.0): 1}
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=100)
    ax.scatter(*zip(*names))
    labels = [ax.annotate("\n".join(f"variant_{i}_{k}" for k in range(n)), p, fontsize=8, xytext=(3, 3),
                          textcoords="offset points", va="bottom", arrowprops={"arrowstyle": "-"})
              for i, (p, n) in enumerate(names.items())]
    ax.margins(x=0.1, y=0.15)
    fig.tight_layout()
    spread_labels(ax, labels)
    renderer = fig.canvas.get_renderer()
    boxes = [Text.get_window_extent(a, renderer) for a in labels]
    assert not [(i, j) for i, a in enumerate(boxes) for j, b in enumerate(boxes[i + 1:], i + 1) if a.overlaps(b)]
    plt.close(fig)
