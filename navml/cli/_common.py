"""What every stage shares: reading params.yaml and turning errors into exit codes."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from navml.errors import ConfigError, NavmlError


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """The whole params file as a dict."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{p}: params file not found; run from the project root or pass --params") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of sections")
    return data


def section(params: dict[str, Any], name: str) -> dict[str, Any]:
    """One params section; a missing one is an error naming it."""
    if name not in params:
        raise ConfigError(f"params: missing section '{name}'")
    return params[name] or {}


def exits(fn: Callable) -> Callable:
    """Decorate a command: NavmlError becomes ``navml: error: ...`` on stderr and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NavmlError as exc:
            print(f"navml: error: {exc}", file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt:
            print("navml: interrupted; finished outputs are kept, partial ones were not written", file=sys.stderr)
            sys.exit(130)

    return wrapper
