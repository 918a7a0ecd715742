"""Dagster metadata values people look at: inline PNGs (grids, plots) and small tables."""

from __future__ import annotations

import base64

import dagster as dg
import pandas as pd


def png_markdown(png: bytes, alt: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})")


def table(df: pd.DataFrame, max_rows: int = 50) -> dg.MetadataValue:
    return dg.MetadataValue.md(df.head(max_rows).to_markdown(index=False) if len(df) else "_(empty)_")
