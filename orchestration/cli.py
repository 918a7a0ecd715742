"""The `falco` command line: `anonymize`, `evaluate`, `pipeline`, `sample-data`, `models`, `runs`, `stage`, `worker`,
`cluster`.

Thin: parses flags, resolves parameters from params.yaml, and calls `anon_core`. Heavy imports happen inside the
sub-commands so `falco --help` is instant.
"""

from __future__ import annotations

import argparse
import atexit
import errno
import logging
import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, NoReturn

from orchestration import stop_request
from orchestration.cli_types import check_mode_flags, finite_float, given_path, whole_number

STARTED_BY = os.getppid()  # noted first thing: a parent that ends before a command watches for it is still seen
# (orchestration.driver.end_with_parent), under a subreaper too


def _add_anonymize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("anonymize", help="anonymize every image under INPUT_DIR into OUTPUT_DIR",
                       description="aligned mode (default): the paper's setting, one FFHQ-aligned crop of the largest "
                       "face per image; photo mode: every face of every photo anonymized in place, the photo kept")
    p.add_argument("input_dir", type=given_path, metavar="INPUT_DIR",
                   help="folder of face images (read recursively, never "
                   "written)")
    p.add_argument("output_dir", type=given_path, metavar="OUTPUT_DIR",
                   help="where images/, manifest.csv, face_privacy.csv, latents.npy, losses.csv, params.json go "
                        "(outside INPUT_DIR); the command exits 1 when dlib still matches more of the faces to their "
                        "source than checks.privacy_max_match_share of --params allows (face_privacy.csv)")
    p.add_argument("--mode", choices=("aligned", "photo"), default="aligned",
                   help="aligned: a dataset of faces -> aligned anonymized crops (default, the paper's); photo: every "
                        "face of each photo anonymized and pasted back, faces that cannot be are covered")
    p.add_argument("--profile", default="tiny", help="network profile: tiny (default, seeded, CPU), ffhq1024, ffhq512")
    p.add_argument("--params", type=given_path, default=None,
                   help="params.yaml with the defaults (default: the project's)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    p.add_argument("--batch-size", type=_batch_size, default=None, metavar="N|auto",
                   help="images optimized together; auto: the largest that fits the GPU's free memory")
    p.add_argument("--amp", choices=("auto", "bf16", "off"), default=None,
                   help="mixed precision of the networks: bf16 autocast, off (float32), auto (bf16 on CUDA only)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the optimization step (worth it on a GPU; compiling takes minutes on a CPU)")
    p.add_argument("--steps", type=whole_number, default=None, help="optimization steps (paper: 50)")
    p.add_argument("--margin", type=finite_float, default=None, help="identity margin m (0: paper default; -> 1 keeps more identity)")
    p.add_argument("--pairing", choices=("nearest", "unique", "identity"), default=None,
                   help="nearest: each image its nearest fake (the paper's); unique: no two images share a fake; "
                        "identity: one fake per person (identity labels of the dataset or --labels), distinct "
                        "across people (default: params.yaml pairing)")
    p.add_argument("--lambda-consistency", type=finite_float, default=None, metavar="W",
                   help="weight of the pull toward the paired fake's identity (one pseudonym per person with "
                        "--pairing identity); 0: the paper's loss (default: params.yaml)")
    p.add_argument("--seed", type=whole_number, default=None, help="seed of the fake pool")
    p.add_argument("--pool-size", type=whole_number, default=None, help="number of fakes (paper: 60000)")
    p.add_argument("--dataset", choices=("auto", "celebahq", "lfw", "folder"), default=None,
                   help="layout of INPUT_DIR: celebahq (CelebAMask-HQ download), lfw, folder (any images), auto "
                        "(default: params.yaml data.dataset)")
    p.add_argument("--labels", type=given_path, default=None, metavar="CSV",
                   help="CSV: relpath (or file) column + optional identity, split, CelebA attribute columns")
    p.add_argument("--align", action=argparse.BooleanOptionalAction, default=None,
                   help="FFHQ-align faces first (default: on, except --dataset celebahq, which is aligned already)")
    p.add_argument("--align-detector", choices=("mtcnn", "dlib"), default=None,
                   help="landmarks for alignment: mtcnn or dlib HOG + 5-point (default: params.yaml data.align_detector)")
    p.add_argument("--keep-cache", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the aligned crops of the real faces in OUTPUT_DIR/.align_cache (private, 0600) so a re-run "
                        "skips the alignment (default); --no-keep-cache aligns into a temporary folder in OUTPUT_DIR "
                        "and removes it when the run ends. Photo mode: the faces found in each photo (boxes and "
                        "landmarks, no pixels) in OUTPUT_DIR/.detection_cache, so a re-run searches only new photos")
    p.add_argument("--no-cache", dest="keep_cache", action="store_false", help="same as --no-keep-cache")
    photo = p.add_argument_group("photo mode (--mode photo; defaults: params.yaml photo:)")
    photo.add_argument("--min-face-size", type=whole_number, default=None, metavar="PX",
                       help="smallest face box the detector looks for (>= 12)")
    photo.add_argument("--min-anonymize-size", type=whole_number, default=None, metavar="PX",
                       help="faces whose box is smaller are covered instead of anonymized")
    photo.add_argument("--cover", choices=("pixelate", "blur"), default=None,
                       help="how faces that cannot be anonymized (too small, profile, no alignment) are covered")
    photo.add_argument("--photo-format", choices=("png", "same"), default=None,
                       help="png: every photo as lossless PNG; same: JPEG inputs stay JPEG (quality 95)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=_run_anonymize)


def _batch_size(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return whole_number(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number or auto") from None


def _run_anonymize(args: argparse.Namespace) -> int:
    from anon_core.folders import check_outside_pipeline_storage
    from anon_core.ingest import data_settings
    from anon_core.params import (DEFAULT_PARAMS_PATH, given_flags, load_params, load_section, naming_sources,
                                  privacy_bound)
    from anon_core.pipeline import anonymize_folder
    from anon_core.stages import resolve_device
    from orchestration.section_checks import check_sections

    check_mode_flags(args)
    resolve_device(args.device)  # before any work: a device this machine lacks is one line, not a torch traceback
    overrides, sources = given_flags({
        "batch_size": ("--batch-size", args.batch_size), "seed": ("--seed", args.seed),
        "pool_size": ("--pool-size", args.pool_size), "pairing": ("--pairing", args.pairing),
        "optimization.steps": ("--steps", args.steps), "optimization.margin": ("--margin", args.margin),
        "speed.amp": ("--amp", args.amp),
        "speed.compile": ("--compile" if args.compile else "--no-compile", args.compile),
        "optimization.lambda_consistency": ("--lambda-consistency", args.lambda_consistency)})
    params = load_params(args.profile, args.params, sources=sources, **overrides)
    if not args.input_dir.is_dir():
        print(f"falco: error: input folder {args.input_dir} does not exist or is not a folder", file=sys.stderr)
        return 2
    check_outside_pipeline_storage(args.output_dir)
    params_file = args.params or DEFAULT_PARAMS_PATH
    # photo mode's release gate; checked in either mode, so a bad value in the file is refused whichever reads it
    bound = privacy_bound(load_section("checks", args.profile, args.params), params_file)
    if args.mode == "photo":
        return _run_anonymize_photos(args, params, bound)
    flags, sources = given_flags({
        "data.dataset": ("--dataset", args.dataset),
        "data.labels_csv": ("--labels", str(args.labels.resolve()) if args.labels else None),
        "data.align": ("--align" if args.align else "--no-align", args.align),
        "data.align_detector": ("--align-detector", args.align_detector)})
    with naming_sources(params_file, flags, sources):  # a bad flag's value is named by its flag, not by the file
        data = data_settings(load_section("data", args.profile, args.params, flags), params_file)  # flags, else file
    check_sections(args.params, args.profile)  # every other section too, in every profile, though this mode reads none
    start, checked = time.perf_counter(), {}

    def check_privacy(real_images, rows) -> None:  # while the real faces' aligned crops exist (--no-cache)
        checked["at"] = time.perf_counter()
        if len(rows):
            checked["privacy"] = _aligned_privacy(real_images, rows, args.output_dir, args.device, args.quiet, bound)
        checked["done"] = time.perf_counter()

    summary = anonymize_folder(args.input_dir, args.output_dir, params, device=args.device,
                               show_progress=not args.quiet, keep_cache=args.keep_cache is not False,
                               check_outputs=check_privacy, **data)
    seconds = checked["at"] - start
    print(f"{summary.describe()} in {seconds:.1f} s ({summary.ok / seconds:.2f} images/s, networks' start included)")
    if not summary.ok:
        print(f"results: {summary.output_dir}  (manifest.csv, latents.npy and losses.csv, both empty, params.json)")
        print(f"falco: error: nothing was anonymized: every file of {args.input_dir} was rejected (reasons in "
              f"{summary.output_dir / 'manifest.csv'})", file=sys.stderr)
        return 1
    privacy = checked["privacy"]
    _print_privacy(privacy, "images")
    _warn_if_diverged(summary.output_dir, params.optimization.lr)
    print(f"results: {summary.output_dir}  (images/, manifest.csv, face_privacy.csv, latents.npy, losses.csv, "
          "params.json)")
    verdict = _privacy_verdict(privacy, bound, summary.output_dir, "images")
    _print_time(args, anonymizing=seconds, checking=checked["done"] - checked["at"])
    return verdict


def _print_time(args: argparse.Namespace, anonymizing: float, checking: float) -> None:
    """The command's time since its process started (since `main` was called, in a process that runs others), and
    its parts: the figure before it counts the anonymizing alone."""
    total = _seconds_since_start(args.started) if args.whole_process else time.perf_counter() - args.started
    print(f"finished in {total:.1f} s: anonymizing {anonymizing:.1f} s, privacy check {checking:.1f} s, the rest "
          f"{max(total - anonymizing - checking, 0.0):.1f} s (imports, reading params.yaml, the folder's checks)")


def _seconds_since_start(started: float) -> float:
    """Seconds since this process started (Linux's /proc, to 0.01 s), else since `started` (a perf_counter time)."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime, after the command's name
            return max(float(uptime.read().split()[0]) - ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - started


def _aligned_privacy(real_images, rows, output_dir: Path, device: str, quiet: bool, bound: float):
    """dlib's verdict on every image of an aligned run, written to face_privacy.csv and params.json."""
    from evaluation.aligned_privacy import aligned_face_privacy
    from evaluation.photo_privacy import record_privacy_check, write_face_privacy
    from evaluation.recognizers import build_recognizer

    record_privacy_check(output_dir)  # "pending": a run stopped during the check does not look checked
    privacy = aligned_face_privacy(real_images, output_dir, rows, build_recognizer("dlib", device=device),
                                   show_progress=not quiet)
    write_face_privacy(privacy, output_dir)
    record_privacy_check(output_dir, privacy, bound)
    return privacy


def _print_privacy(privacy, what: str, note: str = "") -> None:
    """The line that sums up face_privacy.csv's table (`what`: the run's images or faces), ending with `note`."""
    from evaluation.photo_privacy import measured_distances, measured_faces, unmeasured_note

    if not measured_faces(privacy):
        print(f"privacy: dlib measured none of the {what}{unmeasured_note(privacy)}")
        return
    print(f"privacy: dlib matches {int(privacy['matched'].sum())} of {measured_faces(privacy)} {what} to their source "
          f"(distance < 0.6; smallest distance {measured_distances(privacy).min():.2f}){unmeasured_note(privacy)}"
          f"{note}")


def _warn_if_diverged(output_dir: Path, lr: float) -> None:
    """The warning line of a run whose mean loss ended above where it started (`loss_curves.divergence_note`)."""
    from anon_core.loss_curves import diverged

    note = diverged(output_dir / "losses.csv", lr)
    if note:
        print(f"falco: warning: {note}; see {output_dir / 'losses.csv'}", file=sys.stderr)


def _privacy_verdict(privacy, bound: float, output_dir: Path, what: str) -> int:
    """1, with the error line, when dlib matched more than the bound's share of the run's `what` (the rows of
    face_privacy.csv's table; None: none was checked) to their source."""
    from evaluation.photo_privacy import match_share, measured_faces
    from evaluation.report import fails_release

    if privacy is None or not fails_release(match_share(privacy), bound):
        return 0
    print(f"falco: error: privacy check failed: dlib still matches {int(privacy['matched'].sum())} of "
          f"{measured_faces(privacy)} "
          f"{what} to their source ({match_share(privacy):.1%}), more than checks.privacy_max_match_share = {bound:g} "
          f"allows; see {output_dir / 'face_privacy.csv'}", file=sys.stderr)
    return 1


def _run_anonymize_photos(args: argparse.Namespace, params, bound: float) -> int:
    from anon_core.params import DEFAULT_PARAMS_PATH, given_flags, load_section, naming_sources
    from anon_core.photo_faces import photo_settings
    from anon_core.photos import anonymize_photos
    from orchestration.section_checks import check_sections

    params_file = args.params or DEFAULT_PARAMS_PATH
    flags, sources = given_flags({
        "photo.min_face_size": ("--min-face-size", args.min_face_size),
        "photo.min_anonymize_size": ("--min-anonymize-size", args.min_anonymize_size),
        "photo.cover": ("--cover", args.cover), "photo.output_format": ("--photo-format", args.photo_format)})
    with naming_sources(params_file, flags, sources):
        settings = photo_settings(load_section("photo", args.profile, args.params, flags), params_file)
    check_sections(args.params, args.profile)  # every other section too, in every profile
    start = time.perf_counter()
    summary = anonymize_photos(args.input_dir, args.output_dir, params, settings, device=args.device,
                               show_progress=not args.quiet, keep_detections=args.keep_cache is not False)
    seconds = time.perf_counter() - start
    print(f"{summary.describe()}; took {seconds:.1f} s ({summary.faces / seconds:.2f} faces/s, networks' start "
          "included)")
    checking = time.perf_counter()
    privacy = _check_photo_privacy(args.input_dir, summary.output_dir, args.device, bound,
                                   keep=args.keep_cache is not False)
    checking = time.perf_counter() - checking
    _warn_if_diverged(summary.output_dir, params.optimization.lr)
    print(f"results: {summary.output_dir}  (images/, manifest.csv, face_privacy.csv, latents.npy, losses.csv, "
          "params.json)")
    if summary.faces == 0:  # as aligned mode: nothing anonymized is not a success
        rejected = sum(summary.rejected.values())
        read = summary.photos - rejected
        if not read:
            print(f"falco: error: nothing was anonymized: every file of {args.input_dir} was rejected (reasons in "
                  f"{summary.output_dir / 'manifest.csv'})", file=sys.stderr)
            return 1
        others = f" ({rejected} other file(s) rejected, not written: see manifest.csv)" if rejected else ""
        print(f"falco: error: nothing was anonymized: no face was found in any of the {read} photo(s) read of "
              f"{args.input_dir}{others}, and those photos were written unchanged; if they show faces, look at "
              "manifest.csv's detail, and try a lower --min-face-size (or photo.turns: always, where params.yaml sets "
              "another)", file=sys.stderr)
        return 1
    verdict = _privacy_verdict(privacy, bound, summary.output_dir, "faces")
    _print_time(args, anonymizing=seconds, checking=checking)
    return verdict


def _check_photo_privacy(input_dir: Path, output_dir: Path, device: str, bound: float, keep: bool):
    """dlib's verdict on every face of a photo-mode output, written to face_privacy.csv and params.json; its table
    (None: no face). `keep`: each photo's verdicts are kept beside its faces found (the detection cache), and a
    photo whose files and faces are unchanged is not measured again."""
    from anon_core.photo_detections import DETECTION_CACHE
    from evaluation.photo_privacy import face_privacy, record_privacy_check, write_face_privacy
    from evaluation.recognizers import build_recognizer

    record_privacy_check(output_dir)  # "pending": a run stopped during the check does not look checked
    privacy = face_privacy(input_dir, output_dir, build_recognizer("dlib", device=device),
                           kept=output_dir / DETECTION_CACHE if keep else None)
    write_face_privacy(privacy, output_dir)
    record_privacy_check(output_dir, privacy, bound)
    if not len(privacy):
        print("privacy: no face was found, so none could be checked")
        return None
    earlier = privacy.attrs.get("photos_checked_earlier", 0)
    _print_privacy(privacy, "faces", f"; {earlier} photo(s) not measured again: their input, output and faces are "
                   "those of their last check" if earlier else "")
    return privacy


def _add_sample_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample-data", help="write the small sample face dataset (faces shipped in scikit-image)")
    p.add_argument("output_dir", type=given_path, metavar="OUTPUT_DIR",
                   help="folder to write images/ and README.txt into")
    p.add_argument("--size", type=whole_number, default=128, help="side of the written images in pixels")
    p.add_argument("--photos", type=given_path, default=None, metavar="DIR",
                   help="also write photos for photo mode into DIR: a group photo of 7 faces (one cut by the frame, "
                        "one too small to anonymize), a portrait, a photo without a face")
    p.set_defaults(run=_run_sample_data)


def _run_sample_data(args: argparse.Namespace) -> int:
    from anon_core.data.sample import (build_sample_dataset, build_sample_photos, check_dataset_folder,
                                       check_photos_folder)
    from anon_core.folders import check_separate

    if args.photos is not None:  # both folders checked before either is written
        check_separate(sample_folder=args.output_dir, photos_folder=args.photos)
        check_dataset_folder(args.output_dir)
        check_photos_folder(args.photos)
    paths = build_sample_dataset(args.output_dir, size=args.size)
    print(f"{len(paths)} sample images in {args.output_dir}")
    if args.photos is not None:
        photos = build_sample_photos(args.photos)
        print(f"{len(photos)} sample photos in {args.photos}")
    return 0


def parse_command(argv: list[str] | None = None) -> argparse.Namespace:
    """`build_parser().parse_args`, except that an unknown flag is reported by the sub-command it was given to (its
    usage line and `falco anonymize: error: unrecognized arguments: --stesp 2`), not by the top-level parser, whose
    usage lists only the sub-commands."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        innermost = parser
        while True:  # down the sub-commands given: `runs compare --x` is compare's
            choices = next((a for a in innermost._actions if isinstance(a, argparse._SubParsersAction)), None)
            chosen = getattr(args, choices.dest, None) if choices is not None else None
            if chosen not in (choices.choices if choices is not None else {}):
                break
            innermost = choices.choices[chosen]
        innermost.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="falco", description="FALCO-Ops: attribute-preserving face anonymization")
    sub = parser.add_subparsers(dest="command", required=True)
    from orchestration.cli_cluster import register as _add_cluster
    from orchestration.cli_evaluate import register as _add_evaluate
    from orchestration.cli_models import register as _add_models
    from orchestration.cli_pipeline import register as _add_pipeline
    from orchestration.cli_runs import register as _add_runs

    for add in (_add_anonymize, _add_evaluate, _add_pipeline, _add_sample_data, _add_models, _add_runs, _add_cluster):
        add(sub)
    return parser


@contextmanager
def stop_signals() -> Iterator[Callable[[], str]]:
    """SIGTERM (`kill`, `timeout`, a container's stop) stops a command as Ctrl-C does, so what was finished is kept and
    it ends with one line; the block gets a function naming which of the two stopped it. Python writes each handled
    signal's number to the wakeup file whatever handler runs, which tells them apart even while Dagster runs a job
    (it hands SIGTERM to its Ctrl-C handler, and afterwards SIGINT's handler to SIGTERM: one handler serves both, so
    SIGTERM still stops a shell script's background job, which starts with SIGINT ignored). Only in the main thread;
    the handlers are put back on leaving.

    A handler's exception raised while Python runs a garbage-collection or weakref callback (SQLAlchemy's, in any
    MLflow call) is printed as "Exception ignored" and dropped, and the command would run on to its end. Such a
    dropped interrupt is sent again from another thread, so it lands once the callback is over."""
    import threading

    if sys.platform == "win32" or threading.current_thread() is not threading.main_thread():
        yield lambda: "Ctrl-C"
        return
    ignore_ctrl_c = signal.getsignal(signal.SIGINT) == signal.SIG_IGN

    def stop(signum: int, frame) -> None:
        if not (signum == signal.SIGINT and ignore_ctrl_c):
            raise KeyboardInterrupt

    read, write = os.pipe()
    for fd in (read, write):
        os.set_blocking(fd, False)
    received: list[int] = []

    def drain() -> list[int]:
        try:
            received.extend(os.read(read, 4096))
        except BlockingIOError:
            pass
        return received

    def send_dropped_interrupt_again(unraisable) -> None:
        if not _is_interrupt(unraisable.exc_value):
            return previous_hook(unraisable)
        import _thread  # not threading: its start() waits for the thread, and the signal would land in this hook

        _thread.start_new_thread(os.kill, (os.getpid(), (drain() or [signal.SIGINT])[-1]))

    previous_hook, sys.unraisablehook = sys.unraisablehook, send_dropped_interrupt_again
    quiet = _NoInterruptTracebacks()
    handlers = [logging.lastResort, *logging.getLogger().handlers]
    for handler in handlers:
        if handler is not None:
            handler.addFilter(quiet)
    previous_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        # A background job's SIGINT is ignored here (Python still writes its number to the wakeup file), but Dagster
        # puts a handler of its own on SIGINT while it runs a job, whatever was there, and so do its step processes:
        # a run that Dagster stopped on it is a stop, not a failure (exit 1, the MLflow run FAILED), so it counts.
        with stop_request.watching(lambda: any(sig in (signal.SIGTERM, signal.SIGINT) for sig in drain())):
            yield lambda: "SIGTERM" if signal.SIGTERM in drain() else "Ctrl-C"
    finally:
        for handler in handlers:
            if handler is not None:
                handler.removeFilter(quiet)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(previous_fd)
        sys.unraisablehook = previous_hook
        os.close(read)
        os.close(write)


class _NoInterruptTracebacks(logging.Filter):
    """Drops a library's log record of a stop signal's exception: SQLAlchemy logs the one it meets while closing a
    connection ("Exception closing connection", with its traceback) and raises it again; the stop is falco's one
    line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and _is_interrupt(record.exc_info[1]))


def _is_interrupt(error: BaseException | None) -> bool:
    """Whether `error` is what a stop signal's handler raises: ours, or Dagster's while it runs a job."""
    dagster_errors = sys.modules.get("dagster._core.errors")
    return isinstance(error, (KeyboardInterrupt, getattr(dagster_errors, "DagsterExecutionInterruptedError",
                                                           KeyboardInterrupt)))


_FILE_ERROR_FIXES = {
    errno.EACCES: "check that you may write there (permissions, a read-only or immutable file)",
    errno.EPERM: "check that you may write there (permissions, a read-only or immutable file)",
    errno.ENOSPC: "free some space there, or write elsewhere",
    errno.EDQUOT: "free some space there (disk quota), or write elsewhere",
    errno.EROFS: "the file system is read-only: write elsewhere",
}


def file_error(err: OSError) -> str:
    """One line for an OSError: what failed, on which file (a rename names where it was going), and the fix where
    the cause says it; what was finished is kept, so the same command resumes once it is fixed."""
    where = err.filename2 or err.filename
    text = f"{err.strerror or err}" + (f": {where}" if where else "")
    fix = _FILE_ERROR_FIXES.get(err.errno)
    return text + (f"; {fix}, then run the same command again" if fix else "")


# the sub-commands that keep what they finished and go on from there when run again (journal, Dagster's assets,
# a download's .part file); the others start over
RESUMING_COMMANDS = frozenset({"anonymize", "pipeline", "stage", "models"})


def main(argv: list[str] | None = None) -> int:
    """Run one `falco` command (`argv`, default: the process's own arguments); its exit code."""
    from anon_core.errors import FalcoError
    from anon_core.progress import close_bars, log_every_s

    args = None
    with stop_signals() as stopped_by:
        try:
            started = time.perf_counter()  # the sub-commands import what they use: torch, the networks, dlib
            args = parse_command(argv)
            args.started, args.whole_process = started, argv is None  # the process is this command: its times
            # count from the process's start
            log_every_s()  # a bad $FALCO_PROGRESS_EVERY_S: one line now, not a failed step later
            return args.run(args)
        except FalcoError as err:
            close_bars()
            print(f"falco: error: {err}", file=sys.stderr)
            return 2
        except OSError as err:  # a file that could not be read or written: the disk, permissions, not falco's code
            close_bars()
            print(f"falco: error: {file_error(err)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM, in any sub-command: what was finished is kept (runs resume)
            close_bars()  # the line goes where they were, not over them
            which = stopped_by()
            command = getattr(args, "command", None)
            again = "to resume where it stopped" if command in RESUMING_COMMANDS else \
                "to evaluate again (it leaves nothing half-written; what it finished reading is not read again)" \
                if command == "evaluate" else "to start it over (it leaves nothing half-written)"
            same = "`dvc repro` again" if os.environ.get("DVC_STAGE") else "the same command again"  # a DVC stage
            print(f"falco: stopped ({which}); run {same} {again}", file=sys.stderr)
            return 128 + (signal.SIGTERM if which == "SIGTERM" else signal.SIGINT)


def run() -> NoReturn:
    """The `falco` command. Stopped by Ctrl-C or SIGTERM, it ends as killed by that signal once cleaned up (its exit
    handlers have run: MLflow's, logging's), as a program that does not catch the signal would; shells report 130
    and 143. bash stops a script only when its child died of SIGINT, so a sweep script's loop of `falco` commands
    stops on Ctrl-C instead of going on to its next command, and a service manager reads SIGTERM's end as a stop.
    Not by Python's own way for Ctrl-C (an uncaught KeyboardInterrupt): the exit status that gives depends on a flag
    that every exec() or eval() of a string (a dataclass being made) sets or clears, at exit too. A signal that
    comes once the command's work is done (after its own handlers are put back) ends it the same way, without a
    traceback."""
    late: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) != signal.SIG_IGN:  # a background job's ignored Ctrl-C stays ignored
            signal.signal(sig, lambda signum, frame: late.append(signum))
    code = main()
    signum = {128 + signal.SIGINT: signal.SIGINT, 128 + signal.SIGTERM: signal.SIGTERM}.get(code)
    signum = signum or (late[0] if late else None)
    if signum is not None:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    sys.exit(code)


if __name__ == "__main__":
    run()
