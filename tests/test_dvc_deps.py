"""dvc.yaml is honest: every stage depends on all project code its command runs, and optional inputs work."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("navml", "stages")


def module_file(name: str) -> Path | None:
    """The project file of module ``name`` (a package's ``__init__.py``), or None outside the project."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT / Path(*name.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def imports_of(path: Path, name: str) -> set[str]:
    """Modules ``path`` (module ``name``) imports anywhere, also inside functions; ``from a import b`` gives a.b too."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def closure(module: str) -> set[Path]:
    """Project files run by ``python -m <module>``: its import closure, with the packages' ``__init__.py``."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__.py and a/b/__init__.py
            path = module_file(".".join(parts[:i]))
            if path is None or path in seen:
                continue
            seen.add(path)
            todo.extend(imports_of(path, ".".join(parts[:i])))
    return seen


def resolve(text: str, params: dict) -> str:
    """``${a.b}`` of dvc.yaml from params."""

    def value(m: re.Match) -> str:
        v = params
        for k in m.group(1).split("."):
            v = v[k]
        return str(v)

    return re.sub(r"\$\{([^}]+)\}", value, text)


def stages() -> dict:
    """dvc.yaml's stages, a ``foreach`` over ``cities`` expanded per city of params.yaml (``extract@denver``)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    out = {}
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        if "foreach" not in stage:
            out[name] = stage
            continue
        assert stage["foreach"] == "${cities}", f"{name}: foreach over {stage['foreach']}, not the cities"
        for key, item in params["cities"].items():
            body = yaml.safe_dump(stage["do"]).replace("${key}", key)
            for k, v in item.items():
                body = body.replace("${item.%s}" % k, str(v))
            out[f"{name}@{key}"] = yaml.safe_load(body)
    return out


def test_closure_sees_imports_inside_functions():
    files = {p.relative_to(ROOT).as_posix() for p in closure("stages.train")}
    assert {"stages/train.py", "navml/cli/train.py", "navml/config.py", "navml/errors.py", "navml/segment/train.py"} <= files
    assert "navml/geo/grid.py" in files  # GridParams.grid imports it inside a method
    assert "navml/cli/dedupe.py" not in files  # the command table is not imported by a stage


@pytest.mark.parametrize("name", list(stages()))
def test_stage_deps_cover_its_code(name):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    stage = stages()[name]
    m = re.match(r"python -m (stages\.\w+)", stage["cmd"])
    assert m, f"{name}: cmd is not `python -m stages.<name>`"
    deps = [resolve(d, params).rstrip("/") for d in stage.get("deps", [])]
    missing = sorted(
        f.relative_to(ROOT).as_posix()
        for f in closure(m.group(1))
        if not any(f.relative_to(ROOT).as_posix() == d or f.relative_to(ROOT).as_posix().startswith(d + "/") for d in deps)
    )
    assert not missing, f"stage {name} runs {missing} but does not depend on them"


@pytest.mark.parametrize("name", [n for n in stages() if n != "check"])
def test_every_stage_waits_for_the_params_check(name):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    stamp = resolve(stages()["check"]["outs"][0], params)
    assert stamp in [resolve(d, params) for d in stages()[name]["deps"]]


def test_no_dep_names_a_labels_file_of_a_class():
    deps = "\n".join(str(d) for stage in stages().values() for d in stage.get("deps", []))
    assert "markings.geojson" not in deps and "${rasterize.complete}" not in deps and "${imagery.geotiff}" not in deps


def test_params_check_stops_on_a_late_stage_mistake(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["dedupe"]["min_overlap"] = 0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run(
        [sys.executable, "-m", "stages.check", "--params", str(tmp_path / "params.yaml"), "--stamp", str(tmp_path / "ok")],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "dedupe.min_overlap" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "ok").exists()


def test_check_refuses_inputs_dvc_does_not_track(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["classes"]["turn_markings"]["labels"] = "/somewhere/markings.geojson"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, "-m", "stages.check", "--params", str(tmp_path / "params.yaml"), "--dvc"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1 and "classes.turn_markings.labels" in proc.stderr and "inputs/labels" in proc.stderr
    params["classes"]["turn_markings"]["labels"] = "inputs/labels/markings.geojson"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


def copy_project(dst: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    for f in files:
        if f and (ROOT / f).is_file() and not f.startswith("data/"):
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f)
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)


@pytest.mark.slow
def test_optional_inputs_left_empty_keep_dvc_working(tmp_path):
    copy_project(tmp_path)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["cities"]["oslo"] = {  # a held-out city of own data: tile URL imagery, OSM complete nowhere said ("" = everywhere)
        "role": "predict", "xyz": "https://tiles.example.invalid/{z}/{x}/{y}.png", "osm": "inputs/osm/oslo.osm.pbf",
        "aoi": "10.74,59.99,10.76,60.01", "complete": "", "labels": {"turn_markings": "inputs/labels/oslo_markings.geojson"},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {"DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "unexpected error" not in (proc.stdout + proc.stderr).lower()
    assert "imagery@oslo" in proc.stdout and "rasterize@oslo" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro", "check"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_dvc_repro_stops_at_the_check_stage_on_a_late_mistake(tmp_path):
    copy_project(tmp_path)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["dedupe"]["min_overlap"] = 0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {"DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=tmp_path, capture_output=True, text=True, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Running stage 'check'" in out and "Running stage 'synth'" not in out
    assert [ln for ln in out.splitlines() if ln.startswith("navml: error:")] == [
        "navml: error: params.yaml: dedupe.min_overlap: 0 is out of range; it must be > 0.0 "
        "(min_overlap: a prediction at or above this overlap is already in OSM)"
    ]
    assert not (tmp_path / "data").exists()
