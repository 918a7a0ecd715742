"""`falco pipeline` and `falco stage NAME`: the asset graph through the named Dagster jobs (orchestration.driver),
recorded in the instance at $DAGSTER_HOME (what `make ui` shows). `falco stage prepare|anonymize|evaluate` runs one
stage: the commands of dvc.yaml. Both take the same options; a flag left out takes its value from params.yaml.

Variants: `--margin 0,0.5,0.9` (and `--steps`, `--lr`, `--lambda-id`, `--lambda-attr`, `--gamma`: every
combination) runs one variant per value, named after it (m0, m0.5, m0.9); `--variant NAME,...` runs named ones
(params.yaml `variants:`, or names made of values). Without either, params.yaml's `sweep:` says what runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from anon_core.params import PIPELINE_EXECUTORS
from orchestration.cli_types import check_mode_flags, finite_float, given_path, whole_number
from orchestration.pipeline_stages import MODES, STAGES

GRID_FLAGS = {"margin": float, "steps": int, "lr": float, "lambda_id": float, "lambda_attr": float,
              "lambda_consistency": float, "gamma": float}


def _values(kind: type):
    """A comma-separated list of `kind` values, each read as the single-value flags read theirs (`--steps 20.0` is
    20, as in params.yaml)."""
    read_one = {float: finite_float, int: whole_number, str: str}[kind]

    def parse(text: str) -> list:
        items = [v.strip() for v in text.split(",")]
        if not all(items):  # `--margin ''` or `--margin 0.5,`: not the sweep of params.yaml, silently
            example = "names, e.g. default,m0.5" if kind is str else \
                "values, e.g. 0,0.5,0.9 (a negative first value as --margin=-0.5,...)"
            raise argparse.ArgumentTypeError(f"{text!r} has an empty item; give comma-separated {example}")
        values = []
        for item in items:
            try:
                values.append(read_one(item))
            except argparse.ArgumentTypeError as error:
                shown = "" if len(items) == 1 else f"{text!r}: "
                raise argparse.ArgumentTypeError(f"{shown}{error}") from None
        return values

    return parse


def add_pipeline_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", type=given_path, default=None, help="folder of real images (default: $FALCO_INPUT or "
                   "data/sample/images)")
    p.add_argument("--storage", type=given_path, default=None, help="where asset values go (default: $FALCO_STORAGE or "
                   "outputs/pipeline)")
    p.add_argument("--profile", default=None, help="network profile: tiny, ffhq1024, ffhq512 (default: "
                   "$FALCO_PROFILE or tiny)")
    p.add_argument("--device", default=None, help="cpu or cuda (cuda:N) (default: $FALCO_DEVICE or cpu)")
    p.add_argument("--params", type=given_path, default=None,
                   help="params.yaml with the defaults (default: $FALCO_PARAMS "
                   "or the project's)")
    variants = p.add_argument_group("variants (default: params.yaml's sweep:)")
    # action="extend": a flag given twice adds its values (`--margin 0 --margin 0.9` is `--margin 0,0.9`); the last
    # one alone ran, without a word
    variants.add_argument("--variant", type=_values(str), action="extend", default=None, metavar="NAME[,NAME]",
                          help="variants to run: `default`, names defined under variants: in params.yaml, or names "
                               "made of values (m0.9, m0.5_steps20)")
    for key, kind in GRID_FLAGS.items():
        variants.add_argument(f"--{key.replace('_', '-')}", dest=key, type=_values(kind), action="extend", default=None,
                              metavar="V[,V]", help=f"optimization.{key} values: one variant per value (every "
                                                    "combination with the other value flags; the flag may be repeated)")
    shared = p.add_argument_group("settings every variant shares (default: params.yaml)")
    shared.add_argument("--pool-size", type=whole_number, default=None, help="number of fakes (paper: 60000)")
    shared.add_argument("--seed", type=whole_number, default=None, help="seed of the fake pool")
    shared.add_argument("--pairing", choices=("nearest", "unique", "identity"), default=None,
                        help="params.yaml pairing: nearest (the paper's), unique, identity (one fake per person)")
    shared.add_argument("--shard-size", type=whole_number, default=None, help="images per partition (params.yaml "
                        "pipeline.shard_size: 1024, 16 for tiny)")
    shared.add_argument("--executor", choices=PIPELINE_EXECUTORS, default=None,
                        help="pipeline.executor: celery hands each step to the `falco worker`s of its queue (README: "
                             "Cluster)")
    shared.add_argument("--dataset", choices=("auto", "celebahq", "lfw", "folder"), default=None,
                        help="layout of the input folder (params.yaml data.dataset)")
    shared.add_argument("--labels", type=given_path, default=None, metavar="CSV", help="labels CSV (data.labels_csv)")
    shared.add_argument("--align", action=argparse.BooleanOptionalAction, default=None,
                        help="FFHQ-align faces first (data.align: on, except for CelebA-HQ)")
    shared.add_argument("--align-detector", choices=("mtcnn", "dlib"), default=None, help="data.align_detector")
    photo = p.add_argument_group("photo mode (--mode photo; default: params.yaml photo:)")
    photo.add_argument("--mode", choices=MODES, default="aligned",
                       help="aligned: the face dataset graph (default); photo: every face of each photo anonymized in "
                            "place, jobs prepare_photos and anonymize_photos (no evaluate stage: each shard has its "
                            "blocking per-face privacy check)")
    photo.add_argument("--min-face-size", type=whole_number, default=None, metavar="PX", help="photo.min_face_size")
    photo.add_argument("--min-anonymize-size", type=whole_number, default=None, metavar="PX",
                       help="photo.min_anonymize_size")
    photo.add_argument("--cover", choices=("pixelate", "blur"), default=None, help="photo.cover")
    p.add_argument("--fresh", action="store_true", help="re-make every asset, even those Dagster reports up to date, "
                   "and every image's inversion and codes (without it, images stored under the same settings are "
                   "taken as they are)")
    p.add_argument("--require-privacy", action="store_true",
                   help="exit 1 when a shard fails its privacy check (default: it is named at the end and the exit "
                        "code stays 0, since a sweep may keep identity on purpose); for a release gate")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                   help="Dagster console log level (DEBUG shows every event)")


def resources_from_args(args: argparse.Namespace):
    """(storage, networks, variants) from the options (environment and params.yaml for what is not given)."""
    from anon_core.params import given_flags
    from anon_core.variants import grid_variants
    from orchestration.resources import NetworksResource, StorageResource, networks_from_env, storage_from_env

    env_storage, env_networks = storage_from_env(), networks_from_env()
    storage = StorageResource(root=str(args.storage.resolve()) if args.storage else env_storage.root,
                              input_dir=str(args.input.resolve()) if args.input else env_storage.input_dir)
    overrides, sources = given_flags({
        "pool_size": ("--pool-size", args.pool_size), "seed": ("--seed", args.seed),
        "pairing": ("--pairing", args.pairing), "pipeline.shard_size": ("--shard-size", args.shard_size),
        "pipeline.executor": ("--executor", args.executor), "data.dataset": ("--dataset", args.dataset),
        "data.labels_csv": ("--labels", str(args.labels.resolve()) if args.labels else None),
        "data.align": ("--align" if args.align else "--no-align", args.align),
        "data.align_detector": ("--align-detector", args.align_detector),
        "photo.min_face_size": ("--min-face-size", args.min_face_size),
        "photo.min_anonymize_size": ("--min-anonymize-size", args.min_anonymize_size),
        "photo.cover": ("--cover", args.cover)})
    if args.executor is None and "pipeline.executor" in env_networks.overrides:  # as the UI's launches take it
        overrides["pipeline.executor"] = env_networks.overrides["pipeline.executor"]
        sources["pipeline.executor"] = env_networks.sources["pipeline.executor"]
    if args.device or "device" in env_networks.sources:  # else the default, cpu
        sources["device"] = "--device" if args.device else env_networks.sources["device"]
    networks = NetworksResource(
        profile=args.profile or env_networks.profile, device=args.device or env_networks.device,
        params_path=str(args.params.resolve()) if args.params else env_networks.params_path,
        overrides=overrides, sources=sources)
    grid = {key: getattr(args, key) for key in GRID_FLAGS if getattr(args, key)}
    wanted = [*(args.variant or []), *grid_variants(grid)]
    _note_repeats(wanted)
    return storage, networks, list(dict.fromkeys(wanted))


def _note_repeats(wanted: list[str]) -> None:
    """A variant asked for more than once (`--margin 0.5,.5`, `--variant m0.5 --margin 0.5`) runs once: said, not
    silently merged, as the user may have meant another value."""
    from collections import Counter

    from anon_core.errors import ParamsError
    from anon_core.variants import canonical_name

    def canonical(name: str) -> str:
        try:
            return canonical_name(name)
        except ParamsError:  # a bad name is refused, with its reason, when the variants are resolved
            return name

    for name, times in Counter(canonical(v) for v in wanted).items():
        if times > 1:
            print(f"note: variant {name} is asked for {times} times (one value written {times} ways, or repeated); it "
                  "runs once", file=sys.stderr)


def _shard_images(folder: Path) -> str:
    """Where a photo-mode variant's photos are: each shard's own `images/` folder."""
    shards = sorted(p.name for p in folder.glob("shard-*") if p.is_dir()) if folder.is_dir() else []
    if len(shards) == 1:
        return str(folder / shards[0] / "images")
    return f"{folder / 'shard-*' / 'images'} ({len(shards)} shards)"


def _run(args: argparse.Namespace, stages: tuple[str, ...]) -> int:
    from orchestration.driver import dagster_home, run_pipeline

    check_mode_flags(args)
    storage, networks, wanted = resources_from_args(args)
    networks.check_device()  # before any run starts: a device this machine lacks is one line, not a failed run
    if "prepare" in stages and not Path(storage.input_dir).is_dir():
        what = "is a file, not a folder" if Path(storage.input_dir).exists() else "does not exist"
        print(f"falco: error: input folder {storage.input_dir} {what}; pass --input DIR, a folder of images (the "
              "sample set: `falco sample-data data/sample`)", file=sys.stderr)
        return 2
    start = time.perf_counter()
    summary = run_pipeline(storage, networks, wanted or None, fresh=args.fresh, stages=stages,
                           log_level=args.log_level, mode=args.mode)  # makes the instance at $DAGSTER_HOME, once checked
    seconds = time.perf_counter() - start
    # a variant left unmade or unevaluated (a stale shard, say) is not "done", though no run failed
    state = "FAILED" if summary.failed else "incomplete" if summary.blocked else "done"
    failed = [label for label in summary.failed if label not in summary.ran]  # a run failed by its check alone ran
    # a later stage refused because the prepare stage is not ready ran nothing: its error line says so, alone
    refused = "prepare" not in stages and summary.failed == ["prepare"] and not summary.ran and not summary.skipped
    if not refused:
        print(f"{' '.join(stages) if len(stages) == 1 else 'pipeline'} {state} in {seconds:.1f} s: {len(summary.ran)} "
              f"run(s) done{f', {len(failed)} failed' if failed else ''}, {len(summary.skipped)} up to date; "
              f"variants: {', '.join(summary.variants)}")
    rejected = _rejections(storage) if args.mode == "aligned" else None
    if rejected:
        print(rejected)
    if "anonymize" in stages and "prepare" not in summary.failed:
        kind = "anonymized_photos" if args.mode == "photo" else "anonymized_images"
        for variant in summary.variants:
            folder = storage.asset_dir(kind, variant)
            if variant in summary.blocked:  # its folder holds what an earlier run made, not this variant's result
                print(f"  {variant}: not made (a shard failed or is stale; see below)")
                continue
            print(f"  {variant}: {_shard_images(folder) if args.mode == 'photo' else folder / 'images'}")
            if args.mode == "photo":
                described = _photos_described(folder)
                if described:
                    print(f"    {described}")
    reported = "evaluate" in stages and args.mode == "aligned" and not summary.blocked and not summary.failed
    if reported:
        print(f"report: {storage.asset_dir('anonymization_report') / 'report.html'}")
    if reported or ("anonymize" in stages and args.mode == "photo"):
        for line in _divergence_warnings(storage, networks, [v for v in summary.variants if v not in summary.blocked],
                                         args.mode):
            print(line, file=sys.stderr)
    for label, error in summary.errors.items():
        if label in summary.failed:
            print(f"falco: error: {label}: {error}", file=sys.stderr)
    if summary.blocked:
        print(f"not evaluated (a shard's anonymization failed, is missing or is stale; see above): "
              f"{', '.join(summary.blocked)}", file=sys.stderr)
    for variant, shards in summary.privacy_failed.items():
        print(f"PRIVACY CHECK FAILED for {variant} on {len(shards)} shard(s) ({', '.join(shards)}): dlib still "
              f"matches too many of its {'faces' if args.mode == 'photo' else 'images'} to their sources "
              f"({networks.params_file.name}'s checks.privacy_max_match_share = {networks.privacy_bound():g}); "
              "do not release these images", file=sys.stderr)
    if summary.ran or summary.skipped:  # a command refused before any run has nothing to browse
        print(_browse_hints(str(dagster_home())))
    if "evaluate" in stages and args.mode == "aligned" and not summary.ran and summary.skipped:
        note = _untracked_note()
        if note:
            print(note, file=sys.stderr)
    return 1 if summary.failed or summary.blocked or (args.require_privacy and summary.privacy_failed) else 0


def _photos_described(folder: Path) -> str | None:
    """What photo mode did to a variant's photos, over the manifests of its shards, as `falco anonymize --mode photo`
    says it (faces anonymized and covered, files rejected, photos turned, photos without a face); None when no shard
    has a manifest."""
    import pandas as pd

    from anon_core.photos import PhotoSummary, read_photo_manifest

    manifests = [read_photo_manifest(path.parent) for path in sorted(Path(folder).glob("*/manifest.csv"))]
    if not manifests:
        return None
    return PhotoSummary.from_manifest(folder, pd.concat(manifests, ignore_index=True)).describe()


def _divergence_warnings(storage, networks, variants: list[str], mode: str) -> list[str]:
    """A warning per variant (photo mode: per shard) whose mean loss ended above where it started
    (`loss_curves.divergence_note`), from the curves the run wrote: the report's `losses/<variant>.csv`, or each
    photo-mode shard's `losses.csv`."""
    from anon_core.loss_curves import diverged

    lines = []
    for variant in variants:
        if mode == "photo":
            curves = sorted(storage.asset_dir("anonymized_photos", variant).glob("shard-*/losses.csv"))
        else:
            curves = [storage.asset_dir("anonymization_report") / "losses" / f"{variant}.csv"]
        for path in curves:
            note = diverged(path, networks.params(variant).optimization.lr)
            if note:
                where = f" ({path.parent.name})" if mode == "photo" else ""
                lines.append(f"falco: warning: variant {variant}{where}: {note}; see {path}")
    return lines


def _rejections(storage) -> str | None:
    """The input files that `real_images` rejected, counted by reason, and where their rows are; None when it
    rejected none (or has not been made)."""
    import pandas as pd

    table_path = storage.asset_dir("real_images") / "all.parquet"
    try:
        table = pd.read_parquet(table_path, columns=["status", "reason"])
    except (OSError, ValueError, KeyError):
        return None
    reasons = table.loc[table["status"] != "ok", "reason"].value_counts()
    if reasons.empty:
        return None
    counts = ", ".join(f"{reason} {count}" for reason, count in reasons.items())
    return (f"input: {len(table)} file(s), {int(reasons.sum())} rejected ({counts}); their rows (input, reason, detail) "
            f"are in {table_path} and on real_images in the UI")


def _untracked_note() -> str | None:
    """When nothing ran and the MLflow experiment holds no evaluation: the values were tracked, when they were made,
    in another experiment (a new MLFLOW_EXPERIMENT_NAME on an up-to-date storage), which `falco runs compare` of this
    one would otherwise call "run `falco pipeline` first", the command just run."""
    from orchestration.cli_runs import EVALUATION_ASSET, _finished
    from orchestration.tracking import MlflowResource

    tracker = MlflowResource()
    try:
        found = tracker.check_store()
        runs = _finished(tracker.client(), found.experiment_id, EVALUATION_ASSET, max_results=1) if found else []
    except Exception:  # noqa: BLE001 - a note only; the store answered the driver a moment ago
        return None
    if runs:
        return None
    return (f"falco: note: nothing was made again, so MLflow experiment {tracker.experiment_name()!r} holds no "
            "evaluation of these values: runs are tracked when they are made, here in the experiment of the run that "
            "made them. `falco pipeline --fresh` makes (and tracks) everything again in this experiment")


def _run_stage(args: argparse.Namespace) -> int:
    """`falco stage NAME`. Run by DVC (its DVC_STAGE variable set), it ends as stopped when DVC does: a SIGTERM to
    `dvc repro` left the stage running on without it, its Dagster run and MLflow runs going on."""
    import os

    if os.environ.get("DVC_STAGE"):
        import signal

        from orchestration.cli import STARTED_BY
        from orchestration.driver import end_with_parent

        end_with_parent(signal.SIGTERM, STARTED_BY)
    return _run(args, (args.name,))


def _browse_hints(dagster_home: str) -> str:
    """Where to look next: the Dagster UI on this instance, and the MLflow experiment's page."""
    from orchestration.driver import DEFAULT_DAGSTER_HOME
    from orchestration.mlflow_store import sqlite_path
    from orchestration.tracking import DEFAULT_DB, MlflowResource

    home = Path(dagster_home).resolve()
    ui = "make ui" if home == DEFAULT_DAGSTER_HOME.resolve() else f"DAGSTER_HOME={home} make ui"
    tracker = MlflowResource()
    uri = tracker.uri()
    database = sqlite_path(uri)
    where = None if database is not None and not database.exists() else tracker.experiment_url()  # no store made
    serve = "" if uri.startswith(("http://", "https://")) else " after `make mlflow-ui`" \
        if uri == f"sqlite:///{DEFAULT_DB}" else f" after `mlflow ui --backend-store-uri {uri}`"
    return f"Dagster instance: {home}  (browse it with `{ui}`)\nMLflow runs: {where or uri}{serve}"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("pipeline", help="run the Dagster jobs prepare, anonymize, evaluate for what is missing "
                              "or stale (a variant sweep with --margin 0,0.5,0.9)")
    add_pipeline_options(p)
    p.set_defaults(run=lambda args: _run(args, STAGES))
    p = subparsers.add_parser("stage", help="one stage of `falco pipeline` (the commands of dvc.yaml)")
    p.add_argument("name", choices=STAGES, metavar="NAME", help=", ".join(STAGES))
    add_pipeline_options(p)
    p.set_defaults(run=_run_stage)
