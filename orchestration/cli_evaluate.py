"""`falco evaluate REAL_DIR ANON_DIR [ANON_DIR ...] --out REPORT_DIR`: the evaluation suite of the Dagster assets
(privacy per recognizer, attribute agreement, FID/KID or the named fallback, the baselines once) over the output
folders of one or more `falco anonymize` runs, written as one report. Outputs of photo mode are measured face by
face instead (evaluation.photo_privacy: dlib at each input face's landmarks, the blocking check's bound).

Each ANON_DIR's manifest.csv maps its anonymized images to their sources: the `input` paths under REAL_DIR. The
real gallery is every image of REAL_DIR read as the runs read it (the alignment recorded in their params.json,
through the same `read_input` and alignment cache), so a face is compared with exactly what was anonymized.
Several runs get one summary row each, labelled by the parameters in which their params.json differ
(`evaluation.runs`), and one privacy-vs-utility scatter.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from anon_core.errors import FalcoError
from orchestration.cli_types import given_path, name_list, refuse_flags

if TYPE_CHECKING:  # imported where used: `falco --help` and the other sub-commands do not load numpy, pandas or PIL
    import numpy as np
    import pandas as pd

    from anon_core.data.image_files import ImageFiles
    from anon_core.progress import Progress

MANIFEST_NEEDS = ("input", "output", "status", "fake_index")
OUTPUTS_FOLDER = ".evaluation_outputs"  # in REPORT_DIR: what the networks made of each image, by its key, so that a
# later evaluation into the same folder reads only the images it has not read (evaluation.output_store)
RUN_FILES = "images/, manifest.csv, params.json"
EXAMPLES = 8  # rows of the example grid


@dataclass
class AnonymizeRun:
    """The output folder of one `falco anonymize` run: its params.json and the ok rows of its manifest."""

    folder: Path
    record: dict  # params.json
    ok: pd.DataFrame  # manifest rows with status ok, as strings
    manifest: pd.DataFrame | None = None  # every manifest row, as strings (the inputs' sha256, when recorded)

    @property
    def resolution(self) -> int:
        return int(self.record["resolution"])

    @property
    def alignment(self) -> str | None:
        """The aligner's settings string, or None when the run fed images as they are."""
        return self.record.get("alignment") if self.record.get("aligned") else None

    @property
    def profile(self) -> str:
        return self.record["params"]["profile"]

    def params(self) -> dict[str, str]:
        """Flat parameters that can tell runs apart: the method's, plus alignment, device and weights."""
        from orchestration.tracking import flatten

        extra = {k: self.record.get(k) for k in ("aligned", "alignment", "device", "profile_weights")}
        return flatten({**self.record["params"], **extra})


def _not_a_run(folder: Path, what: str) -> FalcoError:
    from anon_core.folders import pipeline_storage_of

    storage = pipeline_storage_of(folder)
    if storage is not None:  # `falco anonymize` refuses to write there: the pipeline evaluates its own variants
        return FalcoError(f"{folder}: {what}: it is in the storage of a `falco pipeline` ({storage}), whose variants "
                          f"the pipeline evaluates itself: see {storage / 'anonymization_report' / 'report.md'} and "
                          "`falco runs compare`; `falco evaluate` takes output folders of `falco anonymize`")
    return FalcoError(f"{folder}: {what}, so it is not the output folder of `falco anonymize`; pass that folder "
                      f"(it holds {RUN_FILES}), or make one with `falco anonymize REAL_DIR {folder}`")


def read_run(folder: Path) -> AnonymizeRun:
    """Read and check one ANON_DIR: manifest.csv and params.json present and readable, every ok row's image there."""
    import pandas as pd

    from anon_core.folders import check_finished, missing_outputs

    folder = Path(folder)
    if not folder.is_dir():
        raise FalcoError(f"{folder} does not exist or is not a folder; pass the OUTPUT_DIR of a `falco anonymize` run")
    if not (folder / "manifest.csv").is_file():
        raise _not_a_run(folder, "no manifest.csv")
    try:
        manifest = pd.read_csv(folder / "manifest.csv", dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as err:
        raise _not_a_run(folder, f"manifest.csv cannot be read ({err})") from err
    missing = [c for c in MANIFEST_NEEDS if c not in manifest.columns]
    if missing:
        raise _not_a_run(folder, f"manifest.csv lacks the column(s) {', '.join(missing)}")
    check_finished(folder, manifest)  # a stopped run: before params.json, which its first run writes at the end
    if not (folder / "params.json").is_file():
        raise _not_a_run(folder, "no params.json")
    try:
        record = json.loads((folder / "params.json").read_text())
    except ValueError as err:
        raise _not_a_run(folder, f"params.json is not JSON ({err})") from err
    if not isinstance(record, dict) or not isinstance(record.get("params"), dict) or \
            "profile" not in record["params"] or type(record.get("resolution")) is not int:
        raise _not_a_run(folder, "params.json records no profile and resolution (in pixels)")
    ok = manifest[manifest["status"] == "ok"].reset_index(drop=True)
    if ok.empty:
        raise FalcoError(f"{folder}: manifest.csv has no `ok` row (every input was rejected); nothing to evaluate")
    absent = missing_outputs(folder, ok["output"])
    if absent:
        raise FalcoError(f"{folder}: {len(absent)} image(s) the manifest lists are missing, e.g. images/{absent[0]}; "
                         "re-run `falco anonymize` into this folder to write them again")
    return AnonymizeRun(folder, record, ok, manifest)


def check_comparable(runs: list[AnonymizeRun], profile: str | None) -> str:
    """The runs' common profile; raises FalcoError when runs differ in profile, resolution or alignment."""
    first = runs[0]
    for run in runs[1:]:
        for what, mine, theirs in (("profile", run.profile, first.profile),
                                   ("resolution", run.resolution, first.resolution),
                                   ("alignment", run.alignment, first.alignment),
                                   ("dataset", run.record.get("dataset"), first.record.get("dataset"))):
            if mine != theirs:
                unaligned = "no alignment (--no-align)"  # what a run made with --no-align records: None
                said = unaligned if what == "alignment" and mine is None else f"{what} {mine!r}"
                other = unaligned if what == "alignment" and theirs is None else \
                    f"{what} {theirs!r}" if said == unaligned else repr(theirs)
                raise FalcoError(f"{run.folder} was made with {said} but {first.folder} with {other}; "
                                 "their faces are not the same real images: evaluate them in separate reports")
    if profile is not None and profile != first.profile:
        raise FalcoError(f"--profile {profile} does not match profile {first.profile!r} of {first.folder} "
                         "(its params.json); leave --profile out or pass the run's profile")
    return first.profile


@dataclass
class RealGallery:
    relpaths: list[str]  # one per image, relative to the dataset's image folder (the manifests' `input`)
    identity: np.ndarray | None  # identity label per image (LFW: the person); None: unlabelled
    images: ImageFiles  # uint8 [N, R, R, 3] as the runs saw them, read from disk when indexed

    def rows(self, run: AnonymizeRun) -> np.ndarray:
        """Gallery row of each ok manifest row's source; FalcoError for a source that is not in the gallery."""
        import numpy as np

        index = {p: i for i, p in enumerate(self.relpaths)}
        unknown = [p for p in run.ok["input"] if p not in index]
        if unknown:
            raise FalcoError(
                f"{run.folder}: its manifest's input {unknown[0]!r} ({len(unknown)} in all) is not a readable image "
                f"under the real folder; pass as REAL_DIR the folder this run anonymized (its params.json says "
                f"{run.record.get('input_dir', '?')})")
        return np.array([index[p] for p in run.ok["input"]], dtype=np.int64)


def recorded_labels(runs: list[AnonymizeRun]) -> Path | None:
    """The labels CSV the runs were anonymized with (their params.json), which gives the gallery its identities; None
    for runs that had none. Stops where the runs differ (by the CSV's content, or its path for runs that recorded no
    hash), where the file is gone, or where it changed since: one gallery measures every run by one set of
    identities, the ones the pairing used."""
    from anon_core.errors import FalcoError
    from anon_core.hashing import sha256_file

    used = {r.folder: (r.record.get("labels_csv"), r.record.get("labels_sha256")) for r in runs}
    if len({sha or path for path, sha in used.values()}) > 1:
        listed = "; ".join(f"{folder}: {path or 'no labels CSV'}" for folder, (path, _) in used.items())
        raise FalcoError(f"the runs were anonymized with different labels ({listed}); pass --labels CSV to measure "
                         "them all by one set of identities, or evaluate them apart")
    (folder, (path, sha)), = list(used.items())[:1]
    if path is None:
        return None
    if not Path(path).is_file():
        raise FalcoError(f"{folder} was anonymized with the labels {path}, which is gone; pass --labels CSV (its "
                         "identities give the pseudonym figures and the gallery's identities)")
    if sha is not None and sha256_file(path) != sha:
        raise FalcoError(f"{folder} was anonymized with the labels {path}, which has changed since; pass --labels "
                         "CSV to measure by the file as it is now, or restore the one the run used")
    return Path(path)


def read_gallery(real_dir: Path, run: AnonymizeRun, dataset: str, labels_csv: Path | None, device,
                 cache_dir: Path, table: pd.DataFrame | None = None) -> RealGallery:
    """Every readable image of `real_dir`, read as `run` read its inputs (`anon_core.ingest` with the same aligner
    and resize, crops cached in `cache_dir`). Each file is read once to validate (and align into the cache), then
    left on disk: the gallery's images are the input files, or their aligned crops in the cache. `table`: the
    folder's `load_dataset` table where it was read already (its files hashed)."""
    from anon_core.data.align import FaceAligner
    from anon_core.ingest import ingest, io_workers
    from evaluation.privacy import labelled_or_own

    detector = None
    if run.alignment:
        try:
            detector = FaceAligner.from_settings(run.alignment).detector
        except ValueError as err:
            raise FalcoError(f"{run.folder}: {err}; re-run `falco anonymize` with this version") from err
    ingested = ingest(Path(real_dir), run.resolution, dataset, labels_csv, align=detector is not None,
                      align_detector=detector or "mtcnn", cache_dir=cache_dir, device=device, table=table)
    if ingested.alignment != run.alignment:
        raise FalcoError(f"{run.folder}: the run aligned its faces as {run.alignment}, this version aligns as "
                         f"{ingested.alignment}; re-run `falco anonymize` with this version")
    ok = ingested.ok  # a run that used a file rejected here: RealGallery.rows() names it
    relpaths = ok["input"].tolist()
    identity = labelled_or_own(ok["identity"] if "identity" in ok.columns else None, relpaths)
    return RealGallery(relpaths, identity, ingested.images(workers=max(io_workers(device), 4)))


@contextlib.contextmanager
def _gallery_cache(run: AnonymizeRun, out_dir: Path) -> Iterator[Path]:
    """The aligned crops of the real faces: the first run's own cache when it kept one (nothing is aligned twice),
    else a temporary cache inside the report folder, removed at the end."""
    from anon_core.ingest import CACHE_FOLDER, alignment_cache

    if (run.folder / CACHE_FOLDER).is_dir():
        yield run.folder / CACHE_FOLDER
        return
    with alignment_cache(out_dir, keep=False) as cache:
        yield cache


def read_anonymized(run: AnonymizeRun) -> ImageFiles:
    """The run's ok images, uint8 [N, R, R, 3], left on disk; FalcoError for one whose size (read from its
    header) is not the run's resolution."""
    from PIL import Image

    from anon_core.data.image_files import ImageFiles

    paths = [run.folder / "images" / name for name in run.ok["output"]]
    for path in paths:
        try:
            with Image.open(path) as image:
                size = image.size
        except OSError as err:
            raise FalcoError(f"{path}: not a readable image ({err}); re-run `falco anonymize` into this folder to "
                             "write it again") from None
        if size != (run.resolution, run.resolution):
            raise FalcoError(
                f"{run.folder}: images/{path.relative_to(run.folder / 'images')} is {size[0]}x{size[1]} px but "
                f"params.json says the run made {run.resolution} px images; the folder mixes outputs of different "
                "runs: re-run `falco anonymize` into an empty folder")
    return ImageFiles(paths, run.resolution, when_changed=f"re-run `falco anonymize` into {run.folder} (it writes "
                      "damaged images again), then evaluate")


def _differing_settings(runs: list[AnonymizeRun], labels: list[str]) -> pd.DataFrame:
    """One row per run (its label): the parameters in which the runs' params.json differ."""
    import pandas as pd

    frame = pd.DataFrame([r.params() for r in runs], index=pd.Index(labels, name="run"))
    return frame.loc[:, frame.astype(str).nunique() > 1]


def paired_fakes(run: AnonymizeRun, nets) -> tuple:
    """The fake neighbour of each ok row, regenerated from the run's pool seed when indexed: [N, R, R, 3] uint8; and
    each one's key for the output store (its code's bytes under the generator's parameters)."""
    from anon_core.fake_pool import sample_fake_pool
    from anon_core.reuse import row_keys
    from evaluation.image_sets import generated_images
    from evaluation.output_store import parameters_digest

    p = run.record["params"]
    index = run.ok["fake_index"].astype(int).to_numpy()
    pool = sample_fake_pool(nets.generator, int(index.max()) + 1, p["seed"], p["truncation_psi"], device=nets.device)
    keys = row_keys({"fake": "generated", "generator": parameters_digest(nets.generator)}, [pool.w[i] for i in index])
    return generated_images(nets.generator, pool.w, index, device=nets.device), keys.tolist()


def _content_keys(images: ImageFiles) -> list[str]:
    """Each anonymized file's key for the output store: the sha256 of its bytes and the size it is read at (the same
    image in two run folders is read once)."""
    from concurrent.futures import ThreadPoolExecutor

    from anon_core.hashing import sha256_file

    with ThreadPoolExecutor(max(1, images.workers)) as pool:
        return [f"{sha}:{images.size}" for sha in pool.map(sha256_file, images.paths)]


def _gallery_keys(gallery: RealGallery, run: AnonymizeRun, dataset: str, hashes: dict[str, str | None]
                  ) -> list[str | None]:
    """Each real image's key for the output store: its file's sha256 and how the runs read it (None: not hashed)."""
    from anon_core.reuse import row_keys

    shas = [hashes.get(path) for path in gallery.relpaths]
    known = [i for i, sha in enumerate(shas) if sha]
    keys: list[str | None] = [None] * len(shas)
    made = row_keys({"gallery": 1, "alignment": run.alignment, "resolution": run.resolution, "dataset": dataset},
                    [shas[i] for i in known]) if known else []
    for i, key in zip(known, made):
        keys[i] = str(key)
    return keys


def evaluate_folders(
    real_dir: Path,
    anon_dirs: list[Path],
    out_dir: Path,
    baselines: bool = True,
    recognizers: list[str] | None = None,
    profile: str | None = None,
    device: str = "cpu",
    dataset: str = "auto",
    labels_csv: Path | None = None,
    show_real_faces: bool = False,
    log=print,
    show_progress: Progress = False,
) -> dict[str, Path]:
    """Evaluate the runs in `anon_dirs` against `real_dir` and write the report to `out_dir`; returns its paths.
    `show_progress`: a bar per image set read."""
    import numpy as np
    import pandas as pd

    from anon_core.profiles import build_networks
    from anon_core.stages import resolve_device
    from evaluation.baselines import BASELINES, baseline_keys, made_from_real
    from evaluation.output_store import OutputStore
    from evaluation.quality import build_extractor
    from evaluation.recognizers import available_recognizers, build_recognizer
    from evaluation.privacy import rivals
    from evaluation.report import (example_columns, gallery_banners, labels_note, pseudonym_banners, seeded_banners,
                                   write_report)
    from evaluation.runs import run_labels
    from anon_core.data.datasets import load_dataset
    from evaluation.sources import check_real_folder, file_hashes
    from evaluation.suite import (
        AnonymizedSet,
        build_attribute_predictors,
        evaluate_runs,
        summary_table,
    )

    from anon_core.folders import check_separate, exclusive

    runs = [read_run(Path(d)) for d in anon_dirs]  # first: a folder that is not a run is named as such
    numbered = len(anon_dirs) > 1  # "the anonymized folder 2", but no "1" when there is one
    check_separate(real_folder=real_dir, report_folder=out_dir,
                   **{f"anonymized_folder{f'_{i + 1}' if numbered else ''}": d for i, d in enumerate(anon_dirs)})
    profile = check_comparable(runs, profile)
    labels = run_labels([r.params() for r in runs], [r.folder.name for r in runs])
    labels = [f"falco {label}" if label in BASELINES else label for label in labels]
    anonymized = [read_anonymized(r) for r in runs]
    recorded = runs[0].record.get("dataset")  # every run's (check_comparable)
    if dataset == "auto":
        dataset = recorded or "auto"
    elif recorded is not None and dataset != recorded:  # its manifest names the files as that layout reads them
        raise FalcoError(f"--dataset {dataset}, but {runs[0].folder} was anonymized as dataset {recorded!r} (its "
                         f"params.json), whose file names its manifest holds; leave --dataset out")
    if labels_csv is None:  # the identities the runs were paired by, and measured by
        labels_csv = recorded_labels(runs)
        if labels_csv is not None:
            log(f"labels: {labels_csv} (the one the run was anonymized with; --labels picks another)")
    real_files = load_dataset(dataset, Path(real_dir), labels_csv)  # every file hashed, once
    current = file_hashes(real_files)  # REAL_DIR is what each run read, or stop
    for run in runs:
        check_real_folder(Path(real_dir), run.folder, run.record, run.ok if run.manifest is None else run.manifest,
                          run.ok["input"], current)
    device = str(resolve_device(device))
    with exclusive(Path(out_dir), "report folder"), _gallery_cache(runs[0], Path(out_dir)) as cache:
        gallery = read_gallery(Path(real_dir), runs[0], dataset, labels_csv, device, cache, real_files)
        sets = [AnonymizedSet(label, images, gallery.rows(run), run.ok["output"].tolist(), _content_keys(images))
                for label, images, run in zip(labels, anonymized, runs)]

        nets = build_networks(profile, device=device)
        fakes, fake_keys = paired_fakes(runs[0], nets)
        names = recognizers or available_recognizers()
        built = [build_recognizer(n, device=device) for n in names]
        extractor = build_extractor("auto", device=device)
        predictors = build_attribute_predictors(seeded=nets.weights == "seeded", device=device)
        chosen = tuple(BASELINES) if baselines else ()
        log(f"evaluating {', '.join(f'{s.method} ({len(s.images)} images)' for s in sets)} against {len(gallery.images)} "
            f"real images with {', '.join(names)}" + (f"; baselines {', '.join(chosen)}" if chosen else ""))
        stored = Path(out_dir) / OUTPUTS_FOLDER
        real_keys = _gallery_keys(gallery, runs[0], dataset, current)
        real_store, anonymized_store = OutputStore(stored / "real", private=True), OutputStore(stored)
        real, real_read = real_store.read(gallery.images, real_keys, built, extractor, predictors=predictors,
                                          ids=gallery.relpaths, device=device, show_progress=show_progress,
                                          desc="read the real images")
        forgotten = real_store.keep_only_real(real_keys)  # a face no longer in REAL_DIR leaves no embedding behind
        anonymized_store.forget(made_from_real)  # private: kept in real_store (earlier versions kept them here)
        sources = [real_keys[i] for i in sets[0].source_index]
        results = evaluate_runs(
            sets, gallery.images, built, extractor, baselines=chosen, fakes=fakes,
            gallery_identity=gallery.identity, predictors=predictors, device=device, real_outputs=real,
            real_labels=real.labels, store=anonymized_store, real_store=real_store, show_progress=show_progress,
            baseline_keys={
                name: baseline_keys(name, gallery.images.size, fake_keys if BASELINES[name].needs_fakes else sources)
                for name in chosen})
        kept = real_read < len(gallery.images) or any(r.images_read < len(r.per_image) for r in results)
        log(f"images read: real: {real_read} of {len(gallery.images)}; " + "; ".join(  # labels may hold commas
            f"{r.method}: {r.images_read} of {len(r.per_image)}" for r in results) +
            (f" (the others' outputs were kept in {stored}, by an earlier evaluation or for the same image read "
             "earlier in this one)" if kept else ""))
        if forgotten:
            log(f"removed from {stored / 'real'}: {forgotten} kept output(s) of faces no longer in {real_dir} (their "
                "embeddings, features and labels, and their blurred, pixelated and masked images')")
        falco = results[: len(sets)]
        per_image = pd.concat([r.per_image.assign(run=r.method) for r in falco], ignore_index=True)
        per_image.insert(0, "run", per_image.pop("run"))
        per_image.insert(2, "input", [gallery.relpaths[i] for i in per_image["source_index"]])
        attributes = None
        if all(r.attributes is not None for r in falco):  # the runs' and the baselines' bars side by side
            attributes = pd.concat([r.attributes.assign(run=r.method) for r in results if r.attributes is not None],
                                   ignore_index=True)

        sources, columns = example_columns(sets, EXAMPLES)
        neighbours = np.asarray(fakes[: len(sources)])
        examples, titles = [neighbours, *columns], ["Fake NN", *(s.method for s in sets)]
        caption = "Real faces, and the baselines made from them, are shown only with --show-real-faces."
        if show_real_faces:
            from evaluation.baselines import apply_baseline

            real = gallery.images[sources]
            examples = [real, *examples, *(apply_baseline(n, real, fakes=neighbours) for n in chosen)]
            titles, caption = ["Real", *titles, *chosen], ""
        context = {
            "profile": profile,
            "real images": f"{real_dir} ({len(gallery.images)} in the gallery)",
            **{f"run {s.method}": f"{r.folder} ({len(s.images)} image{'' if len(s.images) == 1 else 's'})" for s, r in zip(sets, runs)},
            **({"labels": labels_note(labels_csv)} if labels_csv is not None else {}),
            "recognizers": ", ".join(names),
            "feature extractor": str(falco[0].quality.get("feature_extractor")),
            "baselines": f"{', '.join(chosen)} (applied to the sources of run {sets[0].method})" if chosen else "none",
        }
        summary = summary_table(results)
        banners = [*_release_banners(runs, labels, summary),
                   *gallery_banners(rivals(gallery.identity, len(gallery.images))),
                   *pseudonym_banners(None if gallery.identity is None else gallery.identity[sets[0].source_index]),
                   *seeded_banners(nets.weights == "seeded", list(summary.columns), runs[0].resolution)]
        return write_report(Path(out_dir), summary, per_image, attributes, examples, titles, context,
                            settings=_differing_settings(runs, labels), banners=banners, example_caption=caption)


def _release_banners(runs: list[AnonymizeRun], labels: list[str], summary: pd.DataFrame) -> list[str]:
    """The pipeline report's warning for each run whose images dlib still matches to their source more often than
    the bound it was anonymized under (its params.json's privacy check; else the project's params.yaml's)."""
    from anon_core.params import DEFAULT_PARAMS_PATH, load_section, privacy_bound
    from evaluation.photo_privacy import PRIVACY_CHECK
    from evaluation.report import RELEASE_CHECK, release_banner

    if RELEASE_CHECK not in summary.columns:  # dlib not among the recognizers
        return []
    banners = []
    for run, label in zip(runs, labels):
        check = run.record.get(PRIVACY_CHECK)
        try:
            bound = check["bound"] if isinstance(check, dict) and "bound" in check else \
                privacy_bound(load_section("checks", run.profile, None), DEFAULT_PARAMS_PATH)
        except FalcoError:  # a profile of another params file, run by a falco that did not record its bound
            continue
        banners += release_banner(label, float(summary.loc[label, RELEASE_CHECK]), None, bound)  # no shards here
    return banners


def _run_evaluate(args: argparse.Namespace) -> int:
    from anon_core.folders import reading

    with contextlib.ExitStack() as held:  # no `falco anonymize` rewrites a run while it is evaluated
        for folder in args.anon_dirs:
            held.enter_context(reading(folder, "anonymized folder"))
        return _evaluate(args)


def _evaluate(args: argparse.Namespace) -> int:
    from evaluation.report_folder import ALIGNED_REPORT_TITLE, PHOTO_REPORT_TITLE, check_report_folder

    for folder in args.anon_dirs:  # a typo is named as such, not taken for a run of the other mode
        if not (Path(folder) / "params.json").is_file():
            read_run(Path(folder))  # says what the folder lacks
    modes = {_run_mode(folder) for folder in args.anon_dirs}
    _warn_unchecked(args.anon_dirs)
    check_report_folder(args.out, PHOTO_REPORT_TITLE if modes == {"photo"} else ALIGNED_REPORT_TITLE)
    if modes == {"photo"}:
        refuse_flags([flag for flag, given in (("--recognizers", args.recognizers is not None),
                                               ("--dataset", args.dataset != "auto"),
                                               ("--labels", args.labels is not None),
                                               ("--show-real-faces", args.show_real_faces)) if given],
                     "for aligned runs only; a photo-mode run is measured face by face with dlib (drop them)")
        return _evaluate_photo_runs(args)
    if len(modes) > 1:
        raise FalcoError("some of the ANON_DIRs come from photo mode and some from aligned mode; evaluate them in "
                         "separate `falco evaluate` calls (photo mode is measured face by face)")
    refuse_flags(["--params"] if args.params is not None else [], "read for photo-mode runs only (the privacy bound "
                 "their faces are held to); an aligned run is evaluated with the settings its params.json records: "
                 "drop --params")
    paths = evaluate_folders(
        args.real_dir, args.anon_dirs, args.out, baselines=args.baselines,
        recognizers=args.recognizers,
        profile=args.profile, device=args.device, dataset=args.dataset, labels_csv=args.labels,
        show_real_faces=args.show_real_faces, log=(lambda *_: None) if args.quiet else print,
        show_progress=not args.quiet,
    )
    print(f"report: {paths['markdown']}  (report.html, metrics.csv, per_image.parquet, figures/ beside it)")
    return 0


def _warn_unchecked(folders: list[Path]) -> None:
    """A warning per run whose own privacy check was stopped: its folder looks finished, but nothing checked it."""
    from evaluation.photo_privacy import PRIVACY_CHECK, unfinished_privacy_check

    for folder in folders:
        try:
            record = json.loads((Path(folder) / "params.json").read_text())
        except (OSError, ValueError):
            continue  # read_run says what is wrong with it
        if isinstance(record, dict) and unfinished_privacy_check(record):
            print(f"falco: warning: {folder}: its run's privacy check did not finish (params.json's {PRIVACY_CHECK} "
                  "is still pending): the run was stopped during it; this evaluation "
                  "measures privacy on its own, but before sharing the folder run the same `falco anonymize` command "
                  "again (it resumes, then checks)", file=sys.stderr)


def _run_mode(folder: Path) -> str:
    """"photo" for the output of `falco anonymize --mode photo`, else "aligned" (read_run checks the rest)."""
    try:
        return json.loads((Path(folder) / "params.json").read_text()).get("mode", "aligned")
    except (OSError, ValueError, AttributeError):
        return "aligned"


def _photo_run_bound(folder: Path, args: argparse.Namespace) -> tuple[float, str]:
    """(bound, where it comes from) a photo-mode run is held to: --params' checks.privacy_max_match_share when given,
    else the one the run was anonymized under (its params.json), else the project's params.yaml's."""
    from anon_core.params import DEFAULT_PARAMS_PATH, load_section, privacy_bound
    from evaluation.photo_privacy import PRIVACY_CHECK

    record = json.loads((folder / "params.json").read_text())
    profile = args.profile or record["params"]["profile"]
    check = record.get(PRIVACY_CHECK)
    if args.params is None and isinstance(check, dict) and isinstance(check.get("bound"), (int, float)):
        return float(check["bound"]), f"{folder / 'params.json'}"
    path = args.params or DEFAULT_PARAMS_PATH
    return privacy_bound(load_section("checks", profile, args.params), path), f"{path} checks.privacy_max_match_share"


def _evaluate_photo_runs(args: argparse.Namespace) -> int:
    """Photo-mode outputs: dlib's per-face check over every run (evaluation.photo_privacy); exit 1 when a run's
    matched share is above the bound it is held to (`_photo_run_bound`)."""
    import pandas as pd

    from evaluation.photo_privacy import evaluate_photo_runs

    bounds = [_photo_run_bound(Path(folder), args) for folder in args.anon_dirs]
    paths = evaluate_photo_runs(args.real_dir, list(args.anon_dirs), args.out, bounds)
    metrics = pd.read_csv(paths["metrics"])
    for row, (bound, _) in zip(metrics.itertuples(), bounds):
        print(f"{row.run}: dlib matches {row.matched_faces} of {row.faces_measured} faces to their source "
              f"({row.matched_share:.1%}; bound {bound:g}); median distance {row.dlib_distance_median:.2f}")
    print(f"report: {paths['markdown']}  (metrics.csv, faces.csv beside it)")
    return 0 if metrics["passes_bound"].all() else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("evaluate", help="evaluate the outputs of `falco anonymize` runs and write a report")
    p.add_argument("real_dir", type=given_path, metavar="REAL_DIR", help="the folder the runs anonymized")
    p.add_argument("anon_dirs", type=given_path, nargs="+", metavar="ANON_DIR",
                   help="OUTPUT_DIR of one `falco anonymize` run; several for one row (and scatter point) each")
    p.add_argument("--out", type=given_path, required=True, metavar="REPORT_DIR", help="where the report goes")
    p.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=True,
                   help="also evaluate blur, pixelate, mask and swap on the first run's sources (default: on)")
    p.add_argument("--recognizers", type=name_list, default=None, metavar="NAMES",
                   help="comma-separated: dlib, facenet_vggface2, facenet_casia, arcface_irse50 (default: every "
                        "one whose weights are present)")
    p.add_argument("--profile", default=None, help="the runs' profile (default: read from their params.json)")
    p.add_argument("--params", type=given_path, default=None, metavar="FILE", help="params file whose "
                   "checks.privacy_max_match_share a photo-mode run is held to (default: the bound the run was "
                   "anonymized under, its params.json)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    p.add_argument("--dataset", choices=("auto", "celebahq", "lfw", "folder"), default="auto",
                   help="layout of REAL_DIR (default: the one the runs recorded)")
    p.add_argument("--labels", type=given_path, default=None, metavar="CSV",
                   help="labels CSV (identity column: which gallery images count as the same person)")
    p.add_argument("--show-real-faces", action="store_true",
                   help="put the real faces in the example grid (off: the report shows no real face)")
    p.add_argument("--quiet", action="store_true", help="print only the report's paths, no progress lines")
    p.set_defaults(run=_run_evaluate)
