"""The README is a map with two commands, and the numbers it shows are the committed ones."""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def quick_start() -> str:
    return README.split("## Quick start", 1)[1].split("\n## ", 1)[0]


def readme_commands() -> list[str]:
    return [ln.strip() for ln in quick_start().splitlines() if ln.startswith("python3.11 -m venv")]


#: the city whose results the quick start shows: the held-out one
SHOWN = ROOT / "data" / "cities" / "results" / "oslo"


def committed(name: str) -> dict:
    return json.loads((SHOWN / "metrics" / name).read_text())


def test_quick_start_has_exactly_two_commands():
    cmds = readme_commands()
    assert len(cmds) == 2
    assert cmds[0].endswith("dvc repro") and "pip install -q -e ." in cmds[0]  # -q: no pip noise
    assert "ruff check ." in cmds[1] and cmds[1].endswith("python -m pytest")


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert readme_commands()[1] in ci


def test_quick_start_says_how_to_use_your_own_bucket():
    assert "dvc remote modify storage url s3://" in quick_start()


def test_readme_stays_a_map():
    assert len(README.encode()) < 15_500
    assert README.count("\n## ") <= 10


def test_sample_output_shows_the_committed_metrics():
    """The quick start's sample lines are the ones the committed metrics give (update both together)."""
    seg, features = committed("seg.json"), committed("features.json")
    out = json.loads((SHOWN / "output" / "summary.json").read_text())
    p = seg["parking"]
    nf, test = features["parking"]["new_features"], features["parking"]["test"]
    shown = quick_start()
    assert f"parking IoU {p['iou']:.4f} P {p['precision']:.3f} R {p['recall']:.3f} @ {p['threshold']:.2f}" in shown
    assert f"{out['predicted']} predicted, {out['matched_existing']} already in OSM" in shown
    assert f"{out['new']} new" in shown
    assert f"new features P {nf['precision']:.3f} R {nf['recall']:.3f}" in shown
    assert f"F1 {test['f1']:.3f}" in shown
    gap = json.loads((ROOT / "data" / "metrics" / "cities.json").read_text())
    assert f"worst held-out minus in-city {gap['worst_gap']:+.3f}" in shown


def test_threshold_example_is_the_committed_models():
    page = (ROOT / "docs" / "stages" / "train.md").read_text()
    m = re.search(r'`\{"parking": \{"threshold": ([\d.]+), "val_iou": ([\d.]+)\}\}`', page)
    assert m, "docs/stages/train.md: the thresholds.json example is gone"
    p = committed("seg.json")["parking"]
    assert float(m[1]) == round(p["threshold"], 2) and float(m[2]) == round(p["val_iou"], 3)
