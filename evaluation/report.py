"""The evaluation report: tables, a privacy-vs-utility scatter, per-attribute bars and example grids, written as
Markdown and HTML with PNG figures beside them."""

from __future__ import annotations

import html
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from anon_core.atomic import write_bytes_atomic
from evaluation.baselines import BASELINES
from evaluation.figures import grid_png
from evaluation.suite import AnonymizedSet

RUN_MARKER = {"marker": "o", "color": "tab:blue", "label": "FALCO"}
BASELINE_MARKER = {"marker": "X", "color": "tab:gray", "label": "baselines"}
HEADLINE = ("reid/{r}/top1_rate", "reid/{r}/verification_rate", "detection/dlib_hog/rate", "detection/mtcnn/rate")


def _plot_png(draw) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=100)
    draw(ax)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def privacy_utility_png(points: pd.DataFrame, privacy: str, utility: str, baselines: Sequence[str] = ()) -> bytes:
    """points: index = label (method or run), columns privacy and utility metrics. Rows named in `baselines`
    are drawn as grey crosses, every other row (FALCO, or each run) as a blue dot; each point is labelled."""
    is_baseline = points.index.isin(list(baselines))

    def draw(ax):
        for rows, style in ((points[~is_baseline], RUN_MARKER), (points[is_baseline], BASELINE_MARKER)):
            if len(rows):
                ax.scatter(rows[privacy], rows[utility], **style)
        at: dict[tuple[float, float], list[str]] = {}  # points that coincide share one annotation
        for label, row in points.iterrows():
            at.setdefault((row[privacy], row[utility]), []).append(str(label))
        for xy, labels in at.items():
            ax.annotate("\n".join(labels), xy, fontsize=8, xytext=(3, 3), textcoords="offset points", va="bottom")
        ax.margins(x=0.1, y=0.15)  # room for the labels of points at the edges
        ax.set_xlabel(f"{privacy} (lower = more private)")
        ax.set_ylabel(utility)
        ax.set_title("privacy vs. utility")
        ax.legend(fontsize=7, loc="best")

    return _plot_png(draw)


def headline_metrics(columns: Sequence[str]) -> list[str]:
    """The metrics a comparison shows first, among `columns`: the first recognizer's re-identification and
    verification rates, the face detection rates, the attribute agreements and the feature distances."""
    privacy, _ = privacy_utility_axes(columns)
    recognizer = privacy.split("/")[1] if privacy else None
    headline = [c.format(r=recognizer) for c in HEADLINE if c.format(r=recognizer) in columns]
    return headline + [c for c in columns if c.startswith(("attributes/", "quality/")) and not c.endswith("_std")]


def privacy_utility_axes(columns: Sequence[str]) -> tuple[str | None, str | None]:
    """The scatter's axes among metric names: the first recognizer's top-1 re-identification rate, and the first
    attribute agreement (else the first quality distance); None where no such metric exists."""
    recognizer = next((c.split("/")[1] for c in columns if c.startswith("reid/")), None)
    privacy = f"reid/{recognizer}/top1_rate" if recognizer else None
    utility = next((c for c in columns if c.startswith("attributes/")), None)
    utility = utility or next((c for c in columns if c.startswith("quality/") and not c.endswith("_std")), None)
    return privacy, utility


def attribute_bars_png(table: pd.DataFrame, predictor: str) -> bytes:
    """Per-attribute agreement of one predictor; with a `run` column, one bar per run in each attribute's row."""
    rows = table[table["predictor"] == predictor]
    runs = list(dict.fromkeys(rows["run"])) if "run" in rows else [None]
    order = rows.groupby("attribute", sort=False)["agreement"].mean().sort_values().index
    y = np.arange(len(order))
    height = 0.8 / len(runs)

    def draw(ax):
        for i, run in enumerate(runs):
            part = (rows if run is None else rows[rows["run"] == run]).set_index("attribute").reindex(order)
            ax.barh(y + (i - (len(runs) - 1) / 2) * height, part["agreement"], height=height,
                    label=None if run is None else str(run))
        ax.set_yticks(y, order)
        ax.set_xlim(0, 1)
        ax.set_xlabel("agreement with the real image's label")
        ax.set_title(f"attribute preservation ({predictor})")
        ax.tick_params(axis="y", labelsize=6)
        if len(runs) > 1:
            ax.legend(fontsize=7, loc="lower right")

    return _plot_png(draw)


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


def write_report(
    out_dir: Path,
    summary: pd.DataFrame,
    per_image: pd.DataFrame,
    attributes: pd.DataFrame | None,
    examples: list[np.ndarray],
    example_titles: list[str],
    context: dict[str, str],
    runs: pd.DataFrame | None = None,
) -> dict[str, Path]:
    """Write report.md, report.html, metrics.csv, per_image.parquet and figures/*.png; return their paths.

    summary: `summary_table` (one row per method: FALCO, or one row per run, then the baselines, which are the rows
    named as in evaluation.baselines.BASELINES); per_image / attributes: the FALCO rows' tables (with a `run`
    column when several runs are reported). runs: other evaluation runs to compare with (index: label, columns:
    metrics, e.g. earlier runs from MLflow): drawn with the summary's baselines in `privacy_vs_utility_runs.png`.
    Each scatter's points are also written as `<figure>.csv`."""
    out_dir = Path(out_dir)
    baselines = [m for m in summary.index if m in BASELINES]
    privacy, utility = privacy_utility_axes(summary.columns)

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
            figures[f"attributes_{predictor}.png"] = attribute_bars_png(attributes, predictor)
    for name, data in {**figures, **tables}.items():
        write_bytes_atomic(out_dir / "figures" / name, data)

    buf = io.StringIO()
    summary.to_csv(buf)
    write_bytes_atomic(out_dir / "metrics.csv", buf.getvalue().encode())
    pbuf = io.BytesIO()
    per_image.to_parquet(pbuf, index=False)
    write_bytes_atomic(out_dir / "per_image.parquet", pbuf.getvalue())

    headline = headline_metrics(list(summary.columns))
    md = ["# FALCO-Ops evaluation report", ""]
    md += [f"- **{k}**: {v}" for k, v in context.items()] + [""]
    md += ["## Summary (FALCO and baselines)", "", summary[headline].round(4).to_markdown(), ""]
    md += ["Lower re-identification and detection rates mean more privacy; higher attribute agreement and lower "
           "feature distances mean more utility. Thresholds: see the per-recognizer rows below.", ""]
    if runs is not None:
        shown = [c for c in headline if c in runs.columns]
        md += ["## Runs compared (this and earlier evaluations)", "", runs[shown].round(4).to_markdown(), ""]
    md += ["## All metrics", "", summary.T.round(4).to_markdown(), ""]
    if attributes is not None:
        if "run" in attributes.columns:
            by_run = attributes.pivot_table(index=["predictor", "attribute"], columns="run", values="agreement",
                                            sort=False)
            md += ["## Attribute agreement per run", "", by_run.round(4).to_markdown(), ""]
        else:
            md += ["## Attribute agreement (FALCO)", "", attributes.round(4).to_markdown(index=False), ""]
    md += ["## Figures", ""] + [f"![{n}](figures/{n})" for n in figures] + [""]
    md += [f"Example grid columns: {' | '.join(example_titles)}.", ""]
    md += ["Per-image results (similarity to source, rank, pass/fail per recognizer): `per_image.parquet`.", ""]
    text = "\n".join(md)
    write_bytes_atomic(out_dir / "report.md", text.encode())
    write_bytes_atomic(out_dir / "report.html", _html(text).encode())
    return {"markdown": out_dir / "report.md", "html": out_dir / "report.html", "metrics": out_dir / "metrics.csv",
            "per_image": out_dir / "per_image.parquet",
            **{n: out_dir / "figures" / n for n in {**figures, **tables}}}


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


def write_variant_report(
    out_dir: Path,
    variants: dict[str, VariantResults],
    baselines: pd.DataFrame,
    fakes_of: Callable[[np.ndarray], np.ndarray],
    context: dict[str, str],
    real_of: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, Path]:
    """The pipeline's report of several variants and the baselines: `write_report` with one summary row per variant
    (then the baselines), plus `metrics.json` (`metrics_json`) and `losses/<variant>.csv` for DVC. The example grid
    shows the first variant's first sources: `fakes_of(sources)` their fake neighbours and, when given,
    `real_of(sources)` the real faces."""
    from anon_core.loss_curves import write_losses_csv

    out_dir = Path(out_dir)
    labelled = {f"falco {name}" if name in BASELINES else name: v for name, v in variants.items()}  # rows stay apart
    summary = pd.concat([v.summary.assign(method=name) for name, v in labelled.items()] + [baselines],
                        ignore_index=True).set_index("method")
    per_image = pd.concat([v.per_image.assign(run=name) for name, v in labelled.items()], ignore_index=True)
    per_image.insert(0, "run", per_image.pop("run"))
    attributes = [v.attributes.assign(run=name) for name, v in labelled.items() if len(v.attributes)]
    sources, columns = example_columns([v.images for v in labelled.values()])
    examples, titles = [fakes_of(sources), *columns], ["fake neighbour", *labelled]
    if real_of is not None:
        examples, titles = [real_of(sources), *examples], ["real", *titles]
    paths = write_report(out_dir, summary, per_image, pd.concat(attributes, ignore_index=True) if attributes else None,
                         examples, titles, context)
    write_bytes_atomic(out_dir / "metrics.json", metrics_json(summary))
    for name, v in variants.items():
        paths[f"losses/{name}.csv"] = write_losses_csv(out_dir / "losses" / f"{name}.csv", v.losses)
    return {**paths, "metrics_json": out_dir / "metrics.json"}


def _html(markdown: str) -> str:
    """A self-contained HTML page: markdown tables in <pre>, figures as <img>; no extra dependency."""
    body = []
    for block in markdown.split("\n\n"):
        if block.startswith("# "):
            body.append(f"<h1>{html.escape(block[2:])}</h1>")
        elif block.startswith("## "):
            body.append(f"<h2>{html.escape(block[3:])}</h2>")
        elif block.startswith("!["):
            for line in block.splitlines():
                src = line[line.index("(") + 1 : -1]
                body.append(f'<img src="{html.escape(src)}" style="max-width:48%">')
        else:
            body.append(f"<pre>{html.escape(block)}</pre>")
    return "<!doctype html><meta charset='utf-8'><title>FALCO-Ops report</title>\n" + "\n".join(body)
