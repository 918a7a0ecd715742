"""The evaluation report: tables, a privacy-vs-utility scatter, per-attribute bars and example grids, written as
Markdown and HTML with PNG figures beside them."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from anon_core.atomic import write_files_atomic
from evaluation.baselines import BASELINES
from evaluation.figures import grid_png
from evaluation.glossary import markdown_table, with_direction
from evaluation.privacy import TOP_K
from evaluation.report_folder import ALIGNED_REPORT_TITLE
from evaluation.report_page import ExampleGrid, PageContent, recognizer_rows, render_page
from evaluation.suite import AnonymizedSet

RUN_MARKER = {"marker": "o", "color": "tab:blue", "label": "FALCO"}
BASELINE_MARKER = {"marker": "X", "color": "tab:gray", "label": "baselines"}
# The PNG text chunk (Software) of the figures: `falco runs compare --plot` replaces an existing file only when it is
# one of its own plots, not a report's figure
FIGURE_SOFTWARE = "FALCO-Ops"
PLOT_SOFTWARE = "FALCO-Ops runs compare --plot"
HEADLINE = ("reid/{r}/top1_rate", "reid/{r}/verification_rate", "detection/dlib_hog/rate", "detection/mtcnn/rate")


def _plot_png(draw, size: tuple[float, float] = (5.5, 3.6), software: str = FIGURE_SOFTWARE) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size, dpi=100)
    draw(ax)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": software})
    plt.close(fig)
    return buf.getvalue()


def privacy_utility_png(points: pd.DataFrame, privacy: str, utility: str, baselines: Sequence[str] = (),
                        software: str = FIGURE_SOFTWARE) -> bytes:
    """points: index = label (method or run), columns privacy and utility metrics. Rows named in `baselines`
    are drawn as grey crosses, every other row (FALCO, or each run) as a blue dot; each point is labelled.
    `software`: the PNG's Software text (PLOT_SOFTWARE for `falco runs compare --plot`)."""
    is_baseline = points.index.isin(list(baselines))

    def draw(ax):
        for rows, style in ((points[~is_baseline], RUN_MARKER), (points[is_baseline], BASELINE_MARKER)):
            if len(rows):
                ax.scatter(rows[privacy], rows[utility], **style)
        at: dict[tuple[float, float], list[str]] = {}  # points that coincide share one annotation
        for label, row in points.iterrows():
            at.setdefault((row[privacy], row[utility]), []).append(str(label))
        labels = [ax.annotate("\n".join(names), xy, fontsize=8, xytext=(3, 3), textcoords="offset points",
                              va="bottom", arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5})
                  for xy, names in at.items()]
        ax.margins(x=0.1, y=0.15)  # room for the labels of points at the edges
        ax.set_xlabel(f"{privacy} (lower = more private)")
        ax.set_ylabel(utility)
        ax.set_title("privacy vs. utility")
        ax.legend(fontsize=7, loc="best")
        ax.figure.tight_layout()  # the axes' final place, which the labels are spread in
        spread_labels(ax, labels)

    return _plot_png(draw, software=software)


def spread_labels(ax, labels: Sequence, gap: float = 1.0) -> None:
    """Move the point labels (annotations at an offset in points) of near points apart: each in turn, from the top
    point down, takes the free place nearest its own (a line at a time below or above it, or half a label's width at
    a time to its right) where it overlaps no label placed before it and stays inside the axes, else the place where
    it overlaps them least; a line joins a moved label to its point. Labels drawn at their points overlapped for the
    variants of a sweep whose metrics are close."""
    from matplotlib.text import Text

    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    per_point = 72 / ax.figure.dpi
    placed = []

    def overlap(box) -> float:
        return sum(max(0.0, min(box.x1, o.x1) - max(box.x0, o.x0)) * max(0.0, min(box.y1, o.y1) - max(box.y0, o.y0))
                   for o in placed)

    for label in sorted(labels, key=lambda a: -ax.transData.transform(a.xy)[1]):
        x, y = label.xyann
        box = Text.get_window_extent(label, renderer)  # the text's own box (an Annotation's holds its line too)
        step = label.get_fontsize() * 1.2 + gap  # a line at a time: each label as near its point as is free
        rows = int(frame.height * per_point / step) + 2
        shifts = sorted(((dx * box.width * per_point / 2, dy * step) for dx in range(4) for dy in range(-rows, rows)),
                        key=lambda d: (abs(d[0]) + abs(d[1]), d[0], -d[1]))
        best = None
        for dx, dy in shifts:
            moved = box.translated(dx / per_point, dy / per_point)
            if not (frame.y0 <= moved.y0 and moved.y1 <= frame.y1 and moved.x1 <= max(frame.x1, box.x1)):
                continue
            cost = overlap(moved)
            if best is None or cost < best[0]:
                best = (cost, dx, dy, moved)
            if cost == 0:
                break
        if best is None:  # no place inside the axes: where it was
            best = (0.0, 0.0, 0.0, box)
        _, dx, dy, moved = best
        label.xyann = (x + dx, y + dy)
        label.arrow_patch.set_visible((dx, dy) != (0, 0))
        placed.append(moved)


def headline_metrics(columns: Sequence[str]) -> list[str]:
    """The metrics a comparison shows first, among `columns`: the first recognizer's re-identification and
    verification rates, the face detection rates, the attribute agreements and the feature distances."""
    privacy, _ = privacy_utility_axes(columns)
    recognizer = privacy.split("/")[1] if privacy else None
    headline = [c.format(r=recognizer) for c in HEADLINE if c.format(r=recognizer) in columns]
    return headline + [c for c in columns if c.startswith(("attributes/", "quality/")) and not c.endswith("_std")]


def privacy_utility_axes(columns: Sequence[str], skip: Collection[str] = ()) -> tuple[str | None, str | None]:
    """The scatter's axes among metric names: the first recognizer's top-1 re-identification rate, and the first
    attribute agreement of a trained predictor (the seeded ones, `*_seeded`, mean nothing: see `seeded_banners`;
    taken only when no other exists), else the first quality distance; None where no such metric exists. `skip`:
    predictors whose metrics say nothing here (`uninformative_predictors`)."""
    recognizer = next((c.split("/")[1] for c in columns if c.startswith("reid/")), None)
    privacy = f"reid/{recognizer}/top1_rate" if recognizer else None
    columns = [c for c in columns if not (c.startswith("attributes/") and c.split("/")[1] in skip)]
    agreements = [c for c in columns if c.startswith("attributes/") and c.endswith("agreement")]
    attributes = [c for c in columns if c.startswith("attributes/")]
    utility = next((c for group in (agreements, attributes) for c in group if "_seeded/" not in c), None)
    utility = utility or next(iter(attributes), None)
    utility = utility or next((c for c in columns if c.startswith("quality/") and not c.endswith("_std")), None)
    return privacy, utility


def uninformative_predictors(metrics: pd.DataFrame) -> list[str]:
    """The predictors whose agreement cannot tell the methods apart: the attribute classifier where it gave every
    real test image one label per attribute (`attribute_classifier.VARIED` 0 in every row of `metrics`, one row per
    method): trained on a handful of images, it learned no attribute, and agrees with itself on any image."""
    from evaluation.attribute_classifier import NAME, VARIED

    column = f"attributes/{NAME}/{VARIED}"
    if column not in metrics.columns or not metrics[column].notna().any():
        return []
    return [NAME] if (metrics[column].dropna() == 0).all() else []


def uninformative_banners(metrics: pd.DataFrame) -> list[str]:
    """The warning of `uninformative_predictors`, naming the axis the scatter takes instead."""
    from evaluation.attribute_classifier import NAME

    if NAME not in uninformative_predictors(metrics):
        return []
    test = metrics.get(f"attributes/{NAME}/test_images", pd.Series(dtype=float)).max()
    shown = f"all {int(test)} real test images" if pd.notna(test) else "every real test image"
    _, utility = privacy_utility_axes(metrics.columns, skip=[NAME])
    instead = f"; the scatter's utility axis is {utility} instead" if utility else ""
    return [f"the attribute classifier gave {shown} one label per attribute (trained on too few images, it learned "
            "none), so its agreement and accuracies cannot tell the methods apart (it agrees with itself on any "
            f"image, a black mask's too){instead}."]


ROW_INCHES = 0.24  # per attribute row of the agreement chart: 9 pt labels stay readable for CelebA's 40


def attribute_agreement_png(table: pd.DataFrame, predictor: str) -> bytes:
    """Per-attribute agreement of one predictor: one row per attribute (sorted by the mean), one marker per method
    (the `run` column: variants as dots, baselines as crosses); the figure grows with the attributes."""
    rows = table[table["predictor"] == predictor]
    runs = list(dict.fromkeys(rows["run"])) if "run" in rows else [None]
    order = rows.groupby("attribute", sort=False)["agreement"].mean().sort_values().index
    y = np.arange(len(order))

    def draw(ax):
        for i, run in enumerate(runs):
            part = (rows if run is None else rows[rows["run"] == run]).set_index("attribute").reindex(order)
            baseline = run in BASELINES
            ax.scatter(part["agreement"], y, s=22, marker="x" if baseline else "o", zorder=3,
                       color=f"C{i % 10}", label=None if run is None else str(run))
        ax.set_yticks(y, order)
        ax.set_ylim(-0.7, len(order) - 0.3)
        ax.grid(axis="y", color="#e5e5e5", zorder=0)
        ax.set_xlim(min(0.5, float(rows["agreement"].min()) - 0.02), 1.01)
        ax.set_xlabel("agreement with the real image's label (higher = more utility)")
        ax.set_title(f"attribute agreement ({predictor})")
        ax.tick_params(axis="y", labelsize=9)
        if len(runs) > 1:
            ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.04), ncol=min(len(runs), 6),
                      frameon=False)

    return _plot_png(draw, size=(7.6, 1.6 + ROW_INCHES * len(order)))


def example_columns(sets: Sequence, shown: int = 8) -> tuple[np.ndarray, list[np.ndarray]]:
    """For the example grid: the first set's first `shown` real sources, and each set's image of those sources
    (white where a set lacks one). `sets`: evaluation.suite.AnonymizedSet. Returns (sources, one column per set)."""
    sources = np.asarray(sets[0].source_index)[:shown]
    columns = []
    for s in sets:
        position = {int(j): k for k, j in enumerate(s.source_index)}
        blank = np.full(s.images.shape[1:], 255, np.uint8)
        columns.append(np.stack([s.images[position[j]] if j in position else blank for j in sources]))
    return sources, columns


def _scatter_figure(points: pd.DataFrame, privacy: str, utility: str, baselines: Sequence[str]) -> tuple[bytes, bytes]:
    """The scatter PNG and the CSV of what it plots (label, kind, x, y), for points with both metrics."""
    points = points[[privacy, utility]].dropna()
    kind = np.where(points.index.isin(list(baselines)), "baseline", "run")
    plotted = pd.DataFrame({"label": points.index, "kind": kind, privacy: points[privacy], utility: points[utility]})
    return privacy_utility_png(points, privacy, utility, baselines), plotted.to_csv(index=False).encode()


# The figures a report writes (write_report): an earlier report's that the new one has not are removed
_REPORT_FIGURE = re.compile(r"(examples|privacy_vs_utility(_runs)?|attributes_.+)\.(png|csv)")


def write_report(
    out_dir: Path,
    summary: pd.DataFrame,
    per_image: pd.DataFrame,
    attributes: pd.DataFrame | None,
    examples: list[np.ndarray],
    example_titles: list[str],
    context: dict[str, str],
    runs: pd.DataFrame | None = None,
    settings: pd.DataFrame | None = None,
    banners: Sequence[str] = (),
    example_caption: str = "",
    more: Mapping[str, tuple[str, bytes]] | None = None,
) -> dict[str, Path]:
    """Write report.md, report.html, metrics.csv, per_image.parquet, figures/*.png and `more` (name: (path relative
    to `out_dir`, bytes)), all at once (a report stopped on the way is the old one or the new one); return their
    paths by name.

    summary: `summary_table` (one row per method: FALCO, or one row per run, then the baselines, which are the rows
    named as in evaluation.baselines.BASELINES); per_image / attributes: the FALCO rows' tables (with a `run`
    column when several runs are reported). runs: other evaluation runs to compare with (index: label, columns:
    metrics, e.g. earlier runs from MLflow): drawn with the summary's baselines in `privacy_vs_utility_runs.png`.
    Each scatter's points are also written as `<figure>.csv`. settings: per row of the summary, the settings in
    which the rows differ; banners: warnings shown at the top (seeded networks), to which an uninformative
    predictor's is added (`uninformative_banners`)."""
    out_dir = Path(out_dir)
    baselines = [m for m in summary.index if m in BASELINES]
    privacy, utility = privacy_utility_axes(summary.columns, skip=uninformative_predictors(summary))
    banners = [*banners, *uninformative_banners(summary)]

    figures: dict[str, bytes] = {"examples.png": grid_png(examples)}
    tables: dict[str, bytes] = {}
    if privacy and utility:
        figures["privacy_vs_utility.png"], tables["privacy_vs_utility.csv"] = _scatter_figure(
            summary, privacy, utility, baselines)
        if runs is not None and {privacy, utility} <= set(runs.columns):
            points = pd.concat([runs, summary.loc[baselines]])
            figures["privacy_vs_utility_runs.png"], tables["privacy_vs_utility_runs.csv"] = _scatter_figure(
                points, privacy, utility, baselines)
    if attributes is not None:
        for predictor in attributes["predictor"].unique():
            figures[f"attributes_{predictor}.png"] = attribute_agreement_png(attributes, predictor)
    buf = io.StringIO()
    summary.to_csv(buf)
    pbuf = io.BytesIO()
    per_image.to_parquet(pbuf, index=False)

    headline = headline_metrics(list(summary.columns))
    md = [ALIGNED_REPORT_TITLE, ""]
    md += [f"> **Note:** {text}" for text in banners] + ([""] if banners else [])
    md += [f"- **{k}**: {v}" for k, v in context.items()] + [""]
    if settings is not None and len(settings.columns):
        md += ["## Settings that differ", "", markdown_table(settings), ""]
    md += ["## Summary (FALCO and baselines)", "", markdown_table(_with_direction(summary[headline].T)), ""]
    md += ["## Recognizers and thresholds", ""]
    md += [f"- **{r['name']}**: {r['rule']} ({r['source']})" for r in recognizer_rows(list(summary.columns))] + [""]
    if runs is not None:
        shown = [c for c in headline if c in runs.columns]
        md += ["## Runs compared (this and earlier evaluations)", "",
               markdown_table(_with_direction(runs[shown].T)), ""]
    md += ["## All metrics", "", markdown_table(_with_direction(summary.T)), ""]
    if attributes is not None:
        if "run" in attributes.columns:
            by_run = attributes.pivot_table(index=["predictor", "attribute"], columns="run", values="agreement",
                                            sort=False)
            md += ["## Attribute agreement per run", "", markdown_table(by_run), ""]
        else:
            md += ["## Attribute agreement (FALCO)", "", markdown_table(attributes, index=False), ""]
    md += ["## Figures", ""] + [f"![{n}](figures/{n})" for n in figures] + [""]
    md += [f"Example grid columns: {' | '.join(example_titles)}." + (f" {example_caption}" if example_caption else ""),
           ""]
    md += ["Per-image results (each recognizer's distance or cosine to the source, rank, pass/fail): "
           "`per_image.parquet`.", ""]
    page = PageContent(
        title="FALCO-Ops evaluation report", subtitle=", ".join(f"{k}: {v}" for k, v in list(context.items())[:2]),
        summary=summary, headline=headline, grid=ExampleGrid(example_titles, examples, example_caption),
        figures=figures, context=context, settings=settings, banners=list(banners), runs=runs)
    paths = {"markdown": out_dir / "report.md", "html": out_dir / "report.html", "metrics": out_dir / "metrics.csv",
             "per_image": out_dir / "per_image.parquet",
             **{n: out_dir / "figures" / n for n in {**figures, **tables}}}
    contents = {"markdown": "\n".join(md).encode(), "html": render_page(page).encode(),
                "metrics": buf.getvalue().encode(), "per_image": pbuf.getvalue(), **figures, **tables}
    for name, (relative, data) in (more or {}).items():
        paths[name], contents[name] = out_dir / relative, data
    # All made before any is written, then written as one: a report stopped (Ctrl-C) is the old one or the new one
    write_files_atomic({paths[name]: data for name, data in contents.items()})
    for stale in sorted((out_dir / "figures").glob("*")):  # an earlier report's figures this one has not
        if stale.is_file() and stale not in paths.values() and _REPORT_FIGURE.fullmatch(stale.name):
            stale.unlink()
    return paths


def _with_direction(metrics_by_row: pd.DataFrame) -> pd.DataFrame:
    """Metrics as rows (numbers), with their direction (`glossary.with_direction`)."""
    return with_direction(metrics_by_row.apply(pd.to_numeric, errors="coerce"))


def seeded_banners(generator_seeded: bool, metrics: Sequence[str], resolution: int | None = None) -> list[str]:
    """The warnings a reader must see first: seeded (random) networks make images or numbers meaningless."""
    banners = []
    if generator_seeded:
        size = f"{resolution} px " if resolution else ""
        banners.append(f"the generator, the inverter and FaRL of this profile are seeded (random) networks: its "
                       f"{size}images are blobs that exercise the pipeline, not faces; the privacy numbers still "
                       "come from dlib's trained recognizer.")
    seeded = sorted({m.split("/")[1] for m in metrics if m.startswith("attributes/") and "_seeded" in m})
    if seeded:
        banners.append(f"the attribute predictors {', '.join(seeded)} are seeded (their trained weights are not "
                       "installed): their attribute agreement numbers mean nothing.")
    return banners


def gallery_banners(rivals: np.ndarray, ks: Sequence[int] = TOP_K) -> list[str]:
    """The warning a reader needs where real faces are ranked against too few images of other people for the rank
    figures to mean anything (`privacy.rivals`: per real image, the gallery's images of others): with fewer than k
    of them, an image made from that face is in the top k whatever it looks like, and with none it ranks first (an
    image fails on rank 1 alone, so a one-person gallery fails every image)."""
    k = max(ks)
    rivals = np.asarray(rivals)
    certain = rivals < k
    if not certain.any():
        return []
    if (rivals == 0).all():
        how = ("the real gallery holds one person: every image ranks first whatever it looks like (its top-1 and "
               f"top-{k} rates are 1, and the pass rate 0)")
    else:
        share = "all" if certain.all() else f"{int(certain.sum())} of the {len(rivals)}"
        how = (f"{share} real faces are ranked against fewer than {k} images of other people ({int(rivals.min())} at "
               f"fewest): their top-{k} hit is certain whatever their anonymized image looks like")
    return [f"{how}, so the re-identification ranks (and the pass rate, which counts rank 1 as a failure) overstate "
            "the risk here; judge privacy by the verification rate and the distance to the source, or evaluate "
            "against a larger gallery of real faces."]


def pseudonym_banners(person) -> list[str]:
    """Why the report has no pseudonym figures although the images have identity labels (`person`: the label of
    each anonymized image's source; None without labels, when none are expected)."""
    from evaluation.privacy import pseudonym_shortfall

    reason = None if person is None else pseudonym_shortfall(person)
    return [f"no pseudonym figures (does one person keep one pseudonym?): {reason}."] if reason else []


def labels_note(path: Path | str) -> str:
    """The labels CSV as a report names it: its path and the start of its sha256 (its error where unreadable)."""
    from anon_core.hashing import sha256_file

    try:
        return f"{path} (sha256 {sha256_file(path)[:12]})"
    except OSError as error:
        return f"{path} ({error.strerror or error})"


RELEASE_CHECK = "reid/dlib/verification_rate"  # the share of images dlib still matches to their own source
# the pipeline's blocking check judges each shard on its own, so a variant's verdict is its worst shard's (at least its
# whole set's): the same share, over the images of that shard (logged by the pipeline's evaluation; no shards elsewhere)
WORST_SHARD_CHECK = "reid/dlib/worst_shard_verification_rate"


def fails_release(share: float, bound: float) -> bool:
    """The release rule of the blocking privacy check: more than `bound` of the images still matched fails."""
    return share > bound


def privacy_banners(variants: dict[str, VariantResults], bound: float) -> list[str]:
    """One warning per variant whose images dlib still matches to their own source more often than the release bound
    (`checks.privacy_max_match_share`) allows, over all of them or in one shard: the blocking check failed its shards,
    and a reader choosing a variant from the report must see it."""
    return [banner for name, result in variants.items() if RELEASE_CHECK in result.summary.columns
            for banner in release_banner(name, *release_shares(result.summary.iloc[0]), bound)]


def divergence_banners(variants: Mapping[str, VariantResults], lrs: Mapping[str, float]) -> list[str]:
    """One warning per variant whose mean loss ended above where it started (`loss_curves.divergence_note`; `lrs`:
    each variant's learning rate): its privacy figures come from images the method did not make."""
    from anon_core.loss_curves import divergence_note

    notes = {name: divergence_note(result.losses, lrs[name]) for name, result in variants.items()}
    return [f"variant {name}: {note}." for name, note in notes.items() if note]


def same_codes_banners(variants: Mapping[str, VariantResults]) -> list[str]:
    """One warning per group of variants whose codes are bit-identical for every image: they show the same images
    and figures as if their settings had mattered. A margin above every identity similarity the optimization
    reached does that (the loss |cos - m| pulls the same way for any such m), as few steps do."""
    groups: dict[str, list[str]] = {}
    for name, result in variants.items():
        if result.codes is not None:
            groups.setdefault(result.codes, []).append(name)
    banners = []
    for names in (g for g in groups.values() if len(g) > 1):
        shown = ", ".join(names[:-1]) + f" and {names[-1]}"
        banners.append(f"variants {shown} made bit-identical codes for every image, so their images and figures are "
                       "the same: what tells them apart never changed the optimization (a margin above every identity "
                       "similarity it reached, say: the loss |cos - m| then pulls the same way for any such m); more "
                       "steps or other values tell them apart.")
    return banners


def release_shares(metrics: Mapping[str, float]) -> tuple[float, float | None]:
    """(the share of a run's images dlib still matched, that of its worst shard or None) from its metrics; the first
    is NaN when the run did not measure it."""
    share = float(metrics.get(RELEASE_CHECK, float("nan")))
    worst = metrics.get(WORST_SHARD_CHECK)
    return share, float(worst) if worst is not None and np.isfinite(worst) else None


def judged_share(share: float, worst_shard: float | None) -> float:
    """The share the release rule judges: the worst shard's, as the blocking check does, else the whole set's."""
    return share if worst_shard is None else max(share, worst_shard)


def release_banner(name: str, share: float, worst_shard: float | None, bound: float) -> list[str]:
    """The report's warning, in a list, when `share` of the images of `name` still matched (or `worst_shard` of
    those of one shard) fails the release bound; an empty list otherwise."""
    if not fails_release(judged_share(share, worst_shard), bound):
        return []
    return [f"{name} failed the privacy check: do not release its images. dlib still matches "
            f"{matched_share(share, worst_shard, 'distance < 0.6')}, more than checks.privacy_max_match_share = "
            f"{bound:g} allows."]


def matched_share(share: float, worst_shard: float | None, rule: str = "") -> str:
    """What dlib still matched, as the report's warning and `falco runs compare` say it: the judged share
    (`judged_share`), the worst shard's with the whole set's beside it when that is the larger."""
    notes = [rule] if rule else []
    if worst_shard is not None and worst_shard > share:
        notes.append(f"{share:.1%} of all of them")
        text = f"{worst_shard:.1%} of the images of one of its shards to their own source"
    else:
        text = f"{share:.1%} of its images to their own source"
    return text + (f" ({'; '.join(notes)})" if notes else "")


def metrics_json(summary: pd.DataFrame) -> bytes:
    """`metrics.json` for `dvc metrics show`: {method: {metric: value}} with the finite numbers of each row of a
    summary table (variants and baselines), so DVC compares every variant's numbers across commits."""
    import json
    import math

    out = {}
    for method, row in summary.iterrows():
        values = pd.to_numeric(row, errors="coerce")
        out[str(method)] = {str(k): float(v) for k, v in values.items() if math.isfinite(float(v))}
    return (json.dumps(out, indent=2, sort_keys=True) + "\n").encode()


@dataclass
class VariantResults:
    """What the report shows of one variant: its evaluation and its images."""

    summary: pd.DataFrame  # one row: `method` and the metrics (evaluation.suite.summary_table)
    per_image: pd.DataFrame  # privacy per image
    attributes: pd.DataFrame  # per predictor and attribute; may be empty
    images: AnonymizedSet  # its anonymized images and their real sources
    losses: pd.DataFrame  # anon_core.loss_curves.mean_losses of its optimization
    codes: str | None = None  # a digest of its codes in row order (`same_codes_banners`); None: not known


def write_variant_report(
    out_dir: Path,
    variants: dict[str, VariantResults],
    baselines: pd.DataFrame,
    fakes_of: Callable[[np.ndarray], np.ndarray],
    context: dict[str, str],
    real_of: Callable[[np.ndarray], np.ndarray] | None = None,
    baseline_attributes: pd.DataFrame | None = None,
    settings: pd.DataFrame | None = None,
    banners: Sequence[str] = (),
) -> dict[str, Path]:
    """The pipeline's report of several variants and the baselines: `write_report` with one summary row per variant
    (then the baselines), plus `metrics.json` (`metrics_json`) and `losses/<variant>.csv` for DVC. The example grid
    is the paper's comparison: for the first variant's first sources, `fakes_of(sources)` their fake neighbours,
    each variant's image, and, when `real_of(sources)` is given (real faces shown), the real faces and each
    baseline applied to them. `baseline_attributes`: the baselines' per-attribute agreement (a `run` column per
    baseline), drawn beside the variants'."""
    from evaluation.baselines import apply_baseline

    from anon_core.loss_curves import losses_csv

    out_dir = Path(out_dir)
    labelled = {f"falco {name}" if name in BASELINES else name: v for name, v in variants.items()}  # rows stay apart
    summary = pd.concat([v.summary.assign(method=name) for name, v in labelled.items()] + [baselines],
                        ignore_index=True).set_index("method")
    per_image = pd.concat([v.per_image.assign(run=name) for name, v in labelled.items()], ignore_index=True)
    per_image.insert(0, "run", per_image.pop("run"))
    attributes = [v.attributes.assign(run=name) for name, v in labelled.items() if len(v.attributes)]
    if attributes and baseline_attributes is not None and len(baseline_attributes):
        attributes.append(baseline_attributes)
    sources, columns = example_columns([v.images for v in labelled.values()])
    fakes = fakes_of(sources)
    examples, titles = [fakes, *columns], ["Fake NN", *(f"FALCO {name}" for name in labelled)]
    caption = ("Real faces, and the baselines made from them, are shown only with evaluation.show_real_faces: "
               "true.")
    if real_of is not None:
        real = real_of(sources)
        names = list(baselines["method"]) if "method" in baselines.columns else []
        examples = [real, *examples, *(apply_baseline(n, real, fakes=fakes) for n in names)]
        titles, caption = ["Real", *titles, *names], ""
    paths = write_report(out_dir, summary, per_image, pd.concat(attributes, ignore_index=True) if attributes else None,
                         examples, titles, context, settings=settings, banners=banners, example_caption=caption,
                         more={"metrics_json": ("metrics.json", metrics_json(summary)),
                               **{f"losses/{name}.csv": (f"losses/{name}.csv", losses_csv(v.losses))
                                  for name, v in variants.items()}})
    for stale in (out_dir / "losses").glob("*.csv"):  # variants of earlier sweeps: `dvc plots show` reads them all
        if stale.stem not in variants:
            stale.unlink()
    return paths
