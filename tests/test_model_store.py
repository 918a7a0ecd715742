"""The model store: fetch (resumable HTTP, sha256, safe tar unpacking), verify, require, and `falco models`.

Every test runs against a temporary store ($FALCO_MODELS) and a temporary registry; downloads come from a
local HTTP server on 127.0.0.1 (written here, with Range support and a mode that cuts the connection after N
bytes). Archives are built in the test from seeded random bytes. Nothing touches the network or the real home.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import importlib.util
import io
import json
import socket
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from anon_core import model_store
from anon_core.errors import FalcoError, MissingWeightsError
from anon_core.model_store import Member, ModelEntry, UnsafeArchiveError
from orchestration.cli_models import register

def _checkpoint(seed: int, size: int) -> bytes:
    """A file shaped like `torch.save`'s (a zip), of random contents."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", np.random.default_rng(seed).integers(0, 256, size, np.uint8).tobytes())
    return buffer.getvalue()


WEIGHTS = _checkpoint(0, 300_000)  # the "checkpoint"
OTHER = _checkpoint(1, 50_000)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tar(files: dict[str, bytes], extra: list[tarfile.TarInfo] = ()) -> bytes:
    """An uncompressed tar holding ``files`` (name -> bytes) plus raw ``extra`` members (links, devices)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info)
    return buffer.getvalue()


PACK = _tar({"./pack/weights.pt": WEIGHTS, "pack/other.bin": OTHER, "pack/readme.txt": b"not needed"})


# --------------------------------------------------------------------------------------------- HTTP server
@dataclass
class Server:
    """Serves ``files`` at http://127.0.0.1:PORT/<name>; honours ``Range: bytes=N-``."""

    files: dict[str, bytes] = field(default_factory=dict)
    cut_after: dict[str, int] = field(default_factory=dict)  # name -> bytes sent before cutting (once)
    ignore_range: bool = False
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    port: int = 0

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


def _handler(server: Server) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            name = self.path.lstrip("/")
            range_header = self.headers.get("Range")
            server.requests.append((name, range_header))
            if name not in server.files:
                self.send_error(404, "Not Found")
                return
            data = server.files[name]
            start = 0
            if range_header and not server.ignore_range:
                start = int(range_header.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            cut = server.cut_after.pop(name, None)
            if cut is not None:  # announce the whole body, send part of it, drop the connection
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(body)

    return Handler


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def store(tmp_path: Path, monkeypatch) -> Path:
    root = tmp_path / "store"
    monkeypatch.setenv("FALCO_MODELS", str(root))
    monkeypatch.setattr(model_store, "_RETRY_DELAY_S", 0.0)
    return root


def _pack_entry(url: str | None, sha256: str | None = _sha(PACK)) -> ModelEntry:
    return ModelEntry(
        "testpack", "testpack.tar", url, sha256, "test archive", page="https://example.invalid/testpack",
        profiles=("testprof",),
        members=(Member("test_weights", "pack/weights.pt", "pack/weights.pt", ("testprof",)),
                 Member("test_other", "pack/other.bin", "pack/other.bin")),
    )


def _file_entry(url: str | None, sha256: str | None = None, prefix: str | None = None,
                name: str = "testfile") -> ModelEntry:
    return ModelEntry(name, f"{name}.pt", url, sha256, "test file", page="https://example.invalid/file",
                      profiles=("testprof",), sha256_prefix=prefix)


def _use(monkeypatch, *entries: ModelEntry) -> None:
    monkeypatch.setattr(model_store, "REGISTRY", tuple(entries))


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="falco")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.run(args)


# --------------------------------------------------------------------------------------------- fetch
def test_fetch_downloads_verifies_and_unpacks(store: Path, server: Server, monkeypatch) -> None:
    server.files["testpack.tar"] = PACK
    _use(monkeypatch, _pack_entry(server.url("testpack.tar")))
    path = model_store.fetch("testpack", progress=True)
    assert path == store / "pack" / "weights.pt" == model_store.model_path("test_weights")
    assert path.read_bytes() == WEIGHTS
    assert (store / "pack" / "other.bin").read_bytes() == OTHER
    assert not (store / "pack" / "readme.txt").exists()  # only the declared members are installed
    assert not (store / "testpack.tar").exists() and not (store / "testpack.tar.part").exists()
    tofu = json.loads((store / model_store.TOFU_FILE).read_text())
    assert tofu["pack/weights.pt"]["sha256"] == _sha(WEIGHTS)
    assert _sha(PACK) in tofu["pack/weights.pt"]["source"]
    assert [r.status for r in model_store.verify()] == ["ok", "ok"]
    assert model_store.describe(model_store.get_entry("testpack"))["verified"]
    # A second fetch re-verifies and downloads nothing.
    model_store.fetch("test_weights", progress=False)
    assert len(server.requests) == 1


def test_resume_after_cut_connection_within_one_fetch(store: Path, server: Server, monkeypatch) -> None:
    server.files["testpack.tar"] = PACK
    server.cut_after["testpack.tar"] = 100_000
    _use(monkeypatch, _pack_entry(server.url("testpack.tar")))
    path = model_store.fetch("testpack", progress=False, attempts=3)
    assert server.requests == [("testpack.tar", None), ("testpack.tar", "bytes=100000-")]
    assert _sha(path.read_bytes()) == _sha(WEIGHTS)


def test_cut_connection_leaves_a_part_file_the_next_fetch_resumes(store: Path, server: Server, monkeypatch) -> None:
    data = WEIGHTS + OTHER
    server.files["testfile.pt"] = data
    server.cut_after["testfile.pt"] = 123_456
    _use(monkeypatch, _file_entry(server.url("testfile.pt"), sha256=_sha(data)))
    with pytest.raises(FalcoError) as err:
        model_store.fetch("testfile", progress=False, attempts=1)
    message = str(err.value)
    assert server.url("testfile.pt") in message and "no internet" in message
    assert str(store / "testfile.pt") in message and "resumes" in message
    assert (store / "testfile.pt.part").stat().st_size == 123_456
    assert not (store / "testfile.pt").exists()
    path = model_store.fetch("testfile", progress=False, attempts=1)
    assert server.requests[-1] == ("testfile.pt", "bytes=123456-")
    assert path.read_bytes() == data and not (store / "testfile.pt.part").exists()


def test_server_that_ignores_range_restarts_the_download(store: Path, server: Server, monkeypatch) -> None:
    server.files["testfile.pt"] = WEIGHTS
    server.ignore_range = True
    _use(monkeypatch, _file_entry(server.url("testfile.pt"), sha256=_sha(WEIGHTS)))
    store.mkdir()
    (store / "testfile.pt.part").write_bytes(b"stale bytes from another file")
    assert model_store.fetch("testfile", progress=False).read_bytes() == WEIGHTS
    assert server.requests == [("testfile.pt", "bytes=29-")]


def test_wrong_sha256_is_refused_and_not_installed(store: Path, server: Server, monkeypatch) -> None:
    server.files["testpack.tar"] = PACK
    _use(monkeypatch, _pack_entry(server.url("testpack.tar"), sha256="0" * 64))
    with pytest.raises(FalcoError, match=f"sha256 {_sha(PACK)} does not match 0000") as err:
        model_store.fetch("testpack", progress=False)
    assert "deleted and not installed" in str(err.value)
    assert not model_store.model_path("test_weights").exists()
    assert sorted(p.name for p in store.iterdir() if not p.name.startswith(".")) == []
    with pytest.raises(MissingWeightsError):
        model_store.require(["test_weights"])


def test_http_error_is_not_retried_and_names_the_url(store: Path, server: Server, monkeypatch) -> None:
    _use(monkeypatch, _file_entry(server.url("nothing-here.pt")))
    with pytest.raises(FalcoError, match="HTTP 404") as err:
        model_store.fetch("testfile", progress=False, attempts=3)
    assert len(server.requests) == 1
    assert server.url("nothing-here.pt") in str(err.value) and str(store / "testfile.pt") in str(err.value)


def test_unreachable_host_gives_one_clear_message(store: Path, monkeypatch) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.pt"
    _use(monkeypatch, _file_entry(url))
    with pytest.raises(FalcoError) as err:
        model_store.fetch("testfile", progress=False, attempts=2)
    message = str(err.value)
    assert url in message and "no internet" in message and "after 2 attempt(s)" in message
    assert f"copy it to {store / 'testfile.pt'}" in message


def test_a_download_in_progress_elsewhere_is_not_touched(store: Path, server: Server, monkeypatch) -> None:
    import fcntl

    server.files["testfile.pt"] = WEIGHTS
    _use(monkeypatch, _file_entry(server.url("testfile.pt")))
    store.mkdir()
    with (store / "testfile.pt.part").open("ab") as other:
        fcntl.flock(other, fcntl.LOCK_EX)
        with pytest.raises(FalcoError, match="another process is downloading"):
            model_store.fetch("testfile", progress=False)
    assert server.requests == []


# --------------------------------------------------------------------------------------------- unsafe archives
def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return info


UNSAFE = {
    "dotdot": ({"pack/weights.pt": WEIGHTS, "pack/../../evil.txt": b"x"}, [], "'..' in the path"),
    "absolute": ({"pack/weights.pt": WEIGHTS, "/tmp/falco-evil.txt": b"x"}, [], "absolute path"),
    "symlink_out": ({"pack/weights.pt": WEIGHTS}, [_link("pack/link", "../../outside", tarfile.SYMTYPE)],
                    "link pointing outside"),
    "symlink_abs": ({"pack/weights.pt": WEIGHTS}, [_link("pack/link", "/etc/passwd", tarfile.SYMTYPE)],
                    "link to the absolute path"),
    "hardlink_out": ({"pack/weights.pt": WEIGHTS}, [_link("pack/hard", "../x", tarfile.LNKTYPE)],
                     "link pointing outside"),
    "device": ({"pack/weights.pt": WEIGHTS}, [_device("pack/null")], "device or fifo"),
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_archive_is_refused_whole(case: str, store: Path, server: Server, monkeypatch) -> None:
    files, extra, reason = UNSAFE[case]
    archive = _tar(files, extra)
    server.files["testpack.tar"] = archive
    _use(monkeypatch, _pack_entry(server.url("testpack.tar"), sha256=_sha(archive)))
    with pytest.raises(UnsafeArchiveError, match=reason) as err:
        model_store.fetch("testpack", progress=False)
    assert "Nothing was extracted" in str(err.value)
    assert not (store / "pack").exists()  # not even the harmless member
    assert not (store / "testpack.tar").exists()
    assert not (store.parent / "evil.txt").exists() and not (store.parent / "outside").exists()


def test_safe_links_inside_the_archive_are_accepted(store: Path, monkeypatch) -> None:
    archive = _tar({"pack/weights.pt": WEIGHTS, "pack/other.bin": OTHER},
                   [_link("pack/alias", "weights.pt", tarfile.SYMTYPE), _link("pack/hard", "pack/other.bin",
                                                                               tarfile.LNKTYPE)])
    _use(monkeypatch, _pack_entry(None, sha256=_sha(archive)))
    store.mkdir()
    (store / "testpack.tar").write_bytes(archive)  # copied in by hand: unpacked without any network
    assert model_store.fetch("testpack", progress=False).read_bytes() == WEIGHTS
    assert not (store / "pack" / "alias").exists()


def test_archive_missing_a_declared_member_says_so(store: Path, monkeypatch) -> None:
    archive = _tar({"pack/weights.pt": WEIGHTS})
    _use(monkeypatch, _pack_entry(None, sha256=_sha(archive)))
    store.mkdir()
    (store / "testpack.tar").write_bytes(archive)
    with pytest.raises(FalcoError, match=r"lacks pack/other\.bin .*it holds: pack/weights\.pt"):
        model_store.fetch("testpack", progress=False)
    assert model_store.model_path("test_weights").read_bytes() == WEIGHTS


# --------------------------------------------------------------------------------------------- TOFU / by hand
def test_unpublished_sha256_is_recorded_on_first_fetch_and_checked_after(store: Path, server: Server,
                                                                         monkeypatch) -> None:
    server.files["testfile.pt"] = WEIGHTS
    _use(monkeypatch, _file_entry(server.url("testfile.pt")))
    path = model_store.fetch("testfile", progress=False)
    tofu = json.loads((store / model_store.TOFU_FILE).read_text())
    assert tofu["testfile.pt"]["sha256"] == _sha(WEIGHTS)
    assert server.url("testfile.pt") in tofu["testfile.pt"]["source"]
    assert [r.status for r in model_store.verify()] == ["ok"]
    path.write_bytes(OTHER)  # corrupted afterwards
    [result] = model_store.verify()
    assert (result.status, result.expected, result.actual) == ("mismatch", _sha(WEIGHTS), _sha(OTHER))
    assert _cli(["models", "verify"]) == 1
    with pytest.raises(FalcoError, match="does not match"):
        model_store.fetch("testfile", progress=False)
    assert path.read_bytes() == OTHER  # a file already in place is reported, never silently deleted


def test_a_wrong_file_copied_in_is_not_recorded_and_a_recorded_one_names_its_way_out(store: Path, monkeypatch) -> None:
    """hF: random bytes copied in as a checkpoint whose sha256 was never published were recorded as the file to trust
    (fetch and verify said ok, evaluate then failed), and the right file was refused against that record, with no
    word of the record; deleting and fetching again met the same record."""
    _use(monkeypatch, _file_entry(None))
    store.mkdir()
    (store / "testfile.pt").write_bytes(np.random.default_rng(2).integers(0, 256, 5_000, np.uint8).tobytes())
    with pytest.raises(FalcoError, match="not a PyTorch checkpoint .neither a zip nor a pickle.; copy the right file"):
        model_store.fetch("testfile", progress=False)
    assert not (store / model_store.TOFU_FILE).exists()
    (store / "testfile.pt").write_bytes(OTHER)  # a checkpoint, recorded, though not the right one
    model_store.fetch("testfile", progress=False)
    (store / "testfile.pt").write_bytes(WEIGHTS)
    with pytest.raises(FalcoError, match=r"also remove the entry of testfile.pt from .*\.sha256-tofu\.json"):
        model_store.fetch("testfile", progress=False)


def test_a_checkpoint_named_pth_tar_is_a_checkpoint_not_an_archive(tmp_path: Path) -> None:
    """Talk-to-Edit's predictors are `torch.save` files named `.pth.tar` (hG: refused as "not a tar archive")."""
    import torch

    torch.save({"w": torch.zeros(3)}, tmp_path / "predictor_128.pth.tar")
    torch.save({"w": torch.zeros(3)}, tmp_path / "old.pth.tar", _use_new_zipfile_serialization=False)
    (tmp_path / "junk.pth.tar").write_bytes(b"junk" * 100)
    with tarfile.open(tmp_path / "pack.tar", "w") as archive:
        archive.add(tmp_path / "old.pth.tar", "old.pth.tar")
    (tmp_path / "junk.tar").write_bytes(b"junk" * 100)
    kinds = {p.name: model_store._unlike_its_kind(p) for p in tmp_path.iterdir()}
    assert kinds["predictor_128.pth.tar"] is None and kinds["old.pth.tar"] is None and kinds["pack.tar"] is None
    assert "not a PyTorch checkpoint" in kinds["junk.pth.tar"] and "not a tar archive" in kinds["junk.tar"]


def test_published_prefix_is_enforced_and_full_digest_recorded(store: Path, server: Server, monkeypatch) -> None:
    server.files["good.pt"] = WEIGHTS
    server.files["bad.pt"] = OTHER
    good = _file_entry(server.url("good.pt"), prefix=_sha(WEIGHTS)[:8], name="good")
    bad = _file_entry(server.url("bad.pt"), prefix=_sha(WEIGHTS)[:8], name="bad")
    _use(monkeypatch, good, bad)
    model_store.fetch("good", progress=False)
    assert json.loads((store / model_store.TOFU_FILE).read_text())["good.pt"]["sha256"] == _sha(WEIGHTS)
    with pytest.raises(FalcoError, match=f"does not match {_sha(WEIGHTS)[:8]} \\(published prefix\\)"):
        model_store.fetch("bad", progress=False)
    assert not (store / "bad.pt").exists()


def test_a_web_page_instead_of_the_file_is_refused(store: Path, server: Server, monkeypatch) -> None:
    server.files["drive.pt"] = b"\n<!DOCTYPE html><html><body>Google Drive can't scan this file</body></html>"
    _use(monkeypatch, _file_entry(server.url("drive.pt")))
    with pytest.raises(FalcoError, match="web page, not the file"):
        model_store.fetch("testfile", progress=False)
    assert not (store / "testfile.pt").exists() and not (store / model_store.TOFU_FILE).exists()


def test_files_dropped_by_hand_are_listed_and_verified(store: Path, monkeypatch) -> None:
    _use(monkeypatch, _file_entry(None, sha256=_sha(WEIGHTS)), _file_entry(None, name="loose"))
    store.mkdir()
    (store / "testfile.pt").write_bytes(WEIGHTS)
    (store / "loose.pt").write_bytes(OTHER)
    assert model_store.describe(model_store.get_entry("testfile"))["files"][0]["state"] == "present"
    results = {r.name: r for r in model_store.verify()}
    assert results["testfile"].status == "ok" and results["loose"].status == "unverified"
    assert "falco models fetch loose" in results["loose"].detail
    assert model_store.describe(model_store.get_entry("testfile"))["files"][0]["state"] == "verified"
    model_store.fetch("loose", progress=False)  # records the present file's digest, no download
    assert model_store.verify("loose")[0].status == "ok"


# --------------------------------------------------------------------------------------------- require / lookup
def test_require_lists_every_missing_file_in_one_message(store: Path, monkeypatch) -> None:
    _use(monkeypatch, _pack_entry("http://127.0.0.1:9/testpack.tar"), _file_entry("http://127.0.0.1:9/f.pt"),
         _file_entry(None, name="manual"))
    with pytest.raises(MissingWeightsError) as err:
        model_store.require(["test_weights", "test_other", "testfile", "manual"])
    message = str(err.value)
    assert message.startswith("4 weight file(s) missing")
    for path in ("pack/weights.pt", "pack/other.bin", "testfile.pt", "manual.pt"):
        assert str(store / path) in message
    assert message.count("falco models fetch testpack\n") == 1  # one command per archive
    assert "falco models fetch testfile" in message and "get manual.pt from https://example.invalid/file" in message
    (store / "pack").mkdir(parents=True)
    for name in ("weights.pt", "other.bin"):
        (store / "pack" / name).write_bytes(b"x")
    assert model_store.require(["test_weights"]) == {"test_weights": store / "pack" / "weights.pt"}


def test_unknown_name_lists_the_known_ones(monkeypatch) -> None:
    _use(monkeypatch, _pack_entry(None), _file_entry(None))
    with pytest.raises(FalcoError, match="unknown weight file 'nope'; known names: testpack, testfile, test_weights"):
        model_store.get_entry("nope")
    assert model_store.get_entry("test_other").name == "testpack"
    assert model_store.profile_weights("testprof") == ("test_weights", "testfile")


# --------------------------------------------------------------------------------------------- CLI
def test_cli_list_path_fetch_verify(store: Path, server: Server, monkeypatch, capsys) -> None:
    server.files["testpack.tar"] = PACK
    _use(monkeypatch, _pack_entry(server.url("testpack.tar")), _file_entry(None))
    assert _cli(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert f"model store: {store}" in out and "testpack  [testprof]  missing" in out and _sha(PACK) in out
    summary = out.splitlines()[1]  # one line per profile first, with the command that completes it
    assert summary.split() == ["testprof", "2", "of", "2", "entries", "missing", "(testpack,", "testfile):",
                               "`falco", "models", "fetch", "--profile", "testprof`"]
    assert server.url("testpack.tar") in out and "by hand from https://example.invalid/file" in out

    assert _cli(["models", "path", "test_weights"]) == 1
    err = capsys.readouterr().err
    assert str(store / "pack" / "weights.pt") in err and "falco models fetch testpack" in err

    # A profile no file is listed for (a typo) is refused: before, it fetched the shared files and exited 0
    with pytest.raises(FalcoError, match="unknown profile 'testprfo'; known: .*testprof"):
        _cli(["models", "fetch", "--profile", "testprfo", "--quiet"])
    # A profile's files are all attempted; the ones that fail are reported together at the end.
    with pytest.raises(FalcoError, match=r"(?s)1 of 2 failed \(1 in place, listed above\):\ntestfile: no direct download"):
        _cli(["models", "fetch", "--profile", "testprof", "--quiet"])
    assert f"test_weights: {store / 'pack' / 'weights.pt'}" in capsys.readouterr().out


def test_cli_after_fetch(store: Path, server: Server, monkeypatch, capsys) -> None:
    server.files["testpack.tar"] = PACK
    _use(monkeypatch, _pack_entry(server.url("testpack.tar")))
    assert _cli(["models", "fetch", "test_weights", "test_other", "--quiet"]) == 0
    assert len(server.requests) == 1  # two members, one archive, one download
    capsys.readouterr()
    assert _cli(["models", "path", "test_weights"]) == 0
    assert capsys.readouterr().out.strip() == str(store / "pack" / "weights.pt")
    assert _cli(["models", "verify"]) == 0
    assert "2 ok, 0 unverified, 0 missing, 0 mismatch" in capsys.readouterr().out
    assert _cli(["models", "list", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)["entries"]
    assert row["verified"] and [f["state"] for f in row["files"]] == ["verified", "verified"]
    with pytest.raises(FalcoError, match="--url needs exactly one NAME"):
        _cli(["models", "fetch", "test_weights", "test_other", "--url", "http://127.0.0.1:9/x"])


# --------------------------------------------------------------------------------------------- the real registry
DESIGN_SHA256 = {  # DESIGN.md section 3 (= chi0tzp/FALCO lib/config.py, branch cvpr23)
    "genforce": "63284b4f4ffeac38037061fd175c462afff82bbe570ed80092720a724a67a6dc",
    "e4e": "b4a95155f2bebbb229b7dfc914fe937753b9a5b8de9a837875f9fbcacf8bb287",
    "farl": "1d67cc6fd3cea9fdd7ec6af812a32e6b02374162d02137dd80827283d496b2d8",
    "arcface": "edd5854cacd86c17a78a11f70ab8c49bceffefb90ee070754288fa7ceadcdfb2",
    "sfd": "2bea5f1c10110e356eef3f4efd45169100b9c7704eb6e6abd309df58f34452d4",
}


def test_real_registry_is_consistent(store: Path) -> None:
    names = [e.name for e in model_store.REGISTRY] + [m.name for e in model_store.REGISTRY for m in e.members]
    assert len(names) == len(set(names))
    for name, digest in DESIGN_SHA256.items():
        entry = model_store.get_entry(name)
        assert entry.sha256 == digest and entry.filename == f"{name}.tar" and entry.url.startswith("https://")
    paths = [m.path for e in model_store.REGISTRY for m in e.members] + \
        [e.filename for e in model_store.REGISTRY if not e.members and not e.package]
    assert len(paths) == len(set(paths))
    assert all(not p.startswith("/") and ".." not in p.split("/") for p in paths)
    for entry in model_store.REGISTRY:
        assert entry.sha256 or entry.sha256_prefix or entry.sha256_note, entry.name
        assert entry.url or entry.page or entry.package, entry.name
    assert {"stylegan2_ffhq1024", "e4e_ffhq_encode", "farl_ep64", "arcface_ir_se50"} <= set(
        model_store.profile_weights("ffhq1024"))
    assert "stylegan2_ffhq512" in model_store.profile_weights("ffhq512")
    assert model_store.get_entry("fid-inception").sha256_prefix == "6726825d"
    assert model_store.model_path("farl_ep64") == store / "farl" / "FaRL-Base-Patch16-LAIONFace20M-ep64.pth"


def test_package_weights_verify_against_their_record(store: Path) -> None:
    if importlib.util.find_spec("face_recognition_models") is None:
        pytest.skip("face-recognition-models is not installed")
    results = {r.name: r for r in model_store.verify("dlib-face-descriptor")}
    assert results["dlib-face-descriptor"].status == "ok"
    assert model_store.model_path("dlib-face-descriptor").name == "dlib_face_recognition_resnet_model_v1.dat"


def test_store_dir_and_dlib_cache_share_one_helper(monkeypatch, tmp_path: Path) -> None:
    from anon_core.networks import dlib_resnet

    monkeypatch.setenv("FALCO_MODELS", str(tmp_path / "m"))
    assert model_store.store_dir() == dlib_resnet.default_model_cache_dir() == tmp_path / "m"
    monkeypatch.delenv("FALCO_MODELS")
    assert model_store.store_dir() == Path.home() / ".cache" / "falco" / "models"


@pytest.mark.parametrize("command", [["models", "list"], ["models", "verify"], ["models", "fetch", "fid-inception"]])
def test_a_model_store_path_that_is_a_file_is_one_line(tmp_path, monkeypatch, capsys, command):
    """Before: `fetch` a FileExistsError traceback, `list` a misleading "unreadable .verified.json", `verify` exit 0."""
    from orchestration.cli import main

    (tmp_path / "models").write_text("not a folder")
    monkeypatch.setenv("FALCO_MODELS", str(tmp_path / "models"))
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"the model store {tmp_path / 'models'} is a file" in err
