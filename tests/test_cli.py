"""The CLI turns bad input into one line and a non-zero exit, and keeps earlier outputs."""

from __future__ import annotations

import re
from pathlib import Path

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


def test_unknown_params_key_is_one_line_naming_it(tmp_path):
    params = write_params(tmp_path, cover__splitt=0.3)
    (tmp_path / "data/cover").mkdir(parents=True)
    (tmp_path / "data/cover/tiles.csv").write_text("earlier output\n")
    proc = navml("cover", "--params", str(params), "--aoi", "10,50,10.01,50.01", "--out", "data/cover", cwd=tmp_path)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cover.splitt" in lines[0] and lines[0].startswith("navml: error:")
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
    assert proc.returncode == 1 and "segmentation, detection" in proc.stderr.splitlines()[0]


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
    assert proc.stderr.splitlines() == ["navml: error: params: 'post.turn_markings' names no segmentation class of 'classes' (those are: parking)"]
    params["post"] = {"parking": {"open_m": -1}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = navml("vectorize", "--params", "params.yaml", cwd=tmp_path)
    assert proc.returncode == 1 and "'post.parking.open_m' is -1.0" in proc.stderr
