"""The Dagster UI after a `falco pipeline` run: the webserver serves the same instance and settings, GraphQL reports
every asset materialized (a partition per shard and variant), the CLI's runs as the named jobs with their variant and
shard tags, and the UI's own staleness as up to date; headless Chromium renders the asset list (screenshot kept under
tests/artifacts/)."""

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
from pipeline_helpers import fast_params

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
    params = fast_params(root / "params.yaml", tiny={"pool_size": 20})
    params.write_text(params.read_text().replace("shard_size: 3", "shard_size: 2"))
    env = {**os.environ, "DAGSTER_HOME": str(root / "home"), "FALCO_STORAGE": str(root / "store"),
           "FALCO_INPUT": str(faces), "FALCO_PARAMS": str(params)}  # what the UI's code location reads too
    subprocess.run([sys.executable, "-m", "orchestration.cli", "pipeline"], env=env, check=True, capture_output=True,
                   timeout=600)
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
    assert nodes["fake_pool_settings"]["groupName"] == "settings"


def test_the_cli_runs_are_the_named_jobs_and_the_ui_sees_them_up_to_date(webserver):
    runs = _graphql(webserver, "{ runsOrError { ... on Runs { results { jobName tags { key value } } } } }")
    results = runs["runsOrError"]["results"]
    assert {r["jobName"] for r in results} == {"observe_settings", "prepare", "anonymize",
                                               "evaluate_references", "evaluate", "evaluate_report"}
    shards = {tuple(sorted((t["key"], t["value"]) for t in r["tags"] if t["key"].startswith("dagster/partition/")))
              for r in results if r["jobName"] == "anonymize"}
    assert shards == {(("dagster/partition/shard", f"shard-0000{i}"), ("dagster/partition/variant", "default"))
                      for i in range(2)}
    data = _graphql(webserver, "{ assetNodes { assetKey { path } staleStatus } }")
    nodes = {"/".join(n["assetKey"]["path"]): n for n in data["assetNodes"]}
    for name in ("fake_pool", "real_images", "pairs", "anonymization_report"):
        assert nodes[name]["staleStatus"] == "FRESH", (name, nodes[name])


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_chromium_renders_the_materialized_asset_list(webserver, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000"]
    url = f"{webserver}/assets"
    # A tall window: the list renders only the rows in view, and the settings sources made it 23 rows long.
    dom = subprocess.run([CHROMIUM, *flags, "--window-size=1400,3000", "--dump-dom", url], capture_output=True,
                         text=True, timeout=120).stdout
    for name in ASSETS:
        assert name in dom, f"{name} not on the rendered asset page"
    assert dom.count("Materialized") >= 6  # the six unpartitioned assets show their status
    shot = ARTIFACTS / "dagster_assets.png"
    subprocess.run([CHROMIUM, *flags, "--window-size=1400,900", f"--screenshot={shot}", url], capture_output=True,
                   timeout=120)
    assert shot.exists() and Image.open(shot).size == (1400, 900)
