"""The model store: where the weight files of ``anon_core.model_registry`` live, and how they are fetched and verified.

Reference implementation: the official FALCO download script (chi0tzp/FALCO, branch ``cvpr23``:
``download_models.py``, and the (URL, sha256) pairs of ``lib/config.py``), which downloads each tar, checks its
sha256 and unpacks it into ``models/pretrained/``. Here, in addition: resumable downloads (HTTP range requests,
RFC 9110 section 14), a registry of every weight file the project knows (the official bundle, the rosinality
StyleGAN2 format, the evaluation networks, the weights shipped inside PyPI packages), tar members checked before
anything is written (the whole archive is refused if one member is unsafe), and trust-on-first-use digests for
files whose sha256 was never published.

Layout of ``store_dir()`` (``$FALCO_MODELS`` or ``~/.cache/falco/models``): the FALCO tars unpack to
``genforce/``, ``e4e/``, ``farl/``, ``arcface/``, ``sfd/`` exactly as the official ``models/pretrained/`` (so
``FALCO_MODELS=<FALCO checkout>/models/pretrained`` works as is); single files sit at the top. Bookkeeping:

- ``<file>.part``: an interrupted download; the next fetch resumes it with a Range request.
- ``.sha256-tofu.json``: reference sha256 of files whose digest is not published, recorded on first fetch
  (trust on first use) or when the file was unpacked from an archive whose published sha256 matched.
- ``.verified.json``: the last successful check of each file (sha256, size, mtime), so ``list`` need not
  re-hash gigabytes; ``verify`` always re-hashes.

Nothing runs at import; the network is only touched by ``fetch``.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import http.client
import importlib.metadata
import importlib.util
import json
import os
import posixpath
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tqdm.auto import tqdm

from anon_core.atomic import atomic_path, write_bytes_atomic
from anon_core.errors import FalcoError, MissingWeightsError
from anon_core.model_registry import REGISTRY, Member, ModelEntry
from anon_core.hashing import sha256_file

__all__ = [
    "REGISTRY",
    "Member",
    "ModelEntry",
    "UnsafeArchiveError",
    "VerifyResult",
    "describe",
    "fetch",
    "file_state",
    "get_entry",
    "how_to_get",
    "model_path",
    "profile_weights",
    "require",
    "sha256_file",
    "store_dir",
    "verify",
]

STORE_ENV = "FALCO_MODELS"
TOFU_FILE = ".sha256-tofu.json"
VERIFIED_FILE = ".verified.json"
_CHUNK = 1 << 20
_TIMEOUT_S = 60.0  # per socket operation, not per download
_RETRY_DELAY_S = 2.0  # first back-off between attempts; doubles, capped at 30 s
_NO_INTERNET = "this machine may have no internet access (only package registries are reachable on some)"


class UnsafeArchiveError(FalcoError):
    """A tar whose members would write outside the store (absolute path, '..', outside links, devices)."""


# --------------------------------------------------------------------------------------------- lookup
def store_dir() -> Path:
    """``$FALCO_MODELS`` if set, else ``~/.cache/falco/models`` (not created here). FalcoError where that path is
    a file: every command would otherwise fail its own way (a traceback, a misleading "unreadable" bookkeeping
    file, or "0 mismatch")."""
    env = os.environ.get(STORE_ENV)
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "falco" / "models"
    if path.exists() and not path.is_dir():
        from anon_core.errors import FalcoError

        raise FalcoError(f"the model store {path} is a file, not a folder"
                         + (f" (${STORE_ENV}); point ${STORE_ENV} at a folder" if env else "; move that file away"))
    return path


def _resolve(name: str) -> tuple[ModelEntry, Member | None]:
    for entry in REGISTRY:
        if entry.name == name:
            return entry, None
        for member in entry.members:
            if member.name == name:
                return entry, member
    known = [e.name for e in REGISTRY] + [m.name for e in REGISTRY for m in e.members]
    raise FalcoError(f"unknown weight file {name!r}; known names: {', '.join(known)} (see `falco models list`)")


def get_entry(name: str) -> ModelEntry:
    """The registry row of ``name`` (an entry name, or the name of one of its archive members)."""
    return _resolve(name)[0]


def _package_file(entry: ModelEntry) -> tuple[Path, str | None]:
    """(path, sha256 pip recorded at install) of a file shipped in a distribution; found without importing it."""
    assert entry.package is not None
    dist_name, relpath, _ = entry.package
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        spec = importlib.util.find_spec(relpath.split("/")[0])  # a top-level find_spec does not run the package
        if spec is None or not spec.submodule_search_locations:
            return Path(f"<{dist_name} is not installed>") / relpath, None
        return Path(next(iter(spec.submodule_search_locations))).parent / relpath, None
    for record in dist.files or ():
        if record.as_posix() == relpath and record.hash is not None and record.hash.mode == "sha256":
            value = record.hash.value  # urlsafe base64 without padding (wheel RECORD format)
            return Path(dist.locate_file(record)), base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).hex()
    return Path(dist.locate_file(relpath)), None


def _files(entry: ModelEntry, member: Member | None = None) -> list[tuple[Member | None, str, Path]]:
    """(member, name, path) of every file ``entry`` installs (or of one member)."""
    store = store_dir()
    if member is not None:
        return [(member, member.name, store / member.path)]
    if entry.package is not None:
        return [(None, entry.name, _package_file(entry)[0])]
    if entry.members:
        return [(m, m.name, store / m.path) for m in entry.members]
    return [(None, entry.name, store / entry.filename)]


def model_path(name: str) -> Path:
    """Where the (unpacked) file lives, present or not. An archive entry's name gives its first member."""
    entry, member = _resolve(name)
    return _files(entry, member)[0][2]


def weight_profiles() -> list[str]:
    """The profiles (and uses such as "evaluation") that some weight file is listed for."""
    listed = {p for entry in REGISTRY for item in (entry, *entry.members) for p in item.profiles}
    return sorted(listed - {"all"})


def profile_weights(profile: str) -> tuple[str, ...]:
    """Names of the files a profile (or a use such as "evaluation") needs; entries marked "all" included."""
    names: list[str] = []
    for entry in REGISTRY:
        if entry.members:
            names += [m.name for m in entry.members if profile in m.profiles or "all" in m.profiles]
        elif profile in entry.profiles or "all" in entry.profiles:
            names.append(entry.name)
    return tuple(names)


def _how_to_get(entry: ModelEntry) -> str:
    if entry.package is not None:
        return entry.package[2]
    if entry.url is None:
        return (f"no direct download: get {entry.filename} from {entry.page}, copy it to "
                f"{store_dir() / entry.filename} and run `falco models fetch {entry.name}` (records its sha256), "
                f"or run `falco models fetch {entry.name} --url URL`")
    return f"falco models fetch {entry.name}"


def how_to_get(name: str) -> str:
    """The command (or the manual steps) that puts ``name`` in place."""
    return _how_to_get(get_entry(name))


def require(names: Iterable[str]) -> dict[str, Path]:
    """Paths of ``names``; if any is absent, one MissingWeightsError listing every missing file and the fix."""
    found: dict[str, Path] = {}
    missing: list[tuple[str, Path, ModelEntry]] = []
    for name in names:
        entry, _ = _resolve(name)
        found[name] = path = model_path(name)
        if not path.is_file():
            missing.append((name, path, entry))
    if not missing:
        return found
    store = store_dir()
    lines = [f"{len(missing)} weight file(s) missing from the model store {store} (${STORE_ENV} picks another):"]
    lines += [f"  - {name}: {path}" for name, path, _ in missing]
    lines.append("get them with:")
    lines += [f"  {fix}" for fix in dict.fromkeys(_how_to_get(entry) for _, _, entry in missing)]
    lines.append(f"Without internet here, copy each file to the path above; a downloaded archive (e.g. genforce.tar) "
                 f"can be copied into {store} and unpacked by the same `falco models fetch NAME`.")
    raise MissingWeightsError("\n".join(lines))


# --------------------------------------------------------------------------------------------- bookkeeping
def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise FalcoError(f"{path} is unreadable ({err}); delete it, then run `falco models verify`") from err


def _update_json(filename: str, updates: dict[str, dict | None]) -> None:
    """Read-modify-write of one bookkeeping file, under an inter-process lock, replaced atomically."""
    store = store_dir()
    store.mkdir(parents=True, exist_ok=True)
    with (store / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = store / filename
        data = _read_json(path)
        for key, value in updates.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        write_bytes_atomic(path, json.dumps(data, indent=1, sort_keys=True).encode())


def _key(path: Path) -> str:
    """Bookkeeping key: the path relative to the store (package files: absolute)."""
    try:
        return path.relative_to(store_dir()).as_posix()
    except ValueError:
        return str(path)


def _remember(path: Path, sha256: str | None) -> None:
    """Cache (or with None, forget) a successful check; a read-only store just is not cached."""
    stamp = None
    if sha256 is not None:
        stat = path.stat()
        stamp = {"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "checked": _now()}
    with contextlib.suppress(OSError):
        _update_json(VERIFIED_FILE, {_key(path): stamp})


def _record_tofu(path: Path, sha256: str, source: str) -> None:
    _update_json(TOFU_FILE, {_key(path): {"sha256": sha256, "source": source, "recorded": _now()}})


# --------------------------------------------------------------------------------------------- verify
@dataclass(frozen=True)
class VerifyResult:
    name: str  # entry or member name ("<entry>.archive" for a downloaded archive not unpacked yet)
    path: Path
    status: str  # "ok" | "mismatch" | "missing" | "unverified"
    expected: str | None  # reference sha256 (or published prefix); None when there is none
    actual: str | None  # sha256 of the file on disk
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _reference(entry: ModelEntry, member: Member | None, path: Path) -> tuple[str | None, str]:
    """(expected sha256 or prefix, where it comes from) for a file of ``entry`` at ``path``."""
    if entry.package is not None:
        return _package_file(entry)[1], f"RECORD of the installed {entry.package[0]}"
    if member is None and entry.sha256:
        return entry.sha256, "published"
    record = _read_json(store_dir() / TOFU_FILE).get(_key(path))
    if record:
        return record["sha256"], record.get("source", "recorded")
    if member is None and entry.sha256_prefix:
        return entry.sha256_prefix, "published prefix"
    return None, ""


def _check(entry: ModelEntry, member: Member | None, name: str, path: Path) -> VerifyResult:
    if not path.is_file():
        return VerifyResult(name, path, "missing", None, None, _how_to_get(entry))
    expected, origin = _reference(entry, member, path)
    actual = sha256_file(path)
    if expected is None:
        how = (f"copy {entry.filename} into {store_dir()} and run `falco models fetch {entry.name}` to unpack and "
               "record it") if member is not None else f"`falco models fetch {entry.name}` records it"
        return VerifyResult(name, path, "unverified", None, actual, f"no reference sha256; {how}")
    if actual.startswith(expected):
        _remember(path, actual)
        return VerifyResult(name, path, "ok", expected, actual, origin)
    _remember(path, None)
    way_out = (f" (if the file recorded then was the wrong one, also remove the entry of {_key(path)} from "
               f"{store_dir() / TOFU_FILE})") if origin.startswith("recorded") else ""
    return VerifyResult(name, path, "mismatch", expected, actual,
                        f"expected {expected} ({origin}); delete {path} and run `falco models fetch {entry.name}`"
                        + way_out)


def verify(name: str | None = None) -> list[VerifyResult]:
    """Re-hash every present file (``name`` None), or every file of one entry or member, missing ones included.

    A downloaded archive not unpacked yet is checked too, as ``<entry>.archive``.
    """
    if name is None:
        targets = [(entry, None) for entry in REGISTRY]
    else:
        targets = [_resolve(name)]
    results = []
    for entry, member in targets:
        for mem, fname, path in _files(entry, member):
            if name is not None or path.is_file():
                results.append(_check(entry, mem, fname, path))
        archive = store_dir() / entry.filename
        if entry.members and member is None and archive.is_file():
            actual = sha256_file(archive)
            results.append(VerifyResult(f"{entry.name}.archive", archive, "ok" if actual == entry.sha256 else
                                        "mismatch", entry.sha256, actual,
                                        f"downloaded, not unpacked yet: run `falco models fetch {entry.name}`"))
    return results


def file_state(path: Path, expected: str | None) -> str:
    """Cheap state for listings: "missing", "verified" (the last check still matches size and mtime), "present"."""
    if not path.is_file():
        return "missing"
    stamp = _read_json(store_dir() / VERIFIED_FILE).get(_key(path))
    stat = path.stat()
    if stamp and (stamp["size"], stamp["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns) and (
            expected is None or stamp["sha256"].startswith(expected)):
        return "verified"
    return "present"


def describe(entry: ModelEntry) -> dict:
    """What `falco models list` shows about one entry, as plain data (no hashing)."""
    files = []
    for member, name, path in _files(entry):
        expected = _reference(entry, member, path)[0] if path.is_file() else None
        files.append({"name": name, "path": str(path), "state": file_state(path, expected),
                      "size": path.stat().st_size if path.is_file() else None, "sha256": expected})
    return {
        "name": entry.name, "filename": entry.filename, "profiles": list(entry.profiles), "size": entry.size,
        "sha256": entry.sha256 or (_package_file(entry)[1] if entry.package else None),
        "sha256_prefix": entry.sha256_prefix, "sha256_note": entry.sha256_note, "url": entry.url,
        "package": entry.package[0] if entry.package else None, "page": entry.page, "source": entry.source,
        "files": files, "present": all(f["state"] != "missing" for f in files),
        "verified": all(f["state"] == "verified" for f in files),
    }


# --------------------------------------------------------------------------------------------- fetch
class _Retry(Exception):
    """A transient failure: the next attempt resumes from what the .part file holds."""


_TRANSIENT = (OSError, http.client.HTTPException)  # URLError, resets and timeouts are OSErrors


def _network_error(entry: ModelEntry, url: str, what: str) -> FalcoError:
    then = "and run the same command to verify and unpack it" if entry.members else \
        f"(`falco models fetch {entry.name}` then verifies it)"
    return FalcoError(f"could not download {entry.name} from {url}: {what}. {_NO_INTERNET}; download the file "
                      f"elsewhere and copy it to {store_dir() / entry.filename} {then}.")


def _download_once(url: str, handle: BinaryIO, label: str, progress: bool) -> None:
    """One request appending to ``handle`` (resuming from its size); _Retry on a transient failure."""
    offset = handle.seek(0, os.SEEK_END)
    headers = {"User-Agent": "falco-ops-model-store"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # nothing past our offset: the .part is complete, or stale
            if (err.headers.get("Content-Range") or "").endswith(f"/{offset}"):
                return
            handle.truncate(0)
            raise _Retry("the server refused to resume; starting over") from err
        if err.code in (408, 429) or err.code >= 500:
            raise _Retry(f"HTTP {err.code} {err.reason}") from err
        raise FalcoError(f"HTTP {err.code} {err.reason}") from err
    except _TRANSIENT as err:
        raise _Retry(str(getattr(err, "reason", err))) from err
    with response:
        if offset and response.status == 206:
            start = (response.headers.get("Content-Range") or "").removeprefix("bytes ").split("-")[0]
            if start != str(offset):
                handle.truncate(0)
                raise _Retry(f"the server resumed at byte {start!r} instead of {offset}; starting over")
        elif offset:  # the server ignored the Range header and sends the whole file
            handle.truncate(0)
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        with tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                  disable=not progress, dynamic_ncols=True, leave=False) as bar:
            try:
                while chunk := response.read(_CHUNK):
                    handle.write(chunk)
                    bar.update(len(chunk))
            except _TRANSIENT as err:
                handle.flush()
                raise _Retry(f"connection lost after {handle.tell()} bytes ({err!r})") from err
        handle.flush()
        if total is not None and handle.tell() < total:  # http.client returns b"" on a cut connection
            raise _Retry(f"connection closed after {handle.tell()} of {total} bytes")


def _download(entry: ModelEntry, url: str, dest: Path, progress: bool, attempts: int) -> None:
    """Download to ``<dest>.part`` (resuming it), then rename to ``dest`` atomically."""
    part = dest.with_name(dest.name + ".part")
    last = ""
    with part.open("ab") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise FalcoError(f"another process is downloading {part}; wait for it to finish") from err
        for attempt in range(max(1, attempts)):
            try:
                _download_once(url, handle, entry.name, progress)
                break
            except _Retry as err:
                last = str(err)
                if attempt + 1 < attempts:
                    time.sleep(min(_RETRY_DELAY_S * 2**attempt, 30.0))
            except FalcoError as err:
                raise _network_error(entry, url, str(err)) from err
        else:
            raise _network_error(entry, url, f"{last} (after {max(1, attempts)} attempt(s); {part.name} is kept "
                                             "and the next fetch resumes it)")
        os.fsync(handle.fileno())
    os.replace(part, dest)


def _is_html(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(512).lstrip().lower().startswith((b"<!doctype html", b"<html"))


def _accept(entry: ModelEntry, path: Path, origin: str, ours: bool) -> str:
    """sha256 of the downloaded file if it matches its reference (recorded on first use); else refuse it.

    ``ours``: we downloaded it, so a bad file is deleted; a file a user copied in is left for them to look at.
    """
    actual = sha256_file(path)
    expected, where = _reference(entry, None, path)
    html = _is_html(path)
    if expected is not None and actual.startswith(expected):
        if where == "published prefix":
            _record_tofu(path, actual, f"recorded on first fetch from {origin} (prefix {expected} published)")
        return actual
    unlike = None if html or expected is not None else _unlike_its_kind(path)
    if expected is None and not html and unlike is None:
        _record_tofu(path, actual, f"recorded on first fetch from {origin}")
        return actual
    why = "it is a web page, not the file" if html else unlike if unlike else \
        f"its sha256 {actual} does not match {expected} ({where})"
    if ours:
        path.unlink()
        fate = f"the file downloaded from {origin} was deleted and not installed"
    else:
        fate = f"delete {path} and fetch again"
    if where.startswith("recorded"):  # trust on first use: the first file may have been the wrong one
        fate += (f" (if the file recorded then was the wrong one, also remove the entry of {_key(path)} from "
                 f"{store_dir() / TOFU_FILE})")
    raise FalcoError(f"{entry.name}: {why}; {fate}. The file can also be downloaded by hand from "
                     f"{entry.page or entry.url} and copied to {path}.")


def _unlike_its_kind(path: Path) -> str | None:
    """Why a file whose sha256 was never published cannot be the file its name says (a PyTorch checkpoint is a zip
    or a pickle, an archive a tar), so that no such file is recorded as the one to trust; None when it may be."""
    suffix = path.name.lower()
    with path.open("rb") as handle:
        head = handle.read(2)
    if suffix.endswith((".pt", ".pth", ".pkl", ".pth.tar")):  # Talk-to-Edit's `.pth.tar` is a checkpoint too
        if not (zipfile.is_zipfile(path) or head[:1] == b"\x80"):
            return "it is not a PyTorch checkpoint (neither a zip nor a pickle); copy the right file"
    elif suffix.endswith((".tar", ".tar.gz", ".tgz")) and not tarfile.is_tarfile(path):
        return "it is not a tar archive; copy the right file"
    return None


def _unsafe_reason(info: tarfile.TarInfo) -> str | None:
    name = info.name
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "'..' in the path"
    if info.ischr() or info.isblk() or info.isfifo():
        return "device or fifo"
    if info.issym() or info.islnk():
        target = info.linkname
        if target.startswith(("/", "\\")):
            return f"link to the absolute path {target!r}"
        base = posixpath.dirname(name) if info.issym() else ""  # hard links are relative to the archive root
        resolved = posixpath.normpath(posixpath.join(base, target))
        if resolved == ".." or resolved.startswith("../"):
            return f"link pointing outside the store ({target!r})"
    return None


class _Absent(FalcoError):
    """Declared members missing from an archive; ``digests`` holds the members that were installed."""

    def __init__(self, message: str, digests: dict[str, str]) -> None:
        super().__init__(message)
        self.digests = digests


def _unpack(entry: ModelEntry, archive: Path) -> dict[str, str]:
    """Check every member, then write the entry's members atomically. -> {store path: sha256}."""
    store = store_dir()
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as err:
        raise FalcoError(f"{archive} is not a readable tar archive ({err}); delete it and fetch again") from err
    with tar:
        infos = tar.getmembers()
        bad = [f"{info.name!r}: {why}" for info in infos if (why := _unsafe_reason(info))]
        if bad:
            raise UnsafeArchiveError(f"refusing to unpack {archive}: {len(bad)} unsafe member(s): "
                                     f"{'; '.join(bad[:5])}. Nothing was extracted and the archive was deleted; it is "
                                     "not the expected file (check the URL)")
        files = {posixpath.normpath(info.name): info for info in infos if info.isfile()}
        digests: dict[str, str] = {}
        absent: list[str] = []
        for member in entry.members:
            info = files.get(posixpath.normpath(member.archive_path))
            if info is None:
                absent.append(member.archive_path)
                continue
            digest = hashlib.sha256()
            with atomic_path(store / member.path) as tmp, open(tmp, "wb") as out, tar.extractfile(info) as source:
                while chunk := source.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
            digests[member.path] = digest.hexdigest()
    if absent:
        raise _Absent(f"{archive.name} lacks {', '.join(absent)} (it holds: {', '.join(sorted(files)[:20])}); its "
                      "other members were installed. The registry's member list (anon_core/model_store.py) does "
                      "not match this archive", digests)
    return digests


def _install_archive(entry: ModelEntry, archive: Path, origin: str, ours: bool) -> None:
    actual = _accept(entry, archive, origin, ours)
    absent = None
    try:
        digests = _unpack(entry, archive)
    except UnsafeArchiveError:
        archive.unlink()
        raise
    except _Absent as err:
        absent, digests = err, err.digests
    source = f"unpacked from {entry.filename} (sha256 {actual})"
    for relpath, digest in digests.items():
        _record_tofu(store_dir() / relpath, digest, source)
        _remember(store_dir() / relpath, digest)
    archive.unlink()
    if absent is not None:
        raise absent


def fetch(name: str, url: str | None = None, progress: bool = True, attempts: int = 3) -> Path:
    """Make ``name`` present and verified in the store; returns ``model_path(name)``.

    An archive copied into the store by hand is verified and unpacked; files already present are re-verified
    (one without any reference sha256 gets it recorded: trust on first use). Otherwise the file is downloaded
    from ``url`` (default: the registry's) with up to ``attempts`` requests, each resuming the ``.part`` file.
    """
    entry, member = _resolve(name)
    if entry.package is not None:
        path = model_path(name)
        if not path.is_file():
            raise MissingWeightsError(f"{entry.name} ({path}) is installed by pip, not fetched: {_how_to_get(entry)}")
        return path
    store = store_dir()
    store.mkdir(parents=True, exist_ok=True)
    download = store / entry.filename
    by_hand = f"a file copied into {store}"
    if entry.members and download.is_file():
        _install_archive(entry, download, by_hand, ours=False)
        return model_path(name)
    files = _files(entry)
    if all(path.is_file() for _, _, path in files):
        if entry.members:
            bad = [r for r in (_check(entry, *f) for f in files) if r.status == "mismatch"]
            if bad:
                raise FalcoError("; ".join(f"{r.name}: {r.detail}" for r in bad))
        else:
            _remember(download, _accept(entry, download, by_hand, ours=False))
        return model_path(name)
    origin = url or entry.url
    if origin is None:
        raise MissingWeightsError(f"{entry.name}: {_how_to_get(entry)}")
    if urllib.parse.urlsplit(origin).scheme not in ("http", "https", "file"):
        raise FalcoError(f"{entry.name}: cannot download from {origin!r}; give an http(s):// or file:// URL")
    _download(entry, origin, download, progress, attempts)
    if entry.members:
        _install_archive(entry, download, origin, ours=True)
    else:
        _remember(download, _accept(entry, download, origin, ours=True))
    return model_path(name)
