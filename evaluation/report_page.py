"""report.html: the evaluation report as one self-contained page (figures embedded), rendered from the Jinja2
template `templates/report.html.j2`; readable at 1,280 px. report.md (evaluation.report) stays for diffs."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from evaluation.glossary import GLOSSARY, meaning_of, shown_number, with_direction
from evaluation.recognizers import RECOGNIZERS

TEMPLATE = "report.html.j2"


@dataclass
class ExampleGrid:
    """The comparison grid: one column per title, one row per example source, uint8 [N, H, W, 3] per column."""

    titles: list[str]
    columns: list[np.ndarray]
    caption: str = ""


@dataclass
class PageContent:
    title: str
    subtitle: str
    summary: pd.DataFrame  # index: method (variants/runs, then baselines); columns: metrics
    headline: list[str]  # the summary's columns shown first
    grid: ExampleGrid
    figures: dict[str, bytes]  # name -> PNG (privacy_vs_utility.png, attributes_<predictor>.png, ...)
    context: dict[str, str]  # settings shared by every row
    settings: pd.DataFrame | None = None  # index: method; columns: the settings in which the rows differ
    banners: list[str] = field(default_factory=list)
    runs: pd.DataFrame | None = None  # earlier evaluations to compare with (index: label; columns: metrics)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def recognizer_rows(metrics: Sequence[str]) -> list[dict[str, str]]:
    """The recognizers that produced `metrics`, with their match rule stated in their own units and direction."""
    used = list(dict.fromkeys(m.split("/")[1] for m in metrics if m.startswith("reid/")))
    rows = []
    for name in used:
        spec = RECOGNIZERS.get(name)
        if spec is None:
            continue
        if spec.metric == "euclidean":
            op = "<=" if spec.inclusive else "<"
            rule = (f"distance {op} {spec.threshold:g} counts as the same person; distance "
                    f"{'>' if spec.inclusive else '>='} {spec.threshold:g} counts as not matched")
        else:
            op = ">=" if spec.inclusive else ">"
            rule = (f"cosine {op} {spec.threshold:g} counts as the same person; cosine "
                    f"{'<' if spec.inclusive else '<='} {spec.threshold:g} counts as not matched")
        rows.append({"name": name, "network": spec.network, "rule": rule, "source": spec.threshold_source})
    return rows


def _table(out: pd.DataFrame) -> str:
    """A DataFrame as an HTML <table>: numbers right-aligned to 4 significant digits."""
    head = "".join(f"<th scope='col'>{html.escape(str(c))}</th>" for c in out.columns)
    body = []
    for name, row in out.iterrows():
        cells = []
        for column, value in row.items():
            number = isinstance(value, (float, np.floating, int, np.integer)) and not isinstance(value, bool)
            css = "number" if number else "better" if column == "better" else ""
            text = shown_number(value)
            cells.append(f"<td class='{css}'>{html.escape(text)}</td>")
        body.append(f"<tr><th scope='row'>{html.escape(str(name))}</th>{''.join(cells)}</tr>")
    corner = html.escape(str(out.index.name or ""))
    return (f"<table><thead><tr><th>{corner}</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def render_page(content: PageContent) -> str:
    from jinja2 import Environment, PackageLoader, select_autoescape
    from markupsafe import Markup

    from anon_core.data.image_io import encode_png

    env = Environment(loader=PackageLoader("evaluation", "templates"), autoescape=select_autoescape(["j2", "html"]))

    rows = [[data_uri(encode_png(column[i])) for column in content.grid.columns]
            for i in range(len(content.grid.columns[0]) if content.grid.columns else 0)]
    figures = {name: data_uri(png) for name, png in content.figures.items()}
    attribute_figures = [(name.removesuffix(".png").replace("attributes_", "attribute agreement: "), src)
                         for name, src in figures.items() if name.startswith("attributes_")]
    found = {meaning_of(m) for m in content.summary.columns}
    used = [g for g in GLOSSARY if g in found]
    runs_table = None
    if content.runs is not None:
        shown = [c for c in content.headline if c in content.runs.columns]
        runs_table = Markup(_table(with_direction(content.runs[shown].T)))
    return env.get_template(TEMPLATE).render(
        title=content.title, subtitle=content.subtitle, banners=content.banners,
        summary_table=Markup(_table(with_direction(content.summary[content.headline].T))),
        scatter=figures.get("privacy_vs_utility.png"),
        scatter_caption="Each point is a variant (or run, blue dots) or a baseline (grey crosses); x: the first "
                        "recognizer's top-1 re-identification rate (lower = more private), y: the first attribute "
                        "agreement (higher = more utility).",
        grid={"titles": content.grid.titles, "rows": rows, "caption": content.grid.caption},
        attribute_figures=attribute_figures, glossary=[{"name": g.example, "meaning": g.meaning,
                                                        "better": g.better} for g in used],
        recognizers=recognizer_rows(list(content.summary.columns)), context=list(content.context.items()),
        settings_table=Markup(_table(content.settings)) if content.settings is not None and len(
            content.settings.columns) else None,
        runs_table=runs_table, runs_scatter=figures.get("privacy_vs_utility_runs.png"),
        all_metrics_table=Markup(_table(with_direction(content.summary.T))),
    )
