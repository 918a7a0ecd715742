"""The folder a user's `falco evaluate` writes its report into: new, empty, or a report falco wrote before.

A report is several files written as one (report.md, report.html, metrics.csv, per_image.parquet, figures/; photo
mode: report.md, metrics.csv, faces.csv). Written into a folder of the user's own files of those names, or into the
report folder of a `falco pipeline`'s storage (which the pipeline would then serve as its own, up to date), it
replaces them without a word; written among other files (a dataset folder), it mixes with them. So an earlier report
is known by its report.md's first line, and a folder holding anything else but hidden files stops the command before
it writes.
"""

from __future__ import annotations

from pathlib import Path

from anon_core.errors import FalcoError
from anon_core.folders import check_outside_pipeline_storage, is_run_folder

ALIGNED_REPORT_TITLE = "# FALCO-Ops evaluation report"
PHOTO_REPORT_TITLE = "# Photo mode: privacy per face"
REPORT_NAMES = ("report.md", "report.html", "metrics.csv", "per_image.parquet", "faces.csv", "figures")


def check_report_folder(out_dir: Path, title: str = ALIGNED_REPORT_TITLE) -> None:
    """FalcoError when `out_dir` is inside a pipeline's storage, or holds files (other than hidden ones) while its
    report.md is not a report falco wrote, or one of the other kind (`title`: the first line of the report to be
    written; an aligned report's files would otherwise stay beside a photo-mode one, and the other way round)."""
    out_dir = Path(out_dir)
    check_outside_pipeline_storage(out_dir, harm="the pipeline would take this report for its own", what="a report "
                                   "folder")
    if not out_dir.is_dir():
        return
    if is_run_folder(out_dir):
        raise FalcoError(f"{out_dir} is the output folder of a `falco anonymize` run (its manifest.csv): the report "
                         "would sit among its outputs, and the next run into it would take the report for its own "
                         "files; give --out a folder of its own (nothing was written)")
    held = sorted(p.name for p in out_dir.iterdir() if not p.name.startswith("."))  # hidden: falco's lock and
    if not held:  # kept outputs, a cache, a .DS_Store; none of them a report's name or a dataset's image
        return
    first_line = ""
    if (out_dir / "report.md").is_file():  # not a FIFO, whose read would block
        try:
            with open(out_dir / "report.md", encoding="utf-8") as handle:
                first_line = handle.readline().rstrip("\n")
        except (OSError, UnicodeDecodeError):
            pass
    if first_line in (ALIGNED_REPORT_TITLE, PHOTO_REPORT_TITLE) and first_line != title:
        kinds = {ALIGNED_REPORT_TITLE: "aligned", PHOTO_REPORT_TITLE: "photo-mode"}
        raise FalcoError(f"{out_dir} holds the report of {kinds[first_line]} runs, and these are {kinds[title]} runs: "
                         "their files would be mixed; give --out a folder of its own (nothing was written)")
    if first_line == title:
        return
    taken = [name for name in REPORT_NAMES if (out_dir / name).exists()]
    if taken:
        raise FalcoError(f"{out_dir} holds {', '.join(taken)}, and not a report falco wrote (its report.md would "
                         f"begin {ALIGNED_REPORT_TITLE!r}): the report would replace them; give --out a new or empty "
                         "folder, or an earlier report's (nothing was written)")
    shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
    raise FalcoError(f"{out_dir} holds {shown}, and no report falco wrote: the report's files (and the private "
                     "outputs of the real faces) would be mixed among them, and a dataset folder would read them as "
                     "its images; give --out a new or empty folder, or an earlier report's (nothing was written)")
