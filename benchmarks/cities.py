"""Cross-city check: a trained model applied to another synthetic city, through the same CLI stages as the pipeline.

    python benchmarks/cities.py --name north --seed 7 --center 10.75 60.0 --size-km 1.0 \
        [--model data/models/seg] [--det-model data/models/det] [--root data/bench/cities] [--from synth|predict|score|detect]
        [--role predict|train]

Writes a params copy for the city (``<root>/<name>/params.yaml``: the project's
params.yaml with the city's synth settings and every input path under
``<root>/<name>``), then runs ``python -m stages.<stage>`` for synth, extract,
cover, imagery, rasterize (the data), predict, vectorize, dedupe, score and
evaluate (the model on it). A held-out city (``--role predict``, the default)
is covered with ``split: {test: 1}``, so the test-split scores are whole-city
scores. ``--from predict`` reuses the city's data and reruns only the model
stages (another model). Prints the city's polygon F1, new-feature P/R and test
IoU, with the load average; ``--json`` writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

DATA = ["synth", "extract", "cover", "imagery", "rasterize"]
MODEL = ["predict", "vectorize", "dedupe", "score", "evaluate"]
DETECT = ["evaluate_detect"]


def city_params(base: dict, root: Path, seed: int, center: tuple[float, float], size_km: float, role: str) -> dict:
    p = json.loads(json.dumps(base))
    s = root / "synth"
    p["synth"].update(seed=seed, center=list(center), size_km=size_km)
    p["extract"]["pbf"] = str(s / "city.osm.pbf")
    p["cover"]["aoi"] = str(s / "aoi.geojson")
    if role == "predict":
        p["cover"]["split"] = {"train": 0.0, "val": 0.0, "test": 1.0}
    p["rasterize"]["complete"] = str(s / "truth/complete_aoi.geojson")
    p["imagery"]["geotiff"] = str(s / "ortho.tif")
    p["score"]["truth"] = str(s / "truth/lots.geojson")
    for c in p["classes"].values():
        if c.get("labels"):
            c["labels"] = str(s / "truth" / Path(c["labels"]).name)
    return p


def commands(root: Path, params: Path, model: str, det_model: str | None) -> dict[str, list[str]]:
    r = str(root)
    pp = ["--params", str(params)]
    tiles = ["--tiles", f"{r}/cover/tiles.csv"]
    out = {
        "synth": ["--out", f"{r}/synth", *pp],
        "extract": [f"{r}/synth/city.osm.pbf", "--out", f"{r}/extract", *pp],
        "cover": ["--labels", f"{r}/extract", "--out", f"{r}/cover", *pp],
        "imagery": [*tiles, "--store", f"{r}/store", *pp],
        "rasterize": ["--labels", f"{r}/extract", *tiles, "--store", f"{r}/store", *pp],
        "predict": [*tiles, "--store", f"{r}/store", "--model", model, "--out", f"{r}/predict", *pp],
        "vectorize": ["--store", f"{r}/predict", "--out", f"{r}/output/predictions.geojson", *pp],
        "dedupe": ["--predictions", f"{r}/output/predictions.geojson", "--labels", f"{r}/extract", "--out", f"{r}/output", *pp],
        "score": ["--predictions", f"{r}/output/predictions.geojson", "--new", f"{r}/output/new_features.geojson", *tiles,
                  "--out", f"{r}/metrics/features.json", *pp],
        "evaluate": [*tiles, "--store", f"{r}/store", "--model", model, "--out", f"{r}/metrics", *pp],
    }
    if det_model:
        out["evaluate_detect"] = [*tiles, "--store", f"{r}/store", "--model", det_model, "--out", f"{r}/metrics", *pp]
    return out


def summary(root: Path, detect: bool = False) -> dict:
    feats = json.loads((root / "metrics/features.json").read_text())
    seg = json.loads((root / "metrics/seg.json").read_text())
    out = {}
    for name, m in feats.items():
        if not isinstance(m, dict) or "new_features" not in m:
            continue
        split = feats["split"]
        out[name] = {
            "polygon_f1": m[split]["f1"], "polygon_p": m[split]["precision"], "polygon_r": m[split]["recall"],
            "new_p": m["new_features"]["precision"], "new_r": m["new_features"]["recall"],
            "new_tp": m["new_features"]["tp"], "new_truth": m["new_features"]["truth"],
            "test_iou": seg.get(name, {}).get("iou"),
        }
    det = root / "metrics/detect.json"
    if detect and det.exists():
        d = json.loads(det.read_text())
        out["detect_map50"] = d.get("map50", d.get("mAP@0.5"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--center", type=float, nargs=2, default=(10.75, 60.0), metavar=("LON", "LAT"))
    ap.add_argument("--size-km", type=float, default=1.0)
    ap.add_argument("--role", choices=("predict", "train"), default="predict")
    ap.add_argument("--model", default="data/models/seg")
    ap.add_argument("--det-model", default=None)
    ap.add_argument("--root", default="data/bench/cities")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--from", dest="start", choices=("synth", "predict", "score", "detect"), default="synth")
    ap.add_argument("--only-data", action="store_true", help="stop after rasterize (a training city)")
    ap.add_argument("--json", default=None, help="write the summary here")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=YAML",
                    help="change the city's params (e.g. predict.resample=false); repeatable")
    a = ap.parse_args()

    root = Path(a.root) / a.name
    root.mkdir(parents=True, exist_ok=True)
    params = root / "params.yaml"
    if a.start == "synth":
        base = yaml.safe_load(Path(a.params).read_text())
        params.write_text(yaml.safe_dump(city_params(base, root, a.seed, tuple(a.center), a.size_km, a.role), sort_keys=False))
    if a.sets:
        p = yaml.safe_load(params.read_text())
        for item in a.sets:
            key, value = item.split("=", 1)
            *parents, last = key.split(".")
            node = p
            for k in parents:
                node = node[k]
            node[last] = yaml.safe_load(value)
        params.write_text(yaml.safe_dump(p, sort_keys=False))
    stages = {"synth": DATA + MODEL, "predict": MODEL, "score": MODEL[2:], "detect": []}[a.start]
    if a.only_data:
        stages = [s for s in stages if s in DATA]
    elif a.det_model:
        stages = stages + DETECT
    cmds = commands(root, params, a.model, a.det_model)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    times = {}
    for stage in stages:
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", f"stages.{stage}", *cmds[stage]], env=env, capture_output=True, text=True)
        times[stage] = round(time.perf_counter() - t0, 1)
        last = [x for x in res.stdout.splitlines() if x.strip()][-1:] or [""]
        print(f"[{a.name}] {stage} {times[stage]} s: {last[0][:300]}", flush=True)
        if res.returncode:
            print(res.stderr[-3000:], file=sys.stderr)
            sys.exit(res.returncode)
    if a.only_data:
        return
    result = {
        "city": a.name, "model": a.det_model if a.start == "detect" else a.model, **summary(root, "evaluate_detect" in stages),
        "seconds": times, "load": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(result))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
