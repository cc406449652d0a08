"""The CLI turns bad input into one line and a non-zero exit, and keeps earlier outputs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from conftest import navml
from typer.testing import CliRunner

from navml.cli import COMMANDS, app

ROOT = Path(__file__).resolve().parents[1]


def write_params(tmp_path: Path, **changes) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in changes.items():
        section, _, name = key.partition("__")
        params[section][name] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_help_lists_every_stage(tmp_path):
    proc = navml("--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    listing = proc.stdout.split("Commands", 1)[1]
    # rows of the command list start with the name (rich box or plain); continuation rows with spaces
    listed = re.findall(r"^[\s│]{1,3}([a-z][\w-]*)\s{2,}\S", listing, flags=re.M)
    assert listed == list(COMMANDS)
    runner = CliRunner()
    for name in COMMANDS:  # each one is registered with its own help
        sub = runner.invoke(app, [name, "--help"])
        assert sub.exit_code == 0 and "Usage:" in sub.output, (name, sub.output)


def test_option_help_and_defaults_come_from_the_params_model(tmp_path):
    out = navml("synth", "--help", cwd=tmp_path).stdout
    assert "synth.size_km of params (1.6 as shipped)" in " ".join(out.replace("│", " ").split())
    out = " ".join(navml("vectorize", "--help", cwd=tmp_path).stdout.replace("│", " ").split())
    assert "post.<class>.threshold (0.6 as shipped)" in out and "vectorize.layer of params ('probs' as shipped)" in out


def test_bad_option_value_is_one_line(tmp_path):
    proc = navml("synth", "--params", str(ROOT / "params.yaml"), "--size-km", "50", "--out", "o", cwd=tmp_path)
    assert proc.returncode == 1 and not (tmp_path / "o").exists()
    assert proc.stderr.splitlines() == [
        "navml: error: --size-km: 50.0 is out of range; it must be <= 20.0 (size_km: side of the square city, km)"
    ]


def test_check_validates_the_whole_file(tmp_path):
    assert navml("check", "--params", str(ROOT / "params.yaml"), cwd=tmp_path).returncode == 0
    params = write_params(tmp_path, imagery__workers="eight")
    proc = navml("check", "--params", str(params), "--stamp", "ok", cwd=tmp_path)
    assert proc.returncode == 1 and not (tmp_path / "ok").exists()
    assert proc.stderr.splitlines() == [f"navml: error: {params}: imagery.workers: 'eight' is not an integer (workers: parallel downloads or warps)"]


def test_unknown_params_key_is_one_line_naming_it(tmp_path):
    params = write_params(tmp_path, cover__splitt=0.3)
    (tmp_path / "data/cover").mkdir(parents=True)
    (tmp_path / "data/cover/tiles.csv").write_text("earlier output\n")
    proc = navml("cover", "--params", str(params), "--aoi", "10,50,10.01,50.01", "--out", "data/cover", cwd=tmp_path)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown key 'cover.splitt'" in lines[0] and lines[0].startswith(f"navml: error: {params}:")
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "data/cover/tiles.csv").read_text() == "earlier output\n"


def test_unknown_class_key_and_task(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["classes"]["parking"]["treshold"] = 0.4
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = navml("rasterize", "--params", "params.yaml", cwd=tmp_path)
    assert proc.returncode == 1 and "classes.parking.treshold" in proc.stderr
    params["classes"]["parking"].pop("treshold")
    params["classes"]["parking"]["task"] = "instance"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = navml("rasterize", "--params", "params.yaml", cwd=tmp_path)
    assert proc.returncode == 1 and "'segmentation' or 'detection'" in proc.stderr.splitlines()[0]


def test_missing_tile_index_says_which_stage_to_run(tmp_path):
    proc = navml("rasterize", "--params", str(ROOT / "params.yaml"), "--tiles", "nope.csv", "--labels", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 1
    assert "nope.csv" in proc.stderr and "cover" in proc.stderr


def test_post_section_names_only_segmentation_classes(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["post"]["turn_markings"] = {"threshold": 0.5}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = navml("vectorize", "--params", "params.yaml", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == ["navml: error: params.yaml: post.turn_markings: names no segmentation class of 'classes' (those are: parking)"]
    params["post"] = {"parking": {"open_m": -1}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = navml("vectorize", "--params", "params.yaml", cwd=tmp_path)
    assert proc.returncode == 1 and "post.parking.open_m: -1 is out of range; it must be >= 0.0" in proc.stderr


def test_an_unexpected_exception_is_one_line_with_exit_2(capsys, monkeypatch):
    import typer

    from navml.cli._common import exits

    @exits
    def broken() -> None:
        raise TypeError("in user code:\n\n    File x.py\n  Using a symbolic tensor as a bool is not allowed\n")

    monkeypatch.delenv("NAVML_DEBUG", raising=False)
    with pytest.raises(SystemExit) as info:
        broken()
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert err.startswith("navml: internal error: TypeError: File x.py") and "NAVML_DEBUG=1" in err
    monkeypatch.setenv("NAVML_DEBUG", "1")
    with pytest.raises(TypeError):
        broken()

    @exits
    def stops() -> None:
        raise typer.Exit(3)

    with pytest.raises(typer.Exit):  # typer's own exits pass through
        stops()


def test_retrain_outcome_says_which_model_was_kept():
    from navml.cli._common import retrain_outcome

    copied = {"copied_first_model": True, "mode": "finetune"}  # no score, no step: nothing was trained
    assert retrain_outcome(copied, "detector", "mAP@0.5", "best_val_map50") == "first detector copied (no usable negative)"
    base = {"copied_first_model": False, "mode": "finetune", "steps_run": 160}
    best = retrain_outcome({**base, "best_step": 120, "best_val_iou": 0.54251}, "model", "IoU", "best_val_iou")
    assert best == "finetune 160 steps, best val IoU 0.5425 at step 120"
    kept = retrain_outcome({**base, "best_step": 0, "best_val_map50": 0.3, "score_threshold": 0.25}, "detector", "mAP@0.5", "best_val_map50")
    assert kept == "finetune 160 steps, best val mAP@0.5 0.3000 at step 0, score threshold 0.250 (no step beat the first detector on val: it is kept)"
