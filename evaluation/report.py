"""The evaluation report: tables, a privacy-vs-utility scatter, per-attribute bars and example grids, written as
Markdown and HTML with PNG figures beside them."""

from __future__ import annotations

import html
import io
from pathlib import Path

import numpy as np
import pandas as pd

from anon_core.data.image_io import write_bytes_atomic
from evaluation.figures import grid_png

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


def privacy_utility_png(points: pd.DataFrame, privacy: str, utility: str) -> bytes:
    """points: index = label (method or run), columns privacy and utility metrics."""

    def draw(ax):
        ax.scatter(points[privacy], points[utility])
        for label, row in points.iterrows():
            ax.annotate(str(label), (row[privacy], row[utility]), fontsize=8, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(f"{privacy} (lower = more private)")
        ax.set_ylabel(utility)
        ax.set_title("privacy vs. utility")

    return _plot_png(draw)


def attribute_bars_png(table: pd.DataFrame, predictor: str) -> bytes:
    rows = table[table["predictor"] == predictor].sort_values("agreement")

    def draw(ax):
        ax.barh(rows["attribute"], rows["agreement"])
        ax.set_xlim(0, 1)
        ax.set_xlabel("agreement with the real image's label")
        ax.set_title(f"attribute preservation ({predictor})")
        ax.tick_params(axis="y", labelsize=6)

    return _plot_png(draw)


def write_report(
    out_dir: Path,
    summary: pd.DataFrame,
    per_image: pd.DataFrame,
    attributes: pd.DataFrame | None,
    examples: list[np.ndarray],
    example_titles: list[str],
    context: dict[str, str],
) -> dict[str, Path]:
    """Write report.md, report.html, metrics.csv, per_image.parquet and figures/*.png; return their paths.

    summary: `summary_table` (one row per method, FALCO first); per_image / attributes: FALCO's tables."""
    out_dir = Path(out_dir)
    recognizer = next((c.split("/")[1] for c in summary.columns if c.startswith("reid/")), None)
    privacy = f"reid/{recognizer}/top1_rate" if recognizer else None
    utility = next((c for c in summary.columns if c.startswith("attributes/")), None)
    utility = utility or next((c for c in summary.columns if c.startswith("quality/") and not c.endswith("_std")), None)

    figures: dict[str, bytes] = {"examples.png": grid_png(examples)}
    if privacy and utility:
        figures["privacy_vs_utility.png"] = privacy_utility_png(summary, privacy, utility)
    if attributes is not None:
        for predictor in attributes["predictor"].unique():
            figures[f"attributes_{predictor}.png"] = attribute_bars_png(attributes, predictor)
    for name, png in figures.items():
        write_bytes_atomic(out_dir / "figures" / name, png)

    buf = io.StringIO()
    summary.to_csv(buf)
    write_bytes_atomic(out_dir / "metrics.csv", buf.getvalue().encode())
    pbuf = io.BytesIO()
    per_image.to_parquet(pbuf, index=False)
    write_bytes_atomic(out_dir / "per_image.parquet", pbuf.getvalue())

    headline = [c.format(r=recognizer) for c in HEADLINE if c.format(r=recognizer) in summary.columns]
    headline += [c for c in summary.columns if c.startswith(("attributes/", "quality/")) and not c.endswith("_std")]
    md = ["# FALCO-Ops evaluation report", ""]
    md += [f"- **{k}**: {v}" for k, v in context.items()] + [""]
    md += ["## Summary (FALCO and baselines)", "", summary[headline].round(4).to_markdown(), ""]
    md += ["Lower re-identification and detection rates mean more privacy; higher attribute agreement and lower "
           "feature distances mean more utility. Thresholds: see the per-recognizer rows below.", ""]
    md += ["## All metrics", "", summary.T.round(4).to_markdown(), ""]
    if attributes is not None:
        md += ["## Attribute agreement (FALCO)", "", attributes.round(4).to_markdown(index=False), ""]
    md += ["## Figures", ""] + [f"![{n}](figures/{n})" for n in figures] + [""]
    md += [f"Example grid columns: {' | '.join(example_titles)}.", ""]
    md += ["Per-image results (similarity to source, rank, pass/fail per recognizer): `per_image.parquet`.", ""]
    text = "\n".join(md)
    write_bytes_atomic(out_dir / "report.md", text.encode())
    write_bytes_atomic(out_dir / "report.html", _html(text).encode())
    return {"markdown": out_dir / "report.md", "html": out_dir / "report.html", "metrics": out_dir / "metrics.csv",
            "per_image": out_dir / "per_image.parquet", **{n: out_dir / "figures" / n for n in figures}}


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
