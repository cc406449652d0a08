"""What the names of turn-arrow classes mean: OSM ``turn:lanes`` values and mirror images.

A detection name is read as OSM turn values joined by ``_`` in any order:
``through_left`` is ``left;through``, ``left_right`` is ``left;right``; the
compound values ``slight_left``, ``sharp_right``, ``merge_to_left`` … are
recognised as one value. Two tables are derived from the names, so that a new
arrow class is configuration, not code:

* :func:`turn_value`: the ``turn:lanes`` value of a name, its parts in OSM's
  left-to-right order (``through_left`` -> ``left;through``).
* :func:`mirror_names`: the name a mirror image of the arrow carries. The kind
  of an arrow is relative to the direction of travel it points along, so a
  mirror image (any flip) swaps left and right in every part
  (``left`` <-> ``right``, ``through_left`` <-> ``through_right``;
  ``through`` and ``left_right`` map to themselves).

Both accept an explicit mapping (a registry's ``mirror`` / ``turn_values``
entry) that overrides the derivation for the names it lists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from navml.errors import ConfigError

#: OSM ``turn:lanes`` values in the order OSM lists them within one lane (left to right).
TURN_ORDER = (
    "reverse",
    "sharp_left",
    "left",
    "slight_left",
    "merge_to_right",
    "through",
    "merge_to_left",
    "slight_right",
    "right",
    "sharp_right",
    "none",
)

_PREFIXES = ("sharp", "slight")


def turn_parts(name: str) -> tuple[str, ...]:
    """OSM turn values in a class name, in :data:`TURN_ORDER` (``through_left`` -> ``("left", "through")``)."""
    tokens = [t for t in str(name).lower().split("_") if t]
    parts: list[str] = []
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t in _PREFIXES and i + 1 < len(tokens):
            t, i = f"{t}_{tokens[i + 1]}", i + 1
        elif t == "merge" and i + 2 < len(tokens) and tokens[i + 1] == "to":
            t, i = f"merge_to_{tokens[i + 2]}", i + 2
        if t not in TURN_ORDER:
            raise ConfigError(
                f"classes: the detection name '{name}' is not made of OSM turn values ({', '.join(TURN_ORDER)}) joined by '_'; "
                "give its 'turn_values' and 'mirror' entries explicitly"
            )
        parts.append(t)
        i += 1
    if not parts:
        raise ConfigError(f"classes: empty detection name '{name}'")
    return tuple(sorted(set(parts), key=TURN_ORDER.index))


def turn_value(name: str, overrides: Mapping[str, str] | None = None) -> str:
    """The OSM ``turn:lanes`` value of one lane with this arrow (``through_right`` -> ``through;right``)."""
    if overrides and name in overrides:
        return str(overrides[name])
    return ";".join(turn_parts(name))


def _mirror_part(part: str) -> str:
    if part.endswith("left"):
        return part[: -len("left")] + "right"
    if part.endswith("right"):
        return part[: -len("right")] + "left"
    return part


def mirror_names(names: Sequence[str], mirror: Mapping[str, str] | None = None) -> dict[str, str]:
    """Name of each class's mirror image, for every name in ``names``.

    ``mirror`` (from the class registry) overrides the derivation for the names
    it lists; it is made symmetric (``a -> b`` implies ``b -> a``). Raises
    :class:`ConfigError` when a mirror image is not among ``names`` or the
    table is not its own inverse.
    """
    names = [str(n) for n in names]
    given = {str(k): str(v) for k, v in (mirror or {}).items()}
    for k, v in given.items():
        if k not in names or v not in names:
            raise ConfigError(f"classes: mirror entry '{k}: {v}' names a class that is not among the names ({', '.join(names)})")
        if given.get(v, k) != k:
            raise ConfigError(f"classes: mirror maps '{k}' to '{v}' but '{v}' to '{given[v]}'; a mirror table must be its own inverse")
    given.update({v: k for k, v in given.items()})
    by_parts = {}
    for n in names:
        if n not in given:
            by_parts.setdefault(turn_parts(n), n)
    out: dict[str, str] = {}
    for n in names:
        if n in given:
            out[n] = given[n]
            continue
        mirrored = tuple(sorted({_mirror_part(p) for p in turn_parts(n)}, key=TURN_ORDER.index))
        if mirrored not in by_parts:
            raise ConfigError(
                f"classes: the mirror image of '{n}' ({';'.join(mirrored)}) is not among the names ({', '.join(names)}); "
                "add that class or give a 'mirror' mapping"
            )
        out[n] = by_parts[mirrored]
    for k, v in out.items():
        if out[v] != k:
            raise ConfigError(f"classes: mirror maps '{k}' to '{v}' but '{v}' to '{out[v]}'; give a 'mirror' mapping")
    return out
