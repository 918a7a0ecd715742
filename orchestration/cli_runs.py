"""`falco runs compare`: the variants' evaluations of an MLflow experiment side by side with the baselines, with the
parameters that differ, and optionally their privacy-vs-utility scatter.

Reads what `orchestration.tracking` logged: each run of the asset `evaluation_metrics` is one variant's evaluation of
its whole anonymized set (tag `variant`), each `baseline_metrics[<name>]` run one baseline's. By default the latest
evaluation of every variant and of every baseline is shown (what the report of a sweep compares); `--all` lists every
evaluation run, oldest first, to follow a variant over time. Like `mlflow runs compare` in the MLflow UI, but in the
terminal and limited to the parameters that changed, so the cause of a metric's change is on the same line. Each run
is also judged by the privacy bound the latest report on the same input used (`checks.privacy_max_match_share`, logged
by its run), in each shard as the pipeline's blocking check judges it.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from anon_core.atomic import write_bytes_atomic
from orchestration.cli_types import given_path, given_text

if TYPE_CHECKING:  # imported where used: `falco --help` and the other sub-commands do not load pandas
    import pandas as pd

EVALUATION_ASSET = "evaluation_metrics"
BASELINE_ASSET = "baseline_metrics"
REPORT_ASSET = "anonymization_report"
LATENTS_ASSET = "anonymized_latents"  # its runs log each shard's mean loss per step (`loss/total`)
BOUND_PARAM = "checks.privacy_max_match_share"  # logged by the report's run


def _label(run) -> str:
    tags = run.data.tags
    return tags.get("method") or tags.get("variant") or run.info.run_name or run.info.run_id[:8]


def differing_inputs(runs: list) -> list[str]:
    """The input tags (tracking.INPUT_TAGS: folder, data version, DVC md5, labels CSV's sha256) whose values differ
    between `runs`: runs that read different images or identities, whose metrics do not compare."""
    from orchestration.tracking import INPUT_TAGS

    return [t for t in INPUT_TAGS if len({r.data.tags.get(t, "<unset>") for r in runs}) > 1]


def compare_table(runs: list, metrics: list[str] | None = None,
                  bound: float | Sequence[float | None] | None = None) -> pd.DataFrame:
    """One row per run (in the given order): its label (the variant, or the baseline's name), the run's name, start
    time, Dagster run id, the input tags whose values differ between the runs (`input:<tag>`), the params whose
    values differ between the variants' runs (`param:<name>`), with a privacy `bound` (one, or one per run) its
    verdict (`check:privacy_check`, `privacy_verdicts`), then the metrics (`metrics`, or every metric the runs
    logged)."""
    import pandas as pd

    if not runs:
        return pd.DataFrame()
    inputs = differing_inputs(runs)
    params = pd.DataFrame([r.data.params for r in runs])
    variant_rows = [not r.data.tags.get("method") for r in runs]
    differing = [c for c in sorted(params.columns) if c != "baseline"
                 and params.loc[variant_rows, c].fillna("<unset>").nunique() > 1]
    names = sorted({k for r in runs for k in r.data.metrics}) if not metrics else list(metrics)
    bounds = _per_run(bound, runs)
    verdicts = privacy_verdicts(runs, bounds) if any(b is not None for b in bounds) else [None] * len(runs)
    rows = []
    for run, (_, p), verdict in zip(runs, params.iterrows(), verdicts):
        rows.append({
            "variant": _label(run),
            "run": run.info.run_name or run.info.run_id[:8],
            "mlflow_run_id": run.info.run_id,
            "started": pd.Timestamp(run.info.start_time, unit="ms").strftime("%Y-%m-%d %H:%M:%S"),
            "dagster_run_id": run.data.tags.get("dagster_run_id", "")[:8],
            **{f"input:{t}": run.data.tags.get(t, "<unset>") for t in inputs},
            **{f"param:{c}": p.get(c) for c in differing},
            **({} if verdict is None else {"check:privacy_check": verdict}),
            **{m: run.data.metrics.get(m, float("nan")) for m in names},
        })
    return pd.DataFrame(rows)


def find_evaluation_runs(tracking_uri: str | None, experiment: str | None, latest: bool = True) -> list:
    """The experiment's finished `evaluation_metrics` runs, then its finished `baseline_metrics` runs that measured
    something, oldest first (`latest`: only the newest of each variant and of each baseline). Raises FalcoError when
    there is no such experiment."""
    return evaluation_runs(*open_experiment(tracking_uri, experiment), latest)


def open_experiment(tracking_uri: str | None, experiment: str | None) -> tuple:
    """(MLflow client, experiment id) of an existing experiment; FalcoError, naming the fix, when there is none."""
    from anon_core.errors import FalcoError
    from orchestration.mlflow_store import sqlite_path
    from orchestration.tracking import MlflowResource

    resource = MlflowResource(tracking_uri=tracking_uri, experiment=experiment)
    experiment = resource.experiment_name()
    database = sqlite_path(resource.uri())
    # reading runs must not create a store, nor take an empty file for a half-made one to move aside and make anew
    if database is not None and (not database.exists() or database.is_file() and database.stat().st_size == 0):
        raise FalcoError(f"no MLflow store at {database}; run `falco pipeline` first, or pass --tracking-uri URI")
    found = resource.check_store()
    client = resource.client()
    if found is None:
        raise FalcoError(f"no MLflow experiment {experiment!r} at {client.tracking_uri}; run `falco pipeline` first, "
                         "or pass --experiment NAME / --tracking-uri URI")
    return client, found.experiment_id


def _finished(client, experiment_id: str, asset: str, newest_first: bool = False, max_results: int = 5000) -> list:
    """The finished runs of `asset`, in the order their values became current (`tracking.current_since`: made, or
    put back by `dvc checkout` / `dvc exp apply`), oldest first."""
    from orchestration.tracking import ASSET_TAG, current_since

    finished = f"tags.{ASSET_TAG} = '{asset}' and attributes.status = 'FINISHED'"  # a stopped one has no metrics
    order = "DESC" if newest_first else "ASC"
    runs = client.search_runs([experiment_id], filter_string=finished, order_by=[f"attributes.start_time {order}"],
                              max_results=max_results)
    return sorted(runs, key=current_since, reverse=newest_first)  # stable: runs started together keep their order


def evaluation_runs(client, experiment_id: str, latest: bool = True) -> list:
    """`find_evaluation_runs` in an open experiment."""
    from orchestration.tracking import current_since

    runs = []
    for asset in (EVALUATION_ASSET, BASELINE_ASSET):
        found_runs = _finished(client, experiment_id, asset)
        if asset == BASELINE_ASSET:  # `evaluation.baselines: []` records its empty list in a run that measures nothing
            found_runs = [run for run in found_runs if run.data.metrics]
        if latest:
            newest = {}
            for run in found_runs:  # oldest first: the last one of each label wins
                newest.pop(_label(run), None)
                newest[_label(run)] = run
            found_runs = list(newest.values())
        runs += sorted(found_runs, key=lambda r: (current_since(r), _label(r)))  # one step's baselines start together
    return runs


def report_bounds(client, experiment_id: str, runs: list) -> list[float | None]:
    """Per run, `checks.privacy_max_match_share` as the latest report on the same input (`INPUT_TAGS`) used it, else
    as the experiment's latest report did (a report is made again when the bound changes, so this is the bound its
    warnings apply; before, every run was judged by the latest report's, made from whatever storage and params file);
    None before any report logged one."""
    from orchestration.tracking import INPUT_TAGS

    by_input: dict[tuple, float | None] = {}
    latest = None
    for run in _finished(client, experiment_id, REPORT_ASSET, newest_first=True):
        try:
            value = float(run.data.params[BOUND_PARAM])
        except (KeyError, ValueError):
            continue
        latest = value if latest is None else latest
        by_input.setdefault(tuple(run.data.tags.get(t) for t in INPUT_TAGS), value)
    return [by_input.get(tuple(run.data.tags.get(t) for t in INPUT_TAGS), latest) for run in runs]


def _per_run(bound: float | Sequence[float | None] | None, runs: list) -> list[float | None]:
    return list(bound) if isinstance(bound, Sequence) else [bound] * len(runs)


def failed_variants(runs: list, bound: float | Sequence[float | None] | None) -> dict[str, tuple[float, float]]:
    """The variants whose latest evaluation among `runs` (oldest first) fails the privacy `bound` (one, or one per
    run), with the share of their images that dlib still matches to their own source and the bound it failed."""
    bounds = _per_run(bound, runs)
    if all(b is None for b in bounds):
        return {}
    latest = {_label(r): (verdict, _judged_share(r), b)
              for r, verdict, b in zip(runs, privacy_verdicts(runs, bounds), bounds) if not r.data.tags.get("method")}
    return {variant: (share, b) for variant, (verdict, share, b) in latest.items() if verdict == "FAILED"}


def _matched(run) -> str:
    """The share of a run's images dlib still matched, worded as the report's warning words it."""
    from evaluation.report import RELEASE_CHECK, WORST_SHARD_CHECK, matched_share
    from orchestration.tracking import metric_name

    share, worst = (run.data.metrics.get(metric_name(m)) for m in (RELEASE_CHECK, WORST_SHARD_CHECK))
    return matched_share(share, worst)


def privacy_verdicts(runs: list, bound: float | Sequence[float | None]) -> list[str]:
    """Per run, `passed` or `FAILED`: whether dlib matched at most `bound` of its images to their own source, in
    each of its shards (the blocking check's rule, as the report's warnings) and over the whole set; `-` for a run
    that did not measure it."""
    from evaluation.report import fails_release

    shares = [_judged_share(run) for run in runs]
    return ["-" if share is None or b is None else "FAILED" if fails_release(share, b) else "passed"
            for share, b in zip(shares, _per_run(bound, runs))]


def _judged_share(run) -> float | None:
    """The share of a run's images dlib still matched that the release rule judges (`report.judged_share`); None when
    the run did not measure it."""
    from evaluation.report import RELEASE_CHECK, WORST_SHARD_CHECK, judged_share
    from orchestration.tracking import metric_name

    share = run.data.metrics.get(metric_name(RELEASE_CHECK))
    return None if share is None else judged_share(share, run.data.metrics.get(metric_name(WORST_SHARD_CHECK)))


def divergence_notes(client, experiment_id: str, runs: list) -> dict[str, str]:
    """{variant: `loss_curves.divergence_note`} of the variants among `runs` whose optimization diverged, from the
    `loss/total` curves that their latest evaluation's shards logged (the latest finished `anonymized_latents` run
    of each shard on the same input, before that evaluation; the mean over the shards, weighted by their images),
    as the report and `falco pipeline` warn of them."""
    import numpy as np
    import pandas as pd

    from anon_core.loss_curves import divergence_note
    from orchestration.partitions import shard_key
    from orchestration.tracking import SHARD_TAG, SHARDS_TAG, VARIANT_TAG, current_since, metric_name

    latest = {r.data.tags.get(VARIANT_TAG): r for r in runs if not r.data.tags.get("method")}
    wanted = {variant for variant in latest if variant}
    read: dict[str, set[str] | None] = {}  # the shards each evaluation read (None: not logged, before num_shards)
    for variant in wanted:
        count = latest[variant].data.tags.get(SHARDS_TAG, "")
        read[variant] = {shard_key(i) for i in range(int(count))} if count.isdigit() else None
    shards: dict[str, dict[str, object]] = {variant: {} for variant in wanted}
    for run in _finished(client, experiment_id, LATENTS_ASSET) if wanted else []:  # oldest first: the latest wins
        variant, shard = run.data.tags.get(VARIANT_TAG), run.data.tags.get(SHARD_TAG, "")
        if variant in wanted and current_since(run) <= current_since(latest[variant]) and \
                run.data.tags.get("data_version") == latest[variant].data.tags.get("data_version") and \
                (read[variant] is None or shard in read[variant]):  # not a shard of an earlier split of the data
            shards[variant][shard] = run
    notes = {}
    for variant, by_shard in shards.items():
        curves, weights = [], []
        for run in by_shard.values():
            history = sorted(client.get_metric_history(run.info.run_id, metric_name("loss/total")),
                             key=lambda m: m.step)
            if history:
                curves.append([m.value for m in history])
                weights.append(run.data.metrics.get("num_images", 1.0))
        steps = min(map(len, curves), default=0)
        if steps < 2 or not sum(weights):
            continue
        curve = np.average([c[:steps] for c in curves], axis=0, weights=weights)
        try:
            lr = float(latest[variant].data.params.get("optimization.lr", "nan"))
        except ValueError:
            lr = float("nan")
        note = divergence_note(pd.DataFrame({"total": curve}), lr)
        if note:
            notes[variant] = note
    return notes


def _run_compare(args: argparse.Namespace) -> int:
    from anon_core.errors import FalcoError
    from evaluation.report import (PLOT_SOFTWARE, headline_metrics, privacy_utility_axes, privacy_utility_png,
                                   uninformative_banners, uninformative_predictors)

    if args.plot is not None:
        _check_plot_path(args.plot)
    typed = {}
    if args.variant:  # spelled as the pipeline names it: --variant m0.50 is m0.5's runs
        from anon_core.variants import canonical_name

        typed = {canonical_name(v): v for v in args.variant}
        args.variant = list(typed)
    client, experiment_id = open_experiment(args.tracking_uri, args.experiment)
    runs = evaluation_runs(client, experiment_id, latest=not args.all)
    evaluated = sorted({r.data.tags.get("variant", "") for r in runs if not r.data.tags.get("method")})
    absent = [v for v in args.variant or [] if v not in evaluated]  # one misspelt name among several is no less
    if args.variant:
        runs = [r for r in runs if r.data.tags.get("method") or r.data.tags.get("variant") in args.variant]
    if absent or not any(not r.data.tags.get("method") for r in runs):
        named = [v if typed.get(v, v) == v else f"{typed[v]} (read as {v})" for v in absent]  # m05 is m5: margin 5
        which = f" of variant {', '.join(named)}" if absent and evaluated else ""
        known = f"; it has runs of {', '.join(evaluated)}" if which else "; run `falco pipeline` first"
        from orchestration.tracking import MlflowResource

        experiment = MlflowResource(experiment=args.experiment).experiment_name()
        raise FalcoError(f"no {EVALUATION_ASSET} runs{which} in experiment {experiment!r}{known}")
    logged = sorted({k for r in runs for k in r.data.metrics})
    unknown = [m for m in args.metric or [] if m not in logged]
    if unknown:
        raise FalcoError(f"no run logged the metric {', '.join(unknown)}; the runs logged: {', '.join(logged)}")
    bound = report_bounds(client, experiment_id, runs)
    frame = compare_table(runs, args.metric, bound)
    latest_run = {_label(r): r for r in runs}
    for variant, (_, limit) in failed_variants(runs, bound).items():
        print(f"falco: warning: {variant} fails the privacy check: dlib still matches {_matched(latest_run[variant])}, "
              f"more than checks.privacy_max_match_share = {limit:g} (the bound of the latest report on its input) "
              "allows; do not release its images", file=sys.stderr)
    for variant, note in divergence_notes(client, experiment_id, runs).items():
        print(f"falco: warning: {variant}: {note}", file=sys.stderr)
    if len({b for b in bound if b is not None}) > 1:
        print("falco: note: the runs are judged by different privacy bounds (the latest report on each input: "
              f"{', '.join(sorted({f'{b:g}' for b in bound if b is not None}))})", file=sys.stderr)
    mixed = [c.removeprefix("input:") for c in frame.columns if c.startswith("input:")]
    if mixed:
        print(f"falco: warning: these runs read different inputs ({', '.join(mixed)} differ, shown in the "
              f"table), so their metrics do not compare; give each input its own experiment "
              f"(MLFLOW_EXPERIMENT_NAME=NAME falco pipeline ...; falco runs compare --experiment NAME)", file=sys.stderr)
    if args.plot:  # from every logged metric: --metric narrows the table, and picks the axes where it names them
        every = compare_table(runs, None, bound) if args.metric else frame
        privacy, utility = privacy_utility_axes([*(args.metric or []), *logged], skip=uninformative_predictors(every))
        if not (privacy and utility):
            print("falco: error: the runs logged no re-identification and utility metrics to plot", file=sys.stderr)
            return 2
        baselines = [_label(r) for r in runs if r.data.tags.get("method")]
        points = plot_points(every, baselines, every_run=args.all)
        _check_outside_inputs(args.plot, runs)
        plotted = points[[privacy, utility]].dropna()
        write_bytes_atomic(args.plot, privacy_utility_png(plotted, privacy, utility, baselines, software=PLOT_SOFTWARE))
        print(f"plot: {args.plot} ({privacy} against {utility})", file=sys.stderr)  # stdout: the table alone
        for line in uninformative_banners(every):
            print(f"falco: note: {line}", file=sys.stderr)
        left_out = [str(label) for label in points.index if label not in plotted.index]
        if left_out:  # e.g. baselines evaluated before the attribute classifier scored them
            print(f"falco: note: not in the plot, for want of one of its metrics: {', '.join(left_out)}",
                  file=sys.stderr)
    if args.format == "csv":
        print(frame.to_csv(index=False), end="")
    elif args.format == "markdown":
        print(frame.to_markdown(index=False))
    else:
        print(side_by_side(frame, args.metric or headline_metrics(logged)))
    return 0


def plot_points(frame: pd.DataFrame, baselines: list[str], every_run: bool) -> pd.DataFrame:
    """The rows of a `compare_table` to plot, indexed by their label: the latest of each variant and baseline, or
    (`every_run`, with --all) every evaluation, named by its variant and start, beside the baselines' latest."""
    labels = frame["variant"]
    if every_run:
        labels = labels.where(labels.isin(baselines), labels + " " + frame["started"])
    return frame.assign(variant=labels).drop_duplicates("variant", keep="last").set_index("variant")


def _check_plot_path(path: Path) -> None:
    """--plot names a PNG to write: a `.png` name, in an existing folder outside a pipeline's storage, and where a
    file is there already, an earlier plot. A typo such as `--plot params.yaml`, or a path to one of the images, would
    otherwise replace that file with the plot."""
    from anon_core.errors import FalcoError
    from anon_core.folders import check_outside_pipeline_storage

    if path.is_dir():
        raise FalcoError(f"--plot {path} is a folder; give the PNG file to write, e.g. {path / 'compare.png'}")
    if not path.absolute().parent.is_dir():  # a typo in the folder would otherwise become new folders
        raise FalcoError(f"--plot {path}: the folder {path.absolute().parent} does not exist; make it first, or give "
                         "a PNG in an existing folder")
    if path.suffix.lower() != ".png":
        raise FalcoError(f"--plot {path}: the plot is a PNG; give a name ending in .png, e.g. "
                         f"{path.with_suffix('.png')}")
    check_outside_pipeline_storage(path, harm="a file of yours would end up among them", what="--plot a file")
    if path.exists() and not _plotted_by_falco(path):
        raise FalcoError(f"--plot {path} exists and is not a plot falco wrote: it is left as it is; give another name "
                         "(an earlier `--plot` file is replaced)")


def _check_outside_inputs(path: Path, runs: list) -> None:
    """FalcoError when `path` lies in the input folder of one of `runs` (their `input_dir` tag): the next pipeline
    would read the plot as a new image."""
    from anon_core.errors import FalcoError

    target = path.resolve()
    for folder in sorted({r.data.tags.get("input_dir", "") for r in runs} - {"", "unobserved"}):
        if Path(folder).resolve() in target.parents:
            raise FalcoError(f"--plot {path} is inside {folder}, the input folder of these runs: the next pipeline "
                             "would read the plot as one more image; give a path outside it")


def _plotted_by_falco(path: Path) -> bool:
    """Whether `path` is a PNG that `falco runs compare --plot` wrote (its Software text chunk)."""
    from PIL import Image, UnidentifiedImageError

    from evaluation.report import PLOT_SOFTWARE

    if not path.is_file():  # a FIFO would block the read
        return False
    try:
        with Image.open(path) as image:
            return image.format == "PNG" and image.info.get("Software") == PLOT_SOFTWARE
    except (OSError, UnidentifiedImageError, ValueError):
        return False


def side_by_side(frame: pd.DataFrame, metrics: list[str]) -> str:
    """The terminal table: one column per run (headed by its variant or baseline, and its start time where a label
    has several runs, as with --all), one row per differing input tag, per differing parameter and per metric
    (`metrics`), numbers to 4 significant digits; narrow enough for 120 columns with up to 7 runs."""
    from evaluation.glossary import shown_number

    repeated = frame["variant"].duplicated(keep=False)
    ids = frame["mlflow_run_id"].str[:8] if "mlflow_run_id" in frame else frame.index.to_series().astype(str)
    for shown in (frame["started"].str[5:16], frame["started"].str[5:19], ids):
        heading = frame["variant"].where(~repeated, frame["variant"] + " " + shown)
        if not heading.duplicated().any():  # to the minute, else to the second, else by run id
            break
    described = [c for c in frame.columns if c.startswith(("input:", "param:", "check:"))]
    rows = frame.set_index(heading)[described + metrics].T
    rows.index = [i.split(":", 1)[1] if i in described else i for i in rows.index]
    rows.index.name = rows.columns.name = None
    text = rows.map(shown_number)
    for name in (i for i in rows.index if f"input:{i}" in described):
        text.loc[name] = _shown_inputs(text.loc[name].tolist())
    return text.to_string()


DIGEST = re.compile(r"(?:[a-z0-9]+:)?([0-9a-f]{16,})")  # a sha256, or a data version ("sha256:<hex>")
INPUT_WIDTH = 12


def _shown_inputs(values: list[str]) -> list[str]:
    """An input tag's values in the terminal table (a row: one per run), each at most INPUT_WIDTH characters where
    that still tells them apart: a digest by its first 8 hex digits (as git shows a commit), a long path by its end;
    paths that differ only before their last characters by what follows their common beginning, whole where needed.
    The runs' tags and `--format csv` or `markdown` give them whole (a 64-character digest per run made the table
    1,634 characters wide)."""
    shown = [_shortened(v) for v in values]
    if len(set(shown)) == len(set(values)):
        return shown
    cut = os.path.commonprefix(values).rfind("/") + 1  # `…/d12/images` was every run's of two folders
    return ["…" + v[cut:] if cut > 1 else v for v in values]


def _shortened(text: str) -> str:
    digest = DIGEST.fullmatch(text)
    if digest:
        return digest[1][:8]
    return text if len(text) <= INPUT_WIDTH else "…" + text[-(INPUT_WIDTH - 1):]


def register(subparsers: argparse._SubParsersAction) -> None:
    runs = subparsers.add_parser("runs", help="MLflow runs of the pipeline")
    sub = runs.add_subparsers(dest="runs_command", required=True)
    p = sub.add_parser("compare", help="the variants' latest evaluations and the baselines side by side, with the "
                       "parameters that differ and each one's privacy verdict (passed/FAILED)")
    p.add_argument("--experiment", type=given_text, default=None, help="MLflow experiment (default: $MLFLOW_EXPERIMENT_NAME, else falco)")
    p.add_argument("--metric", action="append", default=None, metavar="M",
                   help="metric to show (repeatable; default: every metric the runs logged)")
    p.add_argument("--variant", action="append", default=None, metavar="NAME",
                   help="only this variant (repeatable; the baselines are always shown)")
    p.add_argument("--all", action="store_true", help="every evaluation run, not only the latest of each variant")
    p.add_argument("--plot", type=given_path, default=None, metavar="PNG",
                   help="also write the privacy-vs-utility scatter of the variants (dots) and baselines (crosses)")
    p.add_argument("--format", choices=("table", "csv", "markdown"), default="table",
                   help="table (default): runs side by side, the headline metrics (or --metric); csv, markdown: one "
                        "row per run with every metric, its MLflow and Dagster run ids")
    p.add_argument("--tracking-uri", type=given_text, default=None,
                   help="default: $MLFLOW_TRACKING_URI, else sqlite:///<project>/mlflow.db")
    p.set_defaults(run=_run_compare)
