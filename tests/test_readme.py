"""The README's two commands are the ones a new user and CI run."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    lines = (ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0].splitlines()
    return [ln.strip() for ln in lines if ln.startswith("python3.11 -m venv")]


def test_quick_start_has_exactly_two_commands():
    cmds = readme_commands()
    assert len(cmds) == 2
    assert cmds[0].endswith("dvc repro")
    assert "pytest" in cmds[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert readme_commands()[1] in ci
