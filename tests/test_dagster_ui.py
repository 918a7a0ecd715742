"""The Dagster UI after a pipeline run: the webserver serves the same instance, GraphQL reports every asset as
materialized, and headless Chromium renders the asset list (screenshot kept under tests/artifacts/)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).parent / "artifacts"
ASSETS = ["fake_pool", "fake_features", "real_images", "real_features", "real_inversions", "pairs",
          "anonymized_latents", "anonymized_images"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the webserver exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


@pytest.fixture(scope="module")
def webserver(tmp_path_factory, lfw_faces):
    root = tmp_path_factory.mktemp("ui")
    faces = root / "faces"
    faces.mkdir()
    for i in range(4):
        Image.fromarray(lfw_faces[i]).save(faces / f"face_{i}.png")
    env = {**os.environ, "DAGSTER_HOME": str(root / "home"), "FALCO_STORAGE": str(root / "store"),
           "FALCO_INPUT": str(faces)}
    subprocess.run(
        [sys.executable, "-m", "orchestration.cli", "pipeline", "--shard-size", "2", "--pool-size", "20", "--steps", "2"],
        env=env, check=True, capture_output=True, timeout=600,
    )
    port = _free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster-webserver")), "-m", "orchestration.definitions",
         "-h", "127.0.0.1", "-p", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        _wait_for(f"http://127.0.0.1:{port}/server_info", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _graphql(base: str, query: str) -> dict:
    request = urllib.request.Request(
        f"{base}/graphql", data=json.dumps({"query": query}).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["data"]


def test_graphql_reports_every_asset_materialized(webserver):
    data = _graphql(
        webserver,
        "{ assetNodes { assetKey { path } groupName isPartitioned "
        "  partitionStats { numMaterialized numPartitions } "
        "  assetMaterializations(limit: 1) { timestamp } } }",
    )
    nodes = {"/".join(n["assetKey"]["path"]): n for n in data["assetNodes"]}
    assert set(ASSETS) <= set(nodes)
    for name in ASSETS:
        node = nodes[name]
        if node["isPartitioned"]:
            stats = node["partitionStats"]
            assert stats["numPartitions"] == 2 and stats["numMaterialized"] == 2, (name, stats)
        else:
            assert node["assetMaterializations"], f"{name} is not materialized"
    assert nodes["pairs"]["groupName"] == "anonymization" and nodes["fake_pool"]["groupName"] == "fake_pool"


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_chromium_renders_the_materialized_asset_list(webserver, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000", "--window-size=1400,900"]
    url = f"{webserver}/assets"
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    for name in ASSETS:
        assert name in dom, f"{name} not on the rendered asset page"
    assert dom.count("Materialized") >= 6  # the six unpartitioned assets show their status
    shot = ARTIFACTS / "dagster_assets.png"
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", url], capture_output=True, timeout=120)
    assert shot.exists() and Image.open(shot).size == (1400, 900)
