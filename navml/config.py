"""Validated parameters: the class registry and key checks for params sections.

The library never reads ``params.yaml``; the stages load it and hand sections
(plain dicts) to these functions, which turn typos into a one-line
:class:`~navml.errors.ConfigError` naming the key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from navml.errors import ConfigError

TASKS = ("segmentation", "detection")


def check_keys(section: Mapping[str, Any] | None, allowed: Iterable[str], where: str, required: Iterable[str] = ()) -> dict:
    """Return ``section`` as a dict after checking it has no unknown and no missing keys."""
    if section is None:
        section = {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"params: '{where}' must be a mapping, got {type(section).__name__}")
    allowed = set(allowed)
    for key in section:
        if key not in allowed:
            raise ConfigError(
                f"params: unknown key '{where}.{key}' (allowed: {', '.join(sorted(allowed))}); fix the spelling or remove it"
            )
    for key in required:
        if key not in section:
            raise ConfigError(f"params: missing key '{where}.{key}'")
    return dict(section)


@dataclass(frozen=True)
class PostProcess:
    """Vectorization settings of a segmentation class; sizes in ground metres."""

    threshold: float = 0.5
    open_m: float = 1.0
    close_m: float = 2.0
    simplify_m: float = 1.0
    min_area_m2: float = 100.0


@dataclass(frozen=True)
class ClassSpec:
    """One entry of the class registry (``classes:`` in params.yaml)."""

    name: str
    task: str
    #: OSM tag filter: key -> accepted values ("*" accepts any value).
    tags: dict[str, list[str]] = field(default_factory=dict)
    #: OSM tags that exclude a feature from the labels (not visible from above).
    exclude: dict[str, list[str]] = field(default_factory=dict)
    #: Tags written on new features in the JOSM file; defaults to the first value of each filter tag.
    osm_tags: dict[str, str] = field(default_factory=dict)
    #: Display colour (R, G, B) in exports.
    color: tuple[int, int, int] = (255, 0, 0)
    #: Optional vector file (GeoJSON/GeoPackage) with labels instead of OSM.
    labels: str | None = None
    #: Attribute of ``labels`` that holds the sub-class name (detection).
    label_field: str | None = None
    #: Sub-class names of a detection class, in class-id order.
    names: tuple[str, ...] = ()
    post: PostProcess = PostProcess()
    # --- class registry on real data (issue 7, osm): see docs/classes.md ---
    #: GeoJSON of the areas where this class is completely mapped; "" = everywhere;
    #: None = the ``rasterize.complete`` default. Segmentation classes only.
    complete: str | None = None
    #: Box size (east-west, north-south) in ground metres for point labels and for
    #: the zero-width/height side of a line's bounding box. Detection classes only.
    box_m: tuple[float, float] | None = None
    #: OSM key whose value names the sub-class of an OSM feature (detection, several names).
    name_tag: str | None = None
    #: OSM value of ``name_tag`` -> one of ``names`` (values equal to a name need no entry).
    name_map: dict[str, str] = field(default_factory=dict)

    def name_of(self, tags: Mapping[str, str]) -> str | None:
        """Sub-class name of an OSM feature with ``tags``; None when it names none of ``names``."""
        if len(self.names) <= 1:
            return self.names[0] if self.names else self.name
        value = tags.get(self.name_tag) if self.name_tag else None
        if value is None:
            return None
        value = self.name_map.get(value, value)
        return value if value in self.names else None

    def matches(self, tags: Mapping[str, str]) -> bool:
        """Whether OSM ``tags`` pass this class's tag filter (exclusions not applied)."""
        if not self.tags:
            return False
        return all(k in tags and ("*" in v or tags[k] in v) for k, v in self.tags.items())

    def excluded(self, tags: Mapping[str, str]) -> bool:
        """Whether OSM ``tags`` mark a feature as not visible (e.g. ``parking=underground``)."""
        return any(k in tags and ("*" in v or tags[k] in v) for k, v in self.exclude.items())


_CLASS_KEYS = {"task", "tags", "exclude", "osm_tags", "color", "labels", "label_field", "names"}
#: Keys of a class entry added for real data (issue 7, osm); parsed by :func:`_registry_extras`.
_EXTRA_KEYS = {"complete", "box_m", "name_tag", "name_map"}


def _tag_filter(value: Any, where: str) -> dict[str, list[str]]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"params: '{where}' must map OSM keys to a value or a list of values")
    out = {}
    for k, v in value.items():
        vals = v if isinstance(v, list) else [v]
        out[str(k)] = [str(x) for x in vals]
    return out


def parse_post(entry: Mapping[str, Any] | None, where: str) -> PostProcess:
    """Vectorization settings of one class from ``post.<class>`` (missing keys take the defaults)."""
    post = PostProcess(**{k: float(v) for k, v in check_keys(entry, PostProcess.__dataclass_fields__, where).items()})
    if not 0.0 <= post.threshold <= 1.0:
        raise ConfigError(f"params: '{where}.threshold' is {post.threshold}; it must lie in 0..1")
    for key in ("open_m", "close_m", "simplify_m", "min_area_m2"):
        if getattr(post, key) < 0:
            raise ConfigError(f"params: '{where}.{key}' is {getattr(post, key)}; it must be 0 or more")
    return post


def parse_classes(section: Mapping[str, Any], post: Mapping[str, Any] | None = None) -> list[ClassSpec]:
    """The class registry from the ``classes`` params section, in declared order.

    ``post`` is the ``post`` params section: vectorization settings per
    segmentation class. It is a section of its own so that tuning it reruns
    only the stages after prediction, not the whole pipeline.
    """
    if not isinstance(section, Mapping) or not section:
        raise ConfigError("params: 'classes' must declare at least one class")
    post = post or {}
    if not isinstance(post, Mapping):
        raise ConfigError("params: 'post' must map segmentation class names to their settings")
    specs = []
    for name, entry in section.items():
        where = f"classes.{name}"
        entry = check_keys(entry, _CLASS_KEYS | _EXTRA_KEYS, where, required=("task",))
        if entry["task"] not in TASKS:
            raise ConfigError(f"params: '{where}.task' is '{entry['task']}'; use one of {', '.join(TASKS)}")
        tags = _tag_filter(entry.get("tags"), f"{where}.tags")
        if not tags and not entry.get("labels"):
            raise ConfigError(f"params: '{where}' needs 'tags' (an OSM tag filter) or 'labels' (a vector file)")
        osm_tags = {str(k): str(v) for k, v in (entry.get("osm_tags") or {}).items()}
        if not osm_tags:
            osm_tags = {k: v[0] for k, v in tags.items() if v and v[0] != "*"}
        color = tuple(int(c) for c in entry.get("color", (255, 0, 0)))
        if len(color) != 3 or not all(0 <= c <= 255 for c in color):
            raise ConfigError(f"params: '{where}.color' must be three integers 0..255")
        names = tuple(str(n) for n in entry.get("names") or ())
        if entry["task"] == "detection" and not names:
            names = (name,)
        specs.append(
            ClassSpec(
                name=str(name),
                task=entry["task"],
                tags=tags,
                exclude=_tag_filter(entry.get("exclude"), f"{where}.exclude"),
                osm_tags=osm_tags,
                color=color,  # type: ignore[arg-type]
                labels=entry.get("labels") or None,
                label_field=entry.get("label_field"),
                names=names,
                post=parse_post(post.get(name), f"post.{name}"),
                **_registry_extras(entry, where, names),
            )
        )
    seg = [c.name for c in specs if c.task == "segmentation"]
    for name in post:
        if name not in seg:
            raise ConfigError(f"params: 'post.{name}' names no segmentation class of 'classes' (those are: {', '.join(seg) or 'none'})")
    return specs


def _registry_extras(entry: Mapping[str, Any], where: str, names: tuple[str, ...]) -> dict[str, Any]:
    """``complete``, ``box_m``, ``name_tag`` and ``name_map`` of one class entry, checked."""
    task = entry["task"]
    out: dict[str, Any] = {}
    if "complete" in entry:
        value = entry["complete"]
        if task != "segmentation":
            raise ConfigError(f"params: '{where}.complete' applies to segmentation classes only; remove it")
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"params: '{where}.complete' must be a GeoJSON path or \"\" (complete everywhere)")
        out["complete"] = value or ""
    for key in ("box_m", "name_tag", "name_map"):
        if entry.get(key) is not None and task != "detection":
            raise ConfigError(f"params: '{where}.{key}' applies to detection classes only; remove it")
    if entry.get("box_m") is not None:
        value = entry["box_m"]
        sizes = value if isinstance(value, (list, tuple)) else [value]
        try:
            box_m = tuple(float(v) for v in sizes)
        except (TypeError, ValueError):
            box_m = ()
        if len(box_m) == 1:
            box_m = (box_m[0], box_m[0])
        if len(box_m) != 2 or not all(0.0 < v <= 1000.0 for v in box_m) or isinstance(value, bool):
            raise ConfigError(f"params: '{where}.box_m' is {value!r}; give metres > 0: one number or [east-west, north-south], e.g. [5.0, 2.0]")
        out["box_m"] = box_m
    tag = entry.get("name_tag")
    if tag is not None:
        if not isinstance(tag, str) or not tag:
            raise ConfigError(f"params: '{where}.name_tag' must be an OSM key, e.g. turn")
        out["name_tag"] = tag
    mapping = entry.get("name_map")
    if mapping:
        if not isinstance(mapping, Mapping):
            raise ConfigError(f"params: '{where}.name_map' must map OSM values of name_tag to names")
        if not tag:
            raise ConfigError(f"params: '{where}.name_map' needs '{where}.name_tag' (the OSM key it reads)")
        out["name_map"] = {_osm_str(k): str(v) for k, v in mapping.items()}
        bad = sorted(v for v in out["name_map"].values() if v not in names)
        if bad:
            raise ConfigError(f"params: '{where}.name_map' maps to '{bad[0]}', not one of {where}.names {list(names)}")
    if task == "detection" and len(names) > 1 and entry.get("tags") and not entry.get("labels") and not tag:
        raise ConfigError(f"params: '{where}' has several names and takes OSM features: set '{where}.name_tag' (the OSM key naming each)")
    return out


def _osm_str(value: Any) -> str:
    """An OSM tag value as written in OSM (YAML reads an unquoted yes/no as a boolean)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def segmentation_classes(classes: list[ClassSpec]) -> list[ClassSpec]:
    """Segmentation classes in mask-index order: index ``i + 1`` in masks (0 is background)."""
    return [c for c in classes if c.task == "segmentation"]


def detection_names(classes: list[ClassSpec]) -> list[tuple[str, str]]:
    """``(class, sub-class name)`` of every detection label, in box class-id order."""
    return [(c.name, n) for c in classes if c.task == "detection" for n in c.names]
