"""The whole DVC pipeline on a tiny synthetic city, in a temporary copy of the project.

Runs `dvc repro` once for the module (minutes), then checks what a user relies
on: nothing left to do on a second run, `dvc status` clean, params in
`dvc exp show`, and an S3 round trip through a real (moto) S3 server on 127.0.0.1.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from navml.post.cities import COUNTS

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

#: params that make the default pipeline tiny enough for CI: one small train city, one smaller held-out one
TINY = {
    "cover": {"seed": 1},  # 0.6 km: 36 tiles; this seed puts lots in the val and test blocks
    "train": {"depth": 3, "base_filters": 4, "steps": 4, "eval_every": 2, "patience": 2},
    "evaluate": {"overlays": 2},
    "predict": {"window_px": 512},
    "detect": {"steps": 4, "eval_every": 2, "patience": 2, "refine": {"steps": 20, "batch_size": 16, "filters": 4}},
    "retrain": {"steps": 2, "eval_every": 2},
    "retrain_detect": {"steps": 2, "eval_every": 2},
}
CITIES = {
    "denver": {"role": "train", "synthetic": {"seed": 42, "center": [-104.9903, 39.7392], "size_km": 0.6}},
    "oslo": {"role": "predict", "synthetic": {"seed": 7, "center": [10.75, 60.0], "size_km": 0.5}},
}
DENVER = "data/cities/train/denver"  # the train city's data
OSLO = "data/cities/predict/oslo"  # the held-out city's data
RESULTS = "data/cities/results"  # what the final models make of each city


def run(cmd: list[str], cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def project_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    return [f for f in out if f and (ROOT / f).is_file() and not f.startswith("data/")]


def deep_update(base: dict, changes: dict) -> dict:
    for k, v in changes.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_update(base[k], v)
        else:
            base[k] = v
    return base


def git_env() -> dict:
    env = dict(os.environ)
    env.update(
        GIT_AUTHOR_NAME="navml-test", GIT_AUTHOR_EMAIL="test@navml.invalid",
        GIT_COMMITTER_NAME="navml-test", GIT_COMMITTER_EMAIL="test@navml.invalid",
        DVC_NO_ANALYTICS="1", PYTHONPATH=str(ROOT),
    )
    # the stages run with this interpreter's environment
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("project")
    for f in project_files():
        target = dst / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, target)
    params = yaml.safe_load((dst / "params.yaml").read_text())
    params = deep_update(params, TINY)
    params["cities"] = CITIES
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = git_env()
    run(["git", "init", "-q", "-b", "main"], dst, env)
    run(["git", "add", "-A"], dst, env)
    run(["git", "commit", "-qm", "tiny project"], dst, env)
    proc = run([sys.executable, "-m", "dvc", "repro"], dst, env)
    (dst / "repro.log").write_text(proc.stdout + proc.stderr)
    return dst


def dvc(project: Path, *args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], project, env or git_env(), check)


def test_repro_produces_the_stage_outputs(project):
    tiles = (project / DENVER / "cover/tiles.csv").read_text().splitlines()
    assert len(tiles) > 20
    shards = list((project / DENVER / "store/imagery").glob("*.tif"))
    assert shards and len(shards) == len(list((project / DENVER / "store/masks").glob("*.tif")))
    legend = json.loads((project / DENVER / "store/labels.json").read_text())
    assert legend["pixels"]["parking"] > 10_000
    assert legend["boxes"] > 0
    for model in ("data/first/models/seg", "data/models/seg_mined"):  # the first model and the mined one (issue 9)
        assert {p.name for p in (project / model).iterdir()} >= {"model.keras", "meta.json", "thresholds.json"}
    mined = json.loads((project / "data/mining/seg/hard_negatives.geojson").read_text())
    assert mined["type"] == "FeatureCollection"
    assert all(f["properties"]["city"] == "denver" for f in mined["features"])  # mined on train cities only
    retrain = json.loads((project / "data/metrics/retrain.json").read_text())
    assert retrain["copied_first_model"] == (retrain["hard_tiles"] == 0)
    assert json.loads((project / "data/first/train/denver/metrics/seg.json").read_text())["tiles"] > 0
    res = project / RESULTS / "denver"
    seg = json.loads((res / "metrics/seg.json").read_text())
    p = seg["parking"]
    assert seg["tiles"] == sum(1 for row in tiles[1:] if ",test," in row)
    # Two epochs of a 4-filter U-Net learn little beyond "parking is likely here": measured
    # IoU 0.017 at recall 0.76 (threshold 0.50). The floor, with a margin of 2x, catches a
    # collapsed model (all background: IoU 0) and a broken evaluation; the identity below ties
    # IoU to precision and recall as counted (1/IoU = 1/P + 1/R - 1).
    assert p["iou"] >= 0.008 and p["recall"] >= 0.3
    assert 1 / p["iou"] == pytest.approx(1 / p["precision"] + 1 / p["recall"] - 1, rel=1e-3)
    assert list((res / "predict/probs").glob("*.tif"))
    new = json.loads((res / "output/new_features.geojson").read_text())
    assert new["type"] == "FeatureCollection"
    summary = json.loads((res / "output/summary.json").read_text())
    assert summary["new"] == len(new["features"])
    assert summary["predicted"] == summary["matched_existing"] + summary["on_roads"] + summary["new"]
    import osmium

    osm_ways = sum(1 for o in osmium.FileProcessor(str(res / "output/new_features.osm")) if o.is_way())
    assert osm_ways >= summary["new"]  # a lot with holes is a relation of several ways
    features = json.loads((res / "metrics/features.json").read_text())
    assert set(features["parking"]) >= {"new_features", "test", "geometry"} and features["parking"]["test"]["tiles"] > 0
    detect = json.loads((res / "metrics/detect.json").read_text())
    assert "map50" in json.dumps(detect)
    for model in ("data/first/models/det", "data/models/det"):  # the first detector and the mined one
        assert (project / model / "model.keras").is_file() and (project / model / "meta.json").is_file()
    mined_boxes = json.loads((project / "data/mining/det/hard_negatives.geojson").read_text())
    assert all(f["properties"]["city"] == "denver" for f in mined_boxes["features"])
    assert "map50" in json.dumps(json.loads((project / "data/first/train/denver/metrics/detect.json").read_text()))
    assert (res / "output/markings.geojson").is_file()


def test_held_out_city_is_predicted_and_in_the_gap(project):
    """The predict city: its own data, every tile a test tile, predicted by the models of the train city, and the gap."""
    rows = (project / OSLO / "cover/tiles.csv").read_text().splitlines()
    header = rows[0].split(",")
    splits = {dict(zip(header, r.split(",")))["split"] for r in rows[1:]}
    assert splits == {"test"}
    assert not (project / "data/cities/train/oslo").exists()  # not part of the training data
    res = project / RESULTS / "oslo"
    seg = json.loads((res / "metrics/seg.json").read_text())
    assert seg["tiles"] == len(rows) - 1
    assert list((res / "predict/probs").glob("*.tif")) and (res / "output/new_features.osm").is_file()
    assert json.loads((project / "data/first/predict/oslo/metrics/features.json").read_text())["parking"]["test"]["tiles"] > 0
    gap = json.loads((project / "data/metrics/cities.json").read_text())
    assert set(gap["cities"]) == {"denver", "oslo"}
    assert gap["cities"]["oslo"]["role"] == "predict" and gap["cities"]["denver"]["role"] == "train"
    assert set(gap["cities"]["oslo"]) >= {"parking", "detector"}
    for key, held in gap["held_out"]["parking"].items():  # the gap is held-out minus in-city, as written
        own = gap["in_city"]["parking"][key]
        if key in COUNTS:  # lots found / unmapped: summed per role, no gap
            assert isinstance(held, int) and "new_found" in gap["cities"]["oslo"]["parking"] and key not in gap["gap"]["parking"]
        elif held is not None and own is not None:
            assert gap["gap"]["parking"][key] == pytest.approx(held - own, abs=1e-4)


def test_second_repro_has_nothing_to_do(project):
    out = dvc(project, "repro").stdout
    assert "didn't change, skipping" in out or "Data and pipelines are up to date" in out
    assert "Running stage" not in out
    status = dvc(project, "status").stdout
    assert "up to date" in status.lower()


def test_exp_show_lists_params(project):
    env = git_env()
    run(["git", "add", "-A"], project, env)
    run(["git", "commit", "-qm", "repro outputs", "--allow-empty"], project, env)
    out = dvc(project, "exp", "show", "--json").stdout
    data = json.loads(out)
    text = json.dumps(data)
    assert "synth.seed" in text or '"seed"' in text
    assert "grid" in text


def test_exp_run_compares_two_runs(project):
    env = git_env()
    run(["git", "add", "-A"], project, env)
    run(["git", "commit", "-qm", "baseline", "--allow-empty"], project, env)
    out = dvc(project, "exp", "run", "-S", "post.parking.threshold=0.95").stdout
    assert "Running stage 'vectorize@denver'" in out and "Running stage 'vectorize@oslo'" in out
    assert "Running stage 'train'" not in out and "Running stage 'imagery@" not in out  # only post-processing reruns
    out = dvc(project, "exp", "run", "-S", "train.base_filters=6").stdout  # a model param: the model is retrained
    assert "Running stage 'train'" in out and "Running stage 'evaluate@oslo'" in out and "Running stage 'synth@" not in out
    rows = list(csv.DictReader(io.StringIO(dvc(project, "exp", "show", "--no-pager", "--csv").stdout)))
    assert {r["post.parking.threshold"] for r in rows} >= {"0.6", "0.95"}
    assert {r["train.base_filters"] for r in rows} >= {"4", "6"}
    # the first and the mined model's metrics files share their keys: dvc prefixes the columns with the file
    cols = {c: c.rsplit(":", 1)[-1] for c in rows[0]}
    mined = {v: c for c, v in cols.items() if c.startswith(f"{RESULTS}/denver/metrics/")}
    assert {"parking.iou", "parking.new_features.precision", "parking.new_features.recall", "parking.test.f1"} <= set(mined)
    assert any(c.startswith("data/first/train/denver/metrics/") and v == "parking.iou" for c, v in cols.items())  # before and after side by side
    assert all(r[mined["parking.iou"]] not in ("", "-") for r in rows)


def file_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".gitignore"
    }


def test_s3_push_pull_round_trip(project):
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        env = git_env()
        env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket="navml-artifacts")
        # endpoint in the git-ignored local config, as the README tells users
        dvc(project, "remote", "modify", "--local", "storage", "endpointurl", endpoint, env=env)
        before = file_hashes(project / "data")
        run(["git", "add", "-A"], project, env)
        run(["git", "commit", "-qm", "outputs before push", "--allow-empty"], project, env)
        dvc(project, "push", env=env)
        keys = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                            aws_secret_access_key="testing").list_objects_v2(Bucket="navml-artifacts").get("KeyCount", 0)
        assert keys > 5
        shutil.rmtree(project / ".dvc" / "cache")
        for p in list((project / "data").iterdir()):
            if p.is_dir():
                shutil.rmtree(p)
        run(["git", "checkout", "--", "."], project, env)  # metrics files with cache: false live in git
        dvc(project, "pull", env=env)
        after = file_hashes(project / "data")
        assert after == before
        assert "up to date" in dvc(project, "status", env=env).stdout.lower()
    finally:
        server.stop()
