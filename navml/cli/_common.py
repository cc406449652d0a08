"""What every stage shares: reading and validating params.yaml, and turning errors into exit codes."""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import yaml

from navml.errors import ConfigError, NavmlError

if TYPE_CHECKING:
    from navml.config import Params

S = TypeVar("S")


def load_params(path: str | Path = "params.yaml", city: str | None = None) -> Params:
    """The whole params file, validated (every section, before any work); a one-line ConfigError otherwise.

    With ``city``: the params as that city of ``cities`` sees them (:meth:`navml.config.Params.for_city`)."""
    from navml.config import validate_params

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{p}: params file not found; run from the project root or pass --params") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    params = validate_params(data, str(path))
    return params.for_city(city) if city else params


def train_city_names(params: Params) -> list[str]:
    """The ``role: train`` cities of ``params`` for a ``--cities`` option; a one-line ConfigError when there is none."""
    names = params.train_cities()
    if not names:
        raise ConfigError("--cities: params has no city with role: train; add a `cities:` section or drop --cities")
    return names


def city_names(params: Params, cities: bool) -> list[str] | None:
    """The city names a ``--cities`` command runs over (:func:`train_city_names`), or None without ``--cities``."""
    return train_city_names(params) if cities else None


def city_sources(params: Params, tiles: list[Path], stores: list[Path], cities: bool) -> tuple[list[Path], list[Path]]:
    """The ``(tile indexes, stores)`` a training reads: the options as given (one store per index), or with ``cities``
    those of the ``role: train`` cities of ``params``."""
    if cities:
        inputs = [params.city(n) for n in train_city_names(params)]
        return [Path(c.tiles) for c in inputs], [Path(c.store) for c in inputs]
    if len(tiles) != len(stores):
        raise ConfigError(f"--tiles given {len(tiles)} time(s) but --store {len(stores)}: give one store per tile index")
    return list(tiles), list(stores)


def with_overrides(section: S, **given: Any) -> S:
    """``section`` with the options the user gave (not None) in place of its values, validated like the file."""
    from pydantic import ValidationError

    from navml.config import one_line

    changes = {k: v for k, v in given.items() if v is not None}
    if not changes:
        return section
    try:
        return type(section).model_validate({**section.model_dump(by_alias=True), **changes})
    except ValidationError as exc:
        line = one_line(exc, "option", model=type(section))
        raise ConfigError(re.sub(r"^option: (\w+)", lambda m: "--" + m.group(1).replace("_", "-"), line)) from None


def retrain_outcome(result: dict[str, Any], model: str, score: str, key: str) -> str:
    """What a retrain did, for its one-line report: copied, or mode, steps and the kept step.

    ``model`` names the first model ("model", "detector"); ``score`` the val metric shown
    with ``result[key]``, and a detector's ``score_threshold`` follows the step. A copied
    first model has neither.
    """
    if result["copied_first_model"]:
        return f"first {model} copied (no usable negative)"
    thr = f", score threshold {result['score_threshold']:.3f}" if "score_threshold" in result else ""
    kept = f" (no step beat the first {model} on val: it is kept)" if result["mode"] == "finetune" and result["best_step"] == 0 else ""
    second = f", with the second stage {result['refine_val_map50']:.4f}" if "refine_val_map50" in result else ""
    return f"{result['mode']} {result['steps_run']} steps, best val {score} {result[key]:.4f} at step {result['best_step']}{second}{thr}{kept}"


def exits(fn: Callable) -> Callable:
    """Decorate a command: NavmlError becomes ``navml: error: ...`` on stderr and exit 1.

    Any other exception is a bug: one line ``navml: internal error: ...`` and exit 2
    (``NAVML_DEBUG=1`` shows the traceback instead).
    """

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
        except click.exceptions.ClickException:
            raise
        except Exception as exc:
            if click.exceptions.Exit is type(exc) or os.environ.get("NAVML_DEBUG"):
                raise
            lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
            first = [x for x in lines if not x.endswith(":")] or lines  # TensorFlow starts with "in user code:"
            print(
                f"navml: internal error: {type(exc).__name__}: {first[0] if first else ''} "
                "(a bug: please report it; NAVML_DEBUG=1 shows the traceback)",
                file=sys.stderr,
            )
            sys.exit(2)

    return wrapper
