"""The params model: one typed definition per ``params.yaml`` section.

Each section is a pydantic model holding its keys, types, defaults, ranges
and help text; :class:`Params` validates the whole file at once, before any
work starts. :func:`validate_params` turns the first problem into a one-line
:class:`~navml.errors.ConfigError` naming the file and the key, e.g.
``params.yaml: train.steps: 'ten' is not an integer (steps: optimizer steps ...)``.

The defaults of the models are the values of the shipped ``params.yaml``
(``tests/test_config.py`` checks it), so every default is written here once;
the CLI takes its option defaults and help texts from these fields.

The library never reads ``params.yaml``: stages and CLI commands validate it
here and hand typed sections (or the runtime :class:`ClassSpec` registry) to
library functions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, get_args, get_type_hints

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from navml.errors import ConfigError

TASKS = ("segmentation", "detection")
SPLITS = ("train", "val", "test")


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


# --- OSM tag values as people write them in YAML ------------------------------


def osm_value(value: Any) -> str:
    """An OSM tag value from YAML: ``yes``/``no`` (YAML booleans) back to "yes"/"no", numbers as text.

    ``~`` (null) is refused: it is no OSM value and would silently match nothing.
    """
    if value is True:
        return "yes"
    if value is False:
        return "no"
    if value is None:
        raise ValueError("~ (null) is no OSM tag value; write the value, quoted if in doubt (\"yes\")")
    if isinstance(value, (int, float, str)):
        return str(value)
    raise ValueError(f"{value!r} is no OSM tag value; write a text such as \"yes\" (or a list of them in a filter)")


def _osm_mapping(value: Any, convert, example: str) -> dict:
    """``{key: value}`` from YAML with OSM-string keys and ``convert``-ed values; errors name the key."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"must map OSM keys to {example}")
    out = {}
    for k, v in value.items():
        key = osm_value(k)
        try:
            out[key] = convert(v)
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
    return out


def _values(v: Any) -> list[str]:
    vals = v if isinstance(v, (list, tuple)) else [v]
    if not vals:
        raise ValueError("the list of values is empty")
    return [osm_value(x) for x in vals]


def _one_value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        raise ValueError("needs one value, not a list")
    return osm_value(v)


def _tag_filter(value: Any) -> dict[str, list[str]]:
    """``{key: value or [values]}`` -> ``{key: [values]}`` with OSM strings."""
    return _osm_mapping(value, _values, "a value or a list of values, e.g. {amenity: parking}")


def _osm_tags(value: Any) -> dict[str, str]:
    """``{key: value}`` written on new features, with OSM strings."""
    return _osm_mapping(value, _one_value, "one value each, e.g. {amenity: parking}")


TagFilter = Annotated[dict[str, list[str]], BeforeValidator(_tag_filter)]
OsmTags = Annotated[dict[str, str], BeforeValidator(_osm_tags)]


def _box_m(value: Any) -> Any:
    """``box_m``: one number (a square) or ``[east-west, north-south]``, metres."""
    if isinstance(value, bool):
        raise ValueError("give metres > 0: one number or [east-west, north-south], e.g. [5.0, 2.0]")
    if isinstance(value, (int, float)):
        return (value, value)
    return value


BoxMetres = Annotated[
    tuple[Annotated[float, Field(gt=0.0, le=1000.0)], Annotated[float, Field(gt=0.0, le=1000.0)]], BeforeValidator(_box_m)
]


def _empty_none(value: Any) -> Any:
    return None if value == "" else value


# --- runtime objects of the library --------------------------------------------


@dataclass(frozen=True)
class PostProcess:
    """Vectorization settings of a segmentation class (``post.<class>``); sizes in ground metres.

    A plain frozen dataclass for the library; pydantic validates it (types,
    ranges, unknown keys) when it comes from ``params.yaml``.
    """

    __pydantic_config__ = ConfigDict(extra="forbid")

    threshold: Annotated[float, Field(ge=0.0, le=1.0, description="probability 0..1 above which a pixel belongs to the class")] = 0.6
    open_m: Annotated[float, Field(ge=0.0, description="morphological opening, metres: removes specks narrower than this")] = 3.0
    close_m: Annotated[float, Field(ge=0.0, description="closing, metres: fills gaps narrower than this")] = 2.0
    simplify_m: Annotated[float, Field(ge=0.0, description="Douglas-Peucker tolerance, metres")] = 1.5
    min_area_m2: Annotated[float, Field(ge=0.0, description="smaller polygons are dropped, m²")] = 500.0


@dataclass(frozen=True)
class ClassSpec:
    """One entry of the class registry (``classes:`` in params.yaml), as the library uses it."""

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
    #: Name -> name of its mirror image, where the derivation from the name cannot tell (detection).
    mirror: dict[str, str] = field(default_factory=dict)
    #: Name -> its OSM ``turn:lanes`` value, where the derivation from the name cannot tell (detection).
    turn_values: dict[str, str] = field(default_factory=dict)

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


# --- the sections ----------------------------------------------------------------


class Section(BaseModel):
    """A params section: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of field ``name`` (for CLI option help)."""
        return cls.model_fields[name].get_default(call_default_factory=True)

    @classmethod
    def help(cls, name: str) -> str:
        """The help text of field ``name``."""
        return cls.model_fields[name].description or name


class PathsParams(Section):
    """Where each stage writes (used by dvc.yaml; own input files go under ``inputs``)."""

    synth: str = Field("data/synth", description="synthetic city (synth stage)")
    models: str = Field("data/models", description="trained models (train stage)")
    metrics: str = Field("data/metrics", description="metrics and plots (train, evaluate, score stages)")
    inputs: str = Field(
        "inputs",
        description="own input files DVC tracks: <inputs>/labels (labels, complete areas), <inputs>/imagery (GeoTIFFs)",
    )
    check: str = Field("data/check", description="stamp of the params check (check stage)")
    cities: str = Field(
        "data/cities", description="cities of `cities`: data in <cities>/<role>/<name> (synth, extract, cover, store), results in <cities>/results/<name>"
    )
    first: str = Field(
        "data/first", description="the first model (before hard-negative mining) and its outputs: models, metrics, predict, output; "
        "per city of `cities` in <first>/<role>/<name>",
    )
    mining: str = Field("data/mining", description="hard negatives per model (<mining>/seg/hard_negatives.geojson), summary, review export (mine stage)")


class SynthParams(Section):
    """The built-in synthetic city."""

    seed: int = Field(42, ge=0, description="random seed of the city")
    center: tuple[Annotated[float, Field(ge=-180, le=180)], Annotated[float, Field(ge=-80, le=84)]] = Field(
        (-104.9903, 39.7392), description="city centre (lon, lat) in degrees"
    )
    size_km: float = Field(1.6, ge=0.2, le=20, description="side of the square city, km")
    gsd_m: float = Field(0.3, ge=0.05, le=2.0, description="ground sample distance of the orthophoto, metres")
    unmapped_share: float = Field(0.25, ge=0.0, lt=1.0, description="share of visible lots left out of OSM")
    shift_m: float = Field(2.0, ge=0.0, le=50.0, description="max offset of mapped outlines, metres")
    decoy_share: float = Field(
        0.5, ge=0.0, le=1.0,
        description="how many look-alikes the city draws (plazas, flat grey roofs, courts, paved yards; painted words): 0 few .. 1 many",
    )


class ClassParams(Section):
    """One entry of ``classes``: what to learn and how to label it."""

    task: Literal["segmentation", "detection"] = Field(description="segmentation (masks, a U-Net) or detection (boxes)")
    tags: TagFilter = Field({}, description="OSM tag filter: key -> value or list of values ('*' = any value)")
    exclude: TagFilter = Field({}, description="OSM tags that drop a matching feature (not visible from above)")
    osm_tags: OsmTags = Field({}, description="tags written on new features; default: the first value of each filter tag")
    color: tuple[
        Annotated[int, Field(ge=0, le=255)], Annotated[int, Field(ge=0, le=255)], Annotated[int, Field(ge=0, le=255)]
    ] = Field(ClassSpec.color, description="display colour (R, G, B), 0..255")
    labels: Annotated[str | None, BeforeValidator(_empty_none)] = Field(None, description="own labels (GeoJSON/GeoPackage) instead of OSM")
    label_field: str | None = Field(None, description="attribute of `labels` holding the sub-class name (detection)")
    names: list[str] = Field([], description="sub-class names of a detection class, in class-id order")
    complete: str | None = Field(
        None, description="segmentation: areas (GeoJSON) where this class is completely mapped; \"\" = everywhere; null = rasterize.complete"
    )
    box_m: BoxMetres | None = Field(None, description="detection: box size of point labels, metres: one number or [east-west, north-south]")
    name_tag: str | None = Field(None, min_length=1, description="detection: OSM key whose value names the sub-class, e.g. turn")
    name_map: OsmTags = Field({}, description="detection: OSM value of name_tag -> one of names")
    mirror: OsmTags = Field({}, description="detection: name -> name of its mirror image (default: derived, left <-> right)")
    turn_values: OsmTags = Field({}, description="detection: name -> its turn:lanes value (default: derived, through_left -> left;through)")

    @field_validator("names", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [osm_value(v) for v in value]
        return value

    @model_validator(mode="after")
    def _source(self) -> ClassParams:
        if not self.tags and not self.labels:
            raise ValueError("needs 'tags' (an OSM tag filter) or 'labels' (a vector file)")
        if self.complete is not None and self.task != "segmentation":
            raise ValueError("complete: applies to segmentation classes only; remove it")
        for key in ("box_m", "name_tag"):
            if getattr(self, key) is not None and self.task != "detection":
                raise ValueError(f"{key}: applies to detection classes only; remove it")
        if self.name_map:
            if self.task != "detection":
                raise ValueError("name_map: applies to detection classes only; remove it")
            if not self.name_tag:
                raise ValueError("name_map: needs name_tag (the OSM key it reads)")
            bad = sorted(v for v in self.name_map.values() if v not in self.names)
            if bad:
                raise ValueError(f"name_map: maps to '{bad[0]}', not one of names {list(self.names)}")
        for key in ("mirror", "turn_values"):
            mapping = getattr(self, key)
            if mapping and self.task != "detection":
                raise ValueError(f"{key}: applies to detection classes only; remove it")
            bad = sorted(k for k in mapping if k not in self.names)
            if bad:
                raise ValueError(f"{key}: '{bad[0]}' is not one of names {list(self.names)}")
        if self.task == "detection" and len(self.names) > 1 and self.tags and not self.labels and not self.name_tag:
            raise ValueError("has several names and takes OSM features: set name_tag (the OSM key naming each)")
        if not self.osm_tags:
            wild = [k for k, v in self.tags.items() if "*" in v]
            if wild:
                raise ValueError(
                    f"tags {wild[0]}: '*' accepts any value, so new features would get no {wild[0]} tag; set osm_tags (the tags to write)"
                )
        return self

    def spec(self, name: str, post: PostProcess | None = None) -> ClassSpec:
        """The runtime :class:`ClassSpec` of this entry, named ``name``."""
        osm_tags = dict(self.osm_tags) or {k: v[0] for k, v in self.tags.items()}
        names = tuple(self.names) or ((name,) if self.task == "detection" else ())
        return ClassSpec(
            name=name,
            task=self.task,
            tags={k: list(v) for k, v in self.tags.items()},
            exclude={k: list(v) for k, v in self.exclude.items()},
            osm_tags=osm_tags,
            color=tuple(self.color),  # type: ignore[arg-type]
            labels=self.labels,
            label_field=self.label_field,
            names=names,
            post=post or PostProcess(),
            complete=self.complete,
            box_m=self.box_m,
            name_tag=self.name_tag,
            name_map=dict(self.name_map),
            mirror=dict(self.mirror),
            turn_values=dict(self.turn_values),
        )


class ExtractParams(Section):
    """OSM file -> per-class GeoJSON."""

    pbf: str = Field("data/synth/city.osm.pbf", description="OSM file (.osm.pbf, .osm, .osm.bz2); \"\" when every class has its own labels")
    index: str = Field("flex_mem", min_length=1, description="pyosmium node-location index; sparse_file_array for countries")
    lane_width_m: float = Field(3.5, gt=0.0, le=10.0, description="road surface width per lane, metres, for roads without `width`")

    @field_validator("index")
    @classmethod
    def _known_index(cls, value: str) -> str:
        import osmium.index

        kinds = osmium.index.map_types()
        if value.split(",", 1)[0] not in kinds:
            raise ValueError(f"'{value}' is no pyosmium node-location index; use one of {', '.join(sorted(kinds))}")
        return value


class GridParams(Section):
    """The tile grid of the store."""

    zoom: int = Field(18, ge=0, le=24, description="tile zoom of the store")
    tile_size: int = Field(256, ge=16, le=4096, description="tile side, pixels (a power of two)")
    shard_zoom: int = Field(15, ge=0, le=24, description="one shard file per tile of this zoom")

    @model_validator(mode="after")
    def _valid(self) -> GridParams:
        try:
            self.grid()
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self

    def grid(self):
        """The :class:`navml.geo.grid.Grid` of these settings."""
        from navml.geo.grid import make_grid

        return make_grid(self.zoom, self.tile_size, self.shard_zoom)


class CoverParams(Section):
    """Tile index of the area of interest and its train/val/test split."""

    aoi: str = Field("data/synth/aoi.geojson", min_length=1, description="AOI GeoJSON or 'west,south,east,north' in degrees")
    split_zoom: int = Field(16, ge=0, le=24, description="zoom of the spatial blocks of the split")
    split: dict[Literal["train", "val", "test"], Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        {"train": 0.7, "val": 0.15, "test": 0.15}, description="share of blocks per split, adding up to 1"
    )
    seed: int = Field(0, description="seed of the block shuffle")

    @field_validator("split")
    @classmethod
    def _adds_up(cls, value: dict[str, float]) -> dict[str, float]:
        if not math.isclose(sum(value.values()), 1.0, abs_tol=1e-6):
            raise ValueError(f"shares {dict(value)} must add up to 1")
        return value


class RasterizeParams(Section):
    """Burning labels on the tile grid."""

    complete: str = Field(
        "data/synth/truth/complete_aoi.geojson",
        description="areas (GeoJSON) where OSM mapping is complete; outside, unlabelled pixels are unknown; \"\" = complete everywhere",
    )
    roads: bool = Field(True, description="mapped road surfaces are background everywhere")


class ImageryParams(Section):
    """Imagery into the shard store."""

    source: Literal["geotiff", "xyz"] = Field("geotiff", description="geotiff (a GeoTIFF/COG file) or xyz (a tile URL)")
    geotiff: str = Field("data/synth/ortho.tif", description="GeoTIFF/COG (source: geotiff)")
    url: str = Field("", description="tile URL with {z}/{x}/{y}, optionally {token} (source: xyz)")
    token_env: str = Field("NAVML_TILE_TOKEN", description="environment variable holding the {token} of the URL")
    workers: int = Field(8, ge=1, le=64, description="parallel downloads or warps")
    retries: int = Field(5, ge=0, le=50, description="attempts per tile after the first")
    timeout_s: float = Field(20.0, gt=0.0, description="timeout per tile request, seconds")
    bands: int = Field(3, ge=1, le=16, description="bands kept in the store: band_indexes, else the first ones of the source")
    band_indexes: list[Annotated[int, Field(ge=1)]] | None = Field(
        None, description="source bands to keep, numbered from 1 as in GDAL (e.g. [1, 2, 3] of an RGBN file); null = the first `bands`"
    )
    stretch: Literal["none", "percentile"] = Field(
        "none", description="none (the source must be 8-bit) | percentile: each band's percentiles onto 0..255 (16-bit, float)"
    )
    percentiles: tuple[Annotated[float, Field(ge=0.0, le=100.0)], Annotated[float, Field(ge=0.0, le=100.0)]] = Field(
        (2.0, 98.0), description="low and high percentile of the stretch, computed once per source"
    )
    resampling: Literal["bilinear", "cubic", "lanczos", "average", "nearest"] = Field(
        "bilinear", description="warp resampling of a GeoTIFF"
    )
    cache_dir: str = Field("", description="tile cache folder of xyz; \"\" = the default cache")

    @model_validator(mode="after")
    def _source_given(self) -> ImageryParams:
        if self.source == "geotiff" and not self.geotiff:
            raise ValueError("source: geotiff needs imagery.geotiff (a GeoTIFF path)")
        if self.source == "xyz" and not self.url:
            raise ValueError("source: xyz needs imagery.url (a tile URL with {z}/{x}/{y})")
        if self.band_indexes is not None:
            if len(set(self.band_indexes)) != len(self.band_indexes):
                raise ValueError(f"band_indexes: {self.band_indexes} names a band twice")
            if len(self.band_indexes) != self.bands:
                raise ValueError(f"band_indexes: {len(self.band_indexes)} bands but bands is {self.bands}; set bands: {len(self.band_indexes)}")
        if not self.percentiles[0] < self.percentiles[1]:
            raise ValueError(f"percentiles: low {self.percentiles[0]} must be below high {self.percentiles[1]}")
        if self.source == "xyz" and (self.stretch != "none" or self.bands != 3):
            raise ValueError("source: xyz tiles are 8-bit RGB; keep stretch: none and bands: 3")
        return self


class AugmentParams(Section):
    """Training augmentation (``train.augment``; ``false`` turns all of it off)."""

    flip: bool = Field(True, description="horizontal and vertical flips")
    rotate: bool = Field(True, description="rotations by multiples of 90 degrees")
    brightness: float = Field(0.1, ge=0.0, le=1.0, description="max brightness shift, share of 255")
    contrast: float = Field(0.1, ge=0.0, le=1.0, description="max relative change of the spread around the tile mean")
    hue: float = Field(0.02, ge=0.0, le=1.0, description="max hue rotation, share of the colour circle")
    scale: tuple[Annotated[float, Field(gt=0.1, le=10.0)], Annotated[float, Field(gt=0.1, le=10.0)]] | None = Field(
        None, description="random zoom of a sample, [low, high] (log-uniform, e.g. [0.6, 1.6]); null = none"
    )

    @field_validator("scale")
    @classmethod
    def _scale_order(cls, value):
        if value is not None and not value[0] <= value[1]:
            raise ValueError(f"low {value[0]} must not exceed high {value[1]}")
        return value


#: Loss term names of ``train.loss`` (aliases -> canonical), used by navml.segment.losses too;
#: defined here so that validating params does not import Keras.
LOSS_TERMS = {
    "crossentropy": "crossentropy",
    "ce": "crossentropy",
    "bce": "crossentropy",
    "binary_crossentropy": "crossentropy",
    "dice": "dice",
    "iou": "iou",
    "soft_iou": "iou",
    "jaccard": "iou",
    "focal": "focal",
}


def _augment(value: Any) -> Any:
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if isinstance(value, (Mapping, AugmentParams)):
        return value
    raise ValueError("use true, false or a mapping of flip, rotate, brightness, contrast, hue")


class TrainParams(Section):
    """The segmentation U-Net of every `task: segmentation` class."""

    bands: int = Field(3, ge=1, le=16, description="imagery bands the model takes (3 = RGB)")
    depth: int = Field(4, ge=1, le=7, description="2x poolings: input a multiple of 2**depth px")
    base_filters: int = Field(8, ge=1, le=512, description="filters of the first level, doubling per level")
    downsample: Literal[1, 2, 4] = Field(2, description="U-Net input average-pooled by this factor, logits upsampled back: downsample**2 x fewer FLOPs")
    encoder: Literal["plain", "residual"] = Field("plain", description="encoder blocks")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before the bottleneck, 0..1")
    loss: str | list[str] = Field("crossentropy+dice", description="crossentropy (alias bce) | dice | iou | focal, joined with '+' (or a list)")
    focal_gamma: float = Field(2.0, ge=0.0, description="focal loss exponent (only with focal)")
    class_weighting: Literal["none", "inverse", "sqrt"] = Field("sqrt", description="class weights from pixel frequencies")
    steps: int = Field(720, ge=1, description="optimizer steps: the training budget (rounded up to a multiple of eval_every)")
    eval_every: int = Field(40, ge=1, description="steps between val IoU checks (checkpoint, early stopping)")
    warmup_steps: int = Field(24, ge=0, description="linear learning-rate warm-up from learning_rate/10, capped at steps // 2")
    crop: Annotated[int, Field(ge=16)] | None = Field(
        None, description="random crops of this side, px, from the tiles (a multiple of downsample * 2**depth); null = whole tiles"
    )
    batch_size: int = Field(8, ge=1, description="tiles per training step")
    learning_rate: float = Field(0.002, gt=0.0, le=1.0, description="Adam peak learning rate after warm-up, cosine decay to 5 % over `steps`")
    patience: int = Field(4, ge=0, description="val checks without a better val IoU before stopping")
    negative_share: Annotated[float, Field(ge=0.0, le=1.0)] | None = Field(
        0.25, description="share of training tiles without a labelled pixel; null keeps all tiles"
    )
    augment: Annotated[AugmentParams | None, BeforeValidator(_augment)] = Field(
        AugmentParams(), description="augmentation settings, or false for none"
    )
    threshold_metric: Literal["iou", "f1"] = Field("iou", description="metric of the per-class threshold chosen on val")
    gsd_m: Annotated[float, Field(gt=0.0, le=100.0)] | None = Field(
        None, description="ground metres per pixel the model trains at (each city's tiles resampled to it); null = the coarsest training city's"
    )
    seed: int = Field(0, description="same seed + same data -> same weights")

    @field_validator("loss")
    @classmethod
    def _loss(cls, value: str | list[str]) -> str | list[str]:
        terms = [t.strip().lower() for t in (value.split("+") if isinstance(value, str) else value)]
        bad = [t for t in terms if t not in LOSS_TERMS]
        if bad:
            raise ValueError(f"term '{bad[0]}' is unknown; use crossentropy, dice, iou, focal joined with '+'")
        return value


# --- the turn-lane detector (issue 8) ------------------------------------------------


class DetectLossParams(Section):
    """Weights of the YOLOv2 loss terms (``detect.loss``; see :mod:`navml.detect.loss`)."""

    coord: float = Field(1.0, ge=0.0, description="box centre and size of the anchors holding a truth")
    obj: float = Field(5.0, ge=0.0, description="objectness toward the IoU with its truth box")
    noobj: float = Field(1.0, ge=0.0, description="objectness toward 0 where no truth overlaps more than ignore_iou")
    cls: float = Field(1.0, ge=0.0, description="class cross-entropy of the anchors holding a truth")
    prior: float = Field(0.01, ge=0.0, description="pull of the other anchors toward their prior shape, for the first prior_steps")


class DetectAugmentParams(Section):
    """Label-true augmentation of detector crops (``detect.augment``; ``false`` turns it off)."""

    flip: bool = Field(False, description="horizontal and vertical flips; each swaps left and right in the class (left <-> right)")
    rotate: bool = Field(True, description="quarter turns; they keep the class")


def _detect_augment(value: Any) -> Any:
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if isinstance(value, (Mapping, DetectAugmentParams)):
        return value
    raise ValueError("use true, false or a mapping of flip, rotate")


def _score_threshold(value: Any) -> Any:
    return None if value in (None, "auto") else value


class RefineParams(Section):
    """The detector's second stage (``detect.refine``; see :mod:`navml.detect.refine`): a patch CNN on each proposal."""

    steps: int = Field(4000, ge=0, description="optimizer steps of batch_size patches; 0 = no second stage (the YOLO head's boxes as they are)")
    patch: int = Field(24, ge=8, le=128, multiple_of=4, description="side of the patch centred on a proposal, px at the detector's resolution")
    filters: int = Field(16, ge=1, le=128, description="filters of the full-resolution convolutions (2x and 4x after each pooling)")
    batch_size: int = Field(64, ge=1, description="patches per step")
    learning_rate: float = Field(0.003, gt=0.0, le=1.0, description="Adam peak learning rate, cosine decay to 5 % over steps")
    floor: float = Field(0.05, ge=0.0, le=1.0, description="proposals: detector boxes scoring at least this (after NMS) are refined, the rest dropped")
    jitter_px: float = Field(3.0, ge=0.0, description="truth patches are centred up to this far off the box centre, px (the proposals' error)")
    match_px: float = Field(3.0, gt=0.0, description="a proposal centred this close to a truth's centre is that truth in training, px")
    proposal_share: float = Field(0.5, ge=0.0, le=1.0, description="share of training patches on the detector's train proposals (the rest on truths)")
    balance: bool = Field(True, description="draw truth patches class by class, so rare kinds are learnt as often as common ones")
    flip: bool = Field(True, description="mirror half the patches, the class through the mirror table (left <-> right); names need mirror images")
    box_weight: float = Field(0.5, ge=0.0, description="weight of the box L1 loss (px) against objectness and class cross-entropy")
    turns: Literal[1, 2, 4] = Field(1, description="quarter turns of each patch whose outputs are averaged when refining (1 = none; 4: no gain measured)")


class DetectParams(Section):
    """The YOLOv2-style detector of every `task: detection` class: training, and how its boxes are scored."""

    bands: int = Field(3, ge=1, le=16, description="imagery bands the model takes (3 = RGB)")
    stride: Literal[4, 8, 16, 32] = Field(8, description="output stride, px: one grid cell per stride x stride pixels")
    anchors: int = Field(5, ge=1, le=16, description="anchor shapes: the k of k-means over the training boxes (distance 1 - IoU)")
    anchor_seed: int = Field(0, description="seed of the k-means++ start")
    base_filters: int = Field(8, ge=1, le=256, description="filters of the first level, doubling per level (16: ~4x the cost)")
    stem_convs: int = Field(
        0, ge=0, le=8, description="3x3 conv + BN + leaky layers at full resolution before the first pooling (0 = none; each adds 2 px of receptive field)"
    )
    stem_filters: int = Field(16, ge=1, le=256, description="filters of each stem convolution")
    loss: DetectLossParams = Field(DetectLossParams(), description="weights of the YOLOv2 loss terms")
    offset_scale: float = Field(
        1.0, ge=1.0, le=4.0, description="centre offset s sigmoid(t) - (s - 1) / 2 in cells: 1 = YOLOv2 (0..1), 2 = YOLOv5 (-0.5..1.5)"
    )
    neighbours: bool = Field(False, description="each box also a positive in the 2 neighbouring cells nearest its centre (YOLOv5; needs offset_scale 2)")
    ignore_iou: float = Field(0.6, gt=0.0, le=1.0, description="no-object term off where a prediction overlaps a truth more than this")
    max_truths: int = Field(64, ge=1, description="truth boxes per crop the no-object term compares with")
    prior_steps: int = Field(100, ge=0, description="steps during which the prior term pulls predictions toward their anchors")
    steps: int = Field(800, ge=1, description="optimizer steps: the training budget (rounded up to a multiple of eval_every)")
    eval_every: int = Field(40, ge=1, description="steps between val mAP@0.5 checks (best weights, early stopping)")
    warmup_steps: int = Field(20, ge=0, description="linear learning-rate warm-up from learning_rate/10, capped at steps // 2")
    crop: Annotated[int, Field(ge=8)] | None = Field(
        32, description="random crops of this side, px, from the tiles (a multiple of stride); null = whole tiles"
    )
    box_crops: float = Field(
        1.0, ge=0.0, le=1.0, description="share of crops of a tile with boxes placed so that they hold a random one of its boxes"
    )
    batch_size: int = Field(128, ge=1, description="crops per training step")
    learning_rate: float = Field(0.01, gt=0.0, le=1.0, description="Adam peak learning rate after warm-up, cosine decay to 5 % over `steps`")
    patience: int = Field(4, ge=0, description="val checks without a better val mAP@0.5 before stopping")
    augment: Annotated[DetectAugmentParams | None, BeforeValidator(_detect_augment)] = Field(
        DetectAugmentParams(), description="label-true flips and quarter turns, or false for none"
    )
    nms_iou: float = Field(0.5, gt=0.0, le=1.0, description="class-aware NMS: a box overlapping a better one of its class more than this goes")
    score_threshold: Annotated[Annotated[float, Field(ge=0.0, le=1.0)] | None, BeforeValidator(_score_threshold)] = Field(
        "auto", description="auto = the score of best F1 on the val split, chosen at training; or a score 0..1"
    )
    gsd_m: Annotated[float, Field(gt=0.0, le=100.0)] | None = Field(
        None, description="ground metres per pixel the detector trains at (each city's tiles resampled to it); null = the coarsest training city's"
    )
    refine: RefineParams = Field(RefineParams(), description="the second stage: each proposal's class, box and score read again from a full-resolution patch")
    seed: int = Field(0, description="same seed + same data -> same weights")


def _threshold(value: Any) -> Any:
    return None if value in (None, "auto") else value


class EvaluateParams(Section):
    """Scores on the held-out test split."""

    threshold: Annotated[Annotated[float, Field(ge=0.0, le=1.0)] | None, BeforeValidator(_threshold)] = Field(
        "auto", description="auto = per-class thresholds chosen on val; or a probability 0..1"
    )
    batch_size: int = Field(8, ge=1, description="tiles per model call")
    overlays: int = Field(6, ge=0, description="test tiles drawn as imagery | truth | prediction PNGs")
    bins: int = Field(100, ge=2, le=100000, description="probability bins of the PR curve (threshold step 1/bins)")


class PredictParams(Section):
    """Probabilities over every tile of the AOI."""

    window_px: int = Field(2048, ge=16, description="largest core of one model call, px (at least grid.tile_size)")
    halo_px: int = Field(0, ge=0, description="context around a window, px; 0 = half the model's receptive field")
    resample: bool = Field(
        True, description="run the model at the ground resolution it was trained at: windows of a store more than 2 % finer or coarser are resampled"
    )


# --- turn-lane detector: city-wide prediction and markings in the world (issue 8) ---


class DetectPredictParams(Section):
    """The detector over every tile of the AOI (predict_detect stage) and its markings on OSM ways (markings stage)."""

    window_px: int = Field(1024, ge=16, description="largest core of one detector call, px (at least grid.tile_size)")
    halo_px: int = Field(0, ge=0, description="context around a window, px; 0 = half the detector's receptive field")
    nms_iou: float = Field(0.5, gt=0.0, le=1.0, description="class-aware NMS: a box overlapping a better one of its class by more is dropped")
    score_threshold: Annotated[Annotated[float, Field(ge=0.0, le=1.0)] | None, BeforeValidator(_threshold)] = Field(
        "auto", description="auto = the score threshold in the model's meta.json; or a score 0..1"
    )
    core_margin_px: float = Field(0.0, ge=0.0, le=64.0, description="keep boxes whose centre is this close outside a window's core too (NMS drops the twins)")
    max_way_distance_m: float = Field(15.0, gt=0.0, le=200.0, description="a marking farther than this from every OSM road way stays unmatched, metres")
    axis_aspect: float = Field(
        1.5, ge=1.0, description="a box this much longer than wide lies along its way: only ways along its long side match (1 = off)"
    )
    driving_side: Literal["right", "left"] = Field("right", description="traffic drives on the right (Americas, most of Europe) or left")
    centre_gap_m: float = Field(0.0, ge=0.0, le=20.0, description="painted gap between the directions of a two-way road, metres")


class VectorizeParams(Section):
    """Probabilities (or label masks) -> polygons."""

    layer: str = Field("probs", min_length=1, description="store layer: probs (data/predict) or masks (data/store)")
    kind: Literal["auto", "probs", "labels"] = Field("auto", description="probs | labels | auto (masks -> labels)")

    def resolved_kind(self, layer: str | None = None) -> str:
        """``kind`` with ``auto`` resolved for ``layer`` (default: this section's layer)."""
        if self.kind != "auto":
            return self.kind
        return "labels" if (layer or self.layer) == "masks" else "probs"


class DedupeParams(Section):
    """Dropping predictions already in OSM."""

    match: Literal["share", "iou"] = Field("share", description="share: covered share of the prediction | iou: IoU with OSM areas")
    min_overlap: float = Field(0.5, gt=0.0, le=1.0, description="a prediction at or above this overlap is already in OSM")
    source: str = Field("navml", description="`source` tag on new features (\"\" for none)")
    max_road_share: Annotated[float, Field(gt=0.0, le=1.0)] | None = Field(
        0.15, description="drop a prediction with this share of its area on mapped roads; null keeps them"
    )


class ScoreParams(Section):
    """Scoring the vector output against truth polygons."""

    truth: str | dict[str, Annotated[str, Field(min_length=1)]] = Field(
        "data/synth/truth/lots.geojson",
        description="truth polygons with a boolean `mapped` (and `class` when several classes share a file), or {class: path}",
    )
    classes: list[str] = Field([], description="segmentation classes to score; [] = every segmentation class with truth polygons")
    iou: float = Field(0.5, gt=0.0, le=1.0, description="match threshold (IoU)")
    split: Literal["train", "val", "test"] = Field("test", description="tiles.csv split for the polygon F1")
    decoys: str = Field(
        "data/synth/truth/decoys.geojson",
        description="look-alikes (class, kind) to count false positives on, by kind (synth writes them); \"\" = none",
    )



# --- cities: train on some, predict on others (issue 10) ------------------------------------

#: Keys of the stage sections that each city of ``cities`` gives (:meth:`Params.for_city` sets them from the
#: city's entry): the shipped params.yaml leaves them out of their sections, so a city's inputs are said once.
CITY_KEYS: dict[str, tuple[str, ...]] = {
    "extract": ("pbf",),
    "cover": ("aoi",),
    "rasterize": ("complete",),
    "imagery": ("source", "geotiff", "url"),
    "score": ("truth",),
}

#: A city's name: a DVC stage suffix (``extract@denver``) and a folder name.
CITY_NAME = r"^[a-z0-9][a-z0-9_-]*$"
ROLES = ("train", "predict")


def _synthetic(value: Any) -> Any:
    """``synthetic: true`` is the default synthetic city, ``false``/``no``/``~`` none."""
    if value is True:
        return {}
    if value is False:
        return None
    return value


class CityParams(Section):
    """One entry of ``cities``: where its imagery and labels come from and what it is for.

    Imagery is exactly one of ``synthetic`` (the built-in city: a ``synth`` mapping whose keys
    default to the ``synth`` section's defaults), ``geotiff`` (a file under ``<paths.inputs>/imagery``)
    or ``xyz`` (a tile URL). A synthetic city brings its OSM file, AOI, completeness areas, truth and
    own labels; any of them given here replaces the synthetic one.
    """

    role: Literal["train", "predict"] = Field(
        description="train: its train/val/test tiles join the one training of each model; "
        "predict: held out, predicted, post-processed, scored where truth exists"
    )
    synthetic: Annotated[SynthParams | None, BeforeValidator(_synthetic)] = Field(
        None, description="the built-in synthetic city: seed, center [lon, lat], size_km, ... (true = the synth defaults)"
    )
    geotiff: Annotated[str | None, BeforeValidator(_empty_none)] = Field(None, description="own GeoTIFF/COG of the city (imagery source: geotiff)")
    xyz: Annotated[str | None, BeforeValidator(_empty_none)] = Field(None, description="tile URL with {z}/{x}/{y} (imagery source: xyz)")
    osm: Annotated[str | None, BeforeValidator(_empty_none)] = Field(
        None, description="OSM file of the city (.osm.pbf); default: the synthetic city's; omit when every class has own labels"
    )
    labels: dict[str, Annotated[str, Field(min_length=1)]] = Field(
        {}, description="own labels per class of the registry in this city: {class: file}, replacing the class's `labels`"
    )
    aoi: Annotated[str | None, BeforeValidator(_empty_none)] = Field(
        None, description="AOI GeoJSON or 'west,south,east,north'; default: the synthetic city's square"
    )
    complete: str | None = Field(
        None, description="areas (GeoJSON) where OSM is complete; \"\" = everywhere; default: the synthetic city's (else everywhere)"
    )
    truth: Annotated[str | None, BeforeValidator(_empty_none)] = Field(
        None, description="truth polygons to score against (with `mapped`); default: the synthetic city's; none: not scored"
    )

    @field_validator("labels", mode="before")
    @classmethod
    def _label_names(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {osm_value(k): v for k, v in value.items()}
        return value

    @field_validator("xyz")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not all(k in value for k in ("{z}", "{x}", "{y}")):
            raise ValueError(f"'{value}' lacks {{z}}, {{x}} or {{y}}; write a tile URL such as https://tiles.example.com/{{z}}/{{x}}/{{y}}.png")
        return value

    @model_validator(mode="after")
    def _imagery(self) -> CityParams:
        given = [k for k in ("synthetic", "geotiff", "xyz") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give its imagery as exactly one of synthetic (the built-in city), geotiff (a file) or xyz (a tile URL)"
                + (f"; it has {' and '.join(given)}" if given else "")
            )
        if self.synthetic is None:
            if self.aoi is None:
                raise ValueError("aoi: a city with own imagery needs its AOI (a GeoJSON or 'west,south,east,north')")
            if self.osm is None and not self.labels:
                raise ValueError("osm: a city with own imagery needs its OSM file (.osm.pbf) or own labels per class")
        return self

    @property
    def imagery_source(self) -> str:
        """``synthetic`` | ``geotiff`` | ``xyz``."""
        return "synthetic" if self.synthetic is not None else "geotiff" if self.geotiff is not None else "xyz"


def _city_names(value: Any) -> Any:
    """City names as written: YAML's ``no``/``yes``/``on`` (False/True) back to text, numbers as text; checked as folder names."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        return value
    import re

    out: dict[str, Any] = {}
    for key, city in value.items():
        name = "yes" if key is True else "no" if key is False else str(key)
        if not re.match(CITY_NAME, name):
            raise ValueError(
                f"'{name}' is no city name: use lower-case letters, digits, '_' and '-', starting with a letter or digit (it names stages and folders)"
            )
        if name in out:
            raise ValueError(f"'{name}' is named twice (YAML reads yes/no/on/off unquoted as true/false: quote one of them)")
        out[name] = {} if city is None else city
    return out


Cities = Annotated[dict[str, CityParams], BeforeValidator(_city_names)]


@dataclass(frozen=True)
class CityInputs:
    """Where one city's stages read their inputs, resolved from its ``cities`` entry (paths relative to the project)."""

    name: str
    role: str
    root: str  # <paths.cities>/<role>/<name>: the city's data (synth, extract, cover, store); the role in the path lets
    # the one training depend on <paths.cities>/train, the data of every train city and nothing else
    synthetic: SynthParams | None
    imagery: str  # geotiff | xyz
    geotiff: str  # "" with xyz
    url: str  # "" with geotiff
    pbf: str  # "" when every class has own labels
    aoi: str
    complete: str  # "" = complete everywhere
    truth: str  # "" = not scored
    labels: dict[str, str]  # class -> own labels file, for the classes that have them

    results: str  # <paths.cities>/results/<name>: what the models make of the city (predict, output, metrics)
    first: str  # <paths.first>/<role>/<name>: what the first model (before mining) makes of it (predict, output, metrics);
    # mine --cities reads its probabilities at <first>/predict

    @property
    def tiles(self) -> str:
        """The city's tile index (cover stage)."""
        return f"{self.root}/cover/tiles.csv"

    @property
    def store(self) -> str:
        """The city's shard store (imagery, masks)."""
        return f"{self.root}/store"



class MineParams(Section):
    """Hard-negative mining (mine stage): the first model's confident regions on background of train tiles in complete areas."""

    threshold: Annotated[Annotated[float, Field(ge=0.0, le=1.0)] | None, BeforeValidator(_threshold)] = Field(
        "auto", description="probability at or above which a pixel counts as predicted; auto = the model's per-class val threshold"
    )
    min_area_m2: float = Field(25.0, ge=0.0, description="smaller false regions are left out, m²")
    max_negatives: int = Field(200, ge=0, description="at most this many negatives (highest score first)")
    tile_share: float = Field(1.0, gt=0.0, le=1.0, description="share of the train tiles inside complete areas that are scanned")
    edge_m: float = Field(3.0, ge=0.0, le=50.0, description="predicted pixels this close to a labelled one are label noise, not negatives, metres")
    seed: int = Field(0, description="seed of the tile_share draw")


class RetrainParams(Section):
    """Training again with the mined hard negatives (retrain stage); the other settings are train's."""

    mode: Literal["finetune", "scratch"] = Field("finetune", description="finetune: start from the first model | scratch: a fresh U-Net")
    steps: int = Field(320, ge=1, description="optimizer steps of fine-tuning (docs/mining.md measures 80, 160 and 320)")
    eval_every: int = Field(40, ge=1, description="steps between val IoU checks (best weights, early stopping)")
    learning_rate: float = Field(0.0005, gt=0.0, le=1.0, description="Adam peak learning rate, cosine decay to 5 % over steps")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up from learning_rate/10")
    oversample: int = Field(1, ge=1, le=100, description="each tile holding a hard negative is drawn this many times per pass (1: once, always)")
    weight: float = Field(1.0, ge=1.0, le=1000.0, description="loss weight of a mined pixel (a labelled pixel weighs 1)")
    rounds: int = Field(1, ge=1, le=5, description="mine + retrain rounds; rounds after the first run inside the retrain stage")


class MineDetectParams(Section):
    """Hard-negative mining of the detector (mine_detect stage): its confident boxes matching no truth box on train tiles."""

    score_threshold: Annotated[Annotated[float, Field(ge=0.0, le=1.0)] | None, BeforeValidator(_threshold)] = Field(
        "auto", description="score at or above which a detection is taken; auto = the model's score_threshold (meta.json, chosen on val)"
    )
    iou: float = Field(0.2, gt=0.0, le=1.0, description="a detection is false when its IoU with every truth box is below this")
    margin_m: float = Field(1.0, ge=0.0, le=50.0, description="false detections closer than this to a truth box are left out (label shift), metres")
    min_size_m2: float = Field(0.0, ge=0.0, description="smaller false boxes are left out, m² of ground")
    max_negatives: int = Field(500, ge=0, description="at most this many negatives (highest score first)")
    tile_share: float = Field(1.0, gt=0.0, le=1.0, description="share of the train tiles (inside complete areas) that are scanned")
    complete: bool = Field(
        False, description="true: only train tiles inside the classes' complete areas (rasterize.complete); false: every train tile (own labels)"
    )
    batch_size: int = Field(16, ge=1, description="tiles per model call")
    seed: int = Field(0, description="seed of the tile_share draw")


class RetrainDetectParams(Section):
    """Training the detector again with its mined hard negatives (retrain_detect stage); the other settings are detect's."""

    mode: Literal["finetune", "scratch"] = Field("finetune", description="finetune: start from the first detector | scratch: a fresh one with detect.steps")
    steps: int = Field(120, ge=1, description="optimizer steps of fine-tuning (scratch uses detect.steps)")
    eval_every: int = Field(40, ge=1, description="steps between val mAP@0.5 checks (best weights, early stopping)")
    learning_rate: float = Field(0.002, gt=0.0, le=1.0, description="Adam peak learning rate of fine-tuning, cosine decay to 5 % over steps")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up of fine-tuning from learning_rate/10, steps")
    oversample: int = Field(
        3, ge=1, le=100, description="each train tile holding a hard negative is drawn this many times per pass (the extra draws crop on a mined box)"
    )
    weight: float = Field(3.0, ge=1.0, le=1000.0, description="weight of the no-object loss in the cells a mined box covers (elsewhere 1)")


class Registry(Section):
    """The class registry (``classes``) with the vectorization settings of its segmentation classes (``post``)."""

    classes: dict[str, ClassParams] = Field({}, description="the class registry: one entry per class")
    post: dict[str, PostProcess] = Field({}, description="vectorization per segmentation class")

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        """An empty section (``train:`` with every key commented out) takes the defaults, as does an empty ``post.<class>``."""
        if not isinstance(data, Mapping):
            return data
        data = {k: ({} if v is None and k in cls.model_fields else v) for k, v in data.items()}
        if isinstance(data.get("post"), Mapping):
            data["post"] = {k: ({} if v is None else v) for k, v in data["post"].items()}
        return data

    @field_validator("classes", "post", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {osm_value(k): v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _post_names(self) -> Registry:
        seg = [n for n, c in self.classes.items() if c.task == "segmentation"]
        for name in self.post:
            if name not in seg:
                raise ValueError(f"post.{name}: names no segmentation class of 'classes' (those are: {', '.join(seg) or 'none'})")
        return self

    def class_specs(self) -> list[ClassSpec]:
        """The class registry in declared order, with ``post`` settings per segmentation class.

        An empty registry is an error here, not in validation: commands that
        need no class (synth, imagery) run with a params file without one.
        """
        if not self.classes:
            raise ConfigError(f"params: classes: declare at least one class ({type(self).model_fields['classes'].description})")
        return [c.spec(name, self.post.get(name)) for name, c in self.classes.items()]

class Params(Registry):
    """The whole ``params.yaml``."""

    paths: PathsParams = PathsParams()
    synth: SynthParams = SynthParams()
    extract: ExtractParams = ExtractParams()
    grid: GridParams = GridParams()
    cover: CoverParams = CoverParams()
    rasterize: RasterizeParams = RasterizeParams()
    imagery: ImageryParams = ImageryParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    predict: PredictParams = PredictParams()
    detect_predict: DetectPredictParams = DetectPredictParams()
    vectorize: VectorizeParams = VectorizeParams()
    dedupe: DedupeParams = DedupeParams()
    score: ScoreParams = ScoreParams()
    detect: DetectParams = DetectParams()
    mine: MineParams = MineParams()
    retrain: RetrainParams = RetrainParams()
    mine_detect: MineDetectParams = MineDetectParams()
    retrain_detect: RetrainDetectParams = RetrainDetectParams()
    cities: Cities = Field({}, description="cities to train on (role: train) and to predict (role: predict); {} = the single `synth` city")

    @model_validator(mode="after")
    def _cities(self) -> Params:
        if not self.cities:
            return self
        if not any(c.role == "train" for c in self.cities.values()):
            raise ValueError("cities: no city has role: train; the models train on the union of the train cities")
        for name, city in self.cities.items():
            for cls in city.labels:
                if self.classes and cls not in self.classes:
                    raise ValueError(f"cities.{name}.labels: '{cls}' is not a class of 'classes' ({', '.join(self.classes)})")
            if city.synthetic is None:
                for cls, spec in self.classes.items():
                    if spec.labels and cls not in city.labels and _under(spec.labels, f"{self.paths.synth}/truth"):
                        raise ValueError(
                            f"cities.{name}: class {cls} takes its labels from the synthetic city ({spec.labels}); "
                            f"give this city its own: labels: {{{cls}: inputs/labels/<file>}}"
                        )
        return self

    def city(self, name: str) -> CityInputs:
        """The resolved inputs of city ``name`` (a :class:`ConfigError` naming the cities when it is not one)."""
        import os

        if name not in self.cities:
            raise ConfigError(f"params: cities: no city '{name}' (cities: {', '.join(self.cities) or 'none'})")
        c = self.cities[name]
        root = f"{self.paths.cities}/{c.role}/{name}"
        synth = f"{root}/synth"
        syn = c.synthetic is not None
        labels = {}
        for cls, spec in self.classes.items():
            if cls in c.labels:
                labels[cls] = c.labels[cls]
            elif spec.labels and syn and _under(spec.labels, f"{self.paths.synth}/truth"):
                labels[cls] = f"{synth}/truth/{os.path.relpath(spec.labels, f'{self.paths.synth}/truth')}"
            elif spec.labels:
                labels[cls] = spec.labels
        default = (lambda sub: f"{synth}/{sub}") if syn else (lambda sub: "")
        return CityInputs(
            name=name,
            role=c.role,
            root=root,
            results=f"{self.paths.cities}/results/{name}",
            first=f"{self.paths.first}/{c.role}/{name}",
            synthetic=c.synthetic,
            imagery="xyz" if c.xyz is not None else "geotiff",
            geotiff=c.geotiff if c.geotiff is not None else default("ortho.tif"),
            url=c.xyz or "",
            pbf=c.osm if c.osm is not None else default("city.osm.pbf"),
            aoi=c.aoi if c.aoi is not None else default("aoi.geojson"),
            complete=c.complete if c.complete is not None else default("truth/complete_aoi.geojson"),
            truth=c.truth if c.truth is not None else default("truth/lots.geojson"),
            labels=labels,
        )

    def for_city(self, name: str) -> Params:
        """These params as city ``name``'s stages see them: its synthetic city, OSM file, AOI, completeness areas,
        imagery, truth and own labels in place of the single-city values; a ``predict`` city's tiles are all ``test``."""
        import os

        c = self.city(name)
        update: dict[str, Any] = {
            "extract": self.extract.model_copy(update={"pbf": c.pbf}),
            "cover": self.cover.model_copy(update={"aoi": c.aoi, **({"split": {"train": 0.0, "val": 0.0, "test": 1.0}} if c.role == "predict" else {})}),
            "rasterize": self.rasterize.model_copy(update={"complete": c.complete}),
            "imagery": self.imagery.model_copy(update={"source": c.imagery, "geotiff": c.geotiff, "url": c.url}),
            "classes": {k: (v.model_copy(update={"labels": c.labels[k]}) if k in c.labels else v) for k, v in self.classes.items()},
        }
        if c.synthetic is not None:
            update["synth"] = c.synthetic
        decoys = self.score.decoys
        if decoys and _under(decoys, self.paths.synth):  # the synthetic city's decoys: this city's own, or none
            decoys = f"{c.root}/synth/{os.path.relpath(decoys, self.paths.synth)}" if c.synthetic is not None else ""
        update["score"] = self.score.model_copy(update={"truth": c.truth, "decoys": decoys})  # truth "" = not scored
        return self.model_copy(update=update)

    def train_cities(self) -> list[str]:
        """Names of the cities whose tiles the models train on, in declared order."""
        return [n for n, c in self.cities.items() if c.role == "train"]

    @model_validator(mode="after")
    def _across(self) -> Params:
        # score.class defaults to the synthetic city's class: checked where the file has a score section
        seg = [n for n, c in self.classes.items() if c.task == "segmentation"]
        if self.classes and "score" in self.model_fields_set:
            for name in self.score.classes:
                if name not in seg:
                    raise ValueError(f"score.classes: '{name}' is not a segmentation class of 'classes' ({', '.join(seg)})")
        g = self.grid
        if not g.shard_zoom <= self.cover.split_zoom <= g.zoom:
            raise ValueError(f"cover.split_zoom: {self.cover.split_zoom} must lie between grid.shard_zoom {g.shard_zoom} and grid.zoom {g.zoom}")
        if self.predict.window_px < g.tile_size:
            raise ValueError(f"predict.window_px: {self.predict.window_px} must be at least grid.tile_size {g.tile_size}")
        if g.tile_size % (2**self.train.depth):
            raise ValueError(f"train.depth: {self.train.depth} needs tiles of a multiple of {2**self.train.depth} px; grid.tile_size is {g.tile_size}")
        crop = self.train.crop
        if crop is not None and (crop % (2**self.train.depth) or crop > g.tile_size):
            raise ValueError(
                f"train.crop: {crop} px must be a multiple of {2**self.train.depth} (2**train.depth) and at most grid.tile_size {g.tile_size}"
            )
        if self.detect_predict.window_px < g.tile_size:
            raise ValueError(f"detect_predict.window_px: {self.detect_predict.window_px} must be at least grid.tile_size {g.tile_size}")
        if self.retrain.eval_every > self.retrain.steps:
            raise ValueError(f"retrain.eval_every: {self.retrain.eval_every} is more than retrain.steps {self.retrain.steps}")
        if self.train.eval_every > self.train.steps:
            raise ValueError(f"train.eval_every: {self.train.eval_every} is more than train.steps {self.train.steps}")
        d = self.detect
        if g.tile_size % d.stride:
            raise ValueError(f"detect.stride: {d.stride} px does not divide grid.tile_size {g.tile_size}")
        if d.crop is not None and (d.crop % d.stride or d.crop > g.tile_size):
            raise ValueError(f"detect.crop: {d.crop} px must be a multiple of detect.stride {d.stride} and at most grid.tile_size {g.tile_size}")
        if d.eval_every > d.steps:
            raise ValueError(f"detect.eval_every: {d.eval_every} is more than detect.steps {d.steps}")
        return self

# --- one-line errors ---------------------------------------------------------------

_PHRASES = {
    "int_parsing": "is not an integer",
    "int_type": "is not an integer",
    "int_from_float": "is not an integer",
    "float_parsing": "is not a number",
    "float_type": "is not a number",
    "finite_number": "is not a finite number",
    "bool_parsing": "is not true or false",
    "bool_type": "is not true or false",
    "string_type": "is not a text",
    "dict_type": "is not a mapping (key: value)",
    "model_type": "is not a mapping (key: value)",
    "model_attributes_type": "is not a mapping (key: value)",
    "dataclass_type": "is not a mapping (key: value)",
    "dataclass_args_type": "is not a mapping (key: value)",
    "list_type": "is not a list",
    "tuple_type": "is not a list",
    "string_too_short": "is empty",
}


def _model_of(annotation: Any) -> Any:
    """The first model or dataclass inside ``annotation`` (through Annotated, unions, dict values, lists)."""
    if isinstance(annotation, type) and (issubclass(annotation, BaseModel) or hasattr(annotation, "__dataclass_fields__")):
        return annotation
    for arg in get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _fields(model: Any) -> dict[str, tuple[str | None, Any]]:
    """``key -> (help text, annotation)`` of a model or dataclass (keys as written in YAML)."""
    if isinstance(model, type) and issubclass(model, BaseModel):
        return {(f.alias or n): (f.description, f.annotation) for n, f in model.model_fields.items()}
    out = {}
    for n, hint in get_type_hints(model, include_extras=True).items():
        if n.startswith("__"):
            continue
        desc = next((m.description for m in getattr(hint, "__metadata__", ()) if getattr(m, "description", None)), None)
        out[n] = (desc, hint)
    return out


def _is_tag(item: str) -> bool:
    """Whether a location item is pydantic's tag of a union member or validator, not a key."""
    return "[" in item or item[:1].isupper()


def _describe(model: Any, loc: tuple) -> tuple[str, str | None, list[str]]:
    """Dotted key of ``loc``, the help text of its field and the keys allowed where it sits."""
    parts: list[str] = []
    desc, allowed = None, []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
            continue
        fields = _fields(model) if model is not None else {}
        if item in fields:
            desc, annotation = fields[item]
            allowed = sorted(fields)
            model = _model_of(annotation)
        elif _is_tag(item):
            continue
        else:  # a name of the user's (class name) or an unknown key
            desc, allowed = None, sorted(fields)
        parts.append(("." if parts else "") + item)
    return "".join(parts), desc, allowed


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def one_line(exc: ValidationError, where: str = "params.yaml", model: Any = Params) -> str:
    """The first error of ``exc`` as one line: ``<where>: <key>: <value> <problem> (<key>: <help>)``."""
    err = exc.errors(include_url=False)[0]
    key, desc, allowed = _describe(model, tuple(err["loc"]))
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    name = key.rsplit(".", 1)[-1].split("[", 1)[0]
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        return f"{where}: unknown key '{key}' (allowed: {', '.join(k for k in allowed if k != name)}); fix the spelling or remove it"
    if kind in ("missing", "missing_argument", "missing_keyword_argument"):
        text = "is missing"
    elif kind in _PHRASES:
        text = f"{_short(value)} {_PHRASES[kind]}"
    elif kind == "literal_error":
        text = f"{_short(value)} is not one of {ctx.get('expected')}"
    elif kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[kind]
        bound = next(iter(ctx.values()))
        text = f"{_short(value)} is out of range; it must be {op} {bound}"
    elif kind == "too_short":
        text = f"{_short(value)} needs at least {ctx.get('min_length')} item(s)"
    elif kind == "too_long":
        text = f"{_short(value)} has more than {ctx.get('max_length')} item(s)"
    elif kind in ("value_error", "assertion_error"):
        msg = str(ctx.get("error", err["msg"]))
        if key and not msg.startswith(key.split(".")[0]):
            return f"{where}: {key}: {msg}" + (f" ({name}: {desc})" if desc else "")
        return f"{where}: {msg}"
    else:
        text = f"{_short(value)}: {err['msg'][0].lower() + err['msg'][1:]}"
    if not key:
        return f"{where}: {text}"
    return f"{where}: {key}: {text}" + (f" ({name}: {desc})" if desc else "")


def validate_params(data: Any, where: str = "params.yaml") -> Params:
    """The validated :class:`Params` of a loaded params file; a :class:`ConfigError` of one line otherwise."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of sections, got {type(data).__name__}")
    try:
        return Params.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(one_line(exc, where)) from None


def parse_classes(section: Mapping[str, Any], post: Mapping[str, Any] | None = None, where: str = "params") -> list[ClassSpec]:
    """The class registry from the ``classes`` params section (and ``post`` per segmentation class), in declared order.

    ``post`` is a section of its own so that tuning it reruns only the stages
    after prediction, not the whole pipeline.
    """
    try:
        registry = Registry.model_validate({"classes": section, "post": post or {}})
    except ValidationError as exc:
        raise ConfigError(one_line(exc, where, model=Registry)) from None
    return registry.class_specs()


def segmentation_classes(classes: list[ClassSpec]) -> list[ClassSpec]:
    """Segmentation classes in mask-index order: index ``i + 1`` in masks (0 is background)."""
    return [c for c in classes if c.task == "segmentation"]


def detection_names(classes: list[ClassSpec]) -> list[tuple[str, str]]:
    """``(class, sub-class name)`` of every detection label, in box class-id order."""
    return [(c.name, n) for c in classes if c.task == "detection" for n in c.names]


def detection_mapping(classes: list[ClassSpec], key: str) -> dict[str, str]:
    """The registry's ``mirror`` or ``turn_values`` entries of every detection class, merged (name -> value)."""
    return {k: v for c in classes if c.task == "detection" for k, v in getattr(c, key).items()}


def _under(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (both relative to the project root, or absolute)."""
    import os

    p, f = os.path.normpath(path), os.path.normpath(folder)
    return p == f or p.startswith(f + os.sep)


def tracked_inputs(params: Params) -> list[tuple[str, str, tuple[str, ...]]]:
    """``(key, path, folders)`` of every own input file the params name, with the folders dvc.yaml tracks for it.

    dvc.yaml cannot list files that come from a params list or may be empty
    (``rasterize.complete: ""``), so it depends on folders instead: labels
    and completeness areas under ``<paths.inputs>/labels`` (or the synthetic
    city's ``truth``), GeoTIFFs under ``<paths.inputs>/imagery`` (or the
    synthetic orthophoto).
    """
    synth, inputs = params.paths.synth, params.paths.inputs
    labels = (f"{synth}/truth", f"{inputs}/labels")
    out = [(f"classes.{name}.labels", c.labels, labels) for name, c in params.classes.items() if c.labels]
    if params.rasterize.complete:
        out.append(("rasterize.complete", params.rasterize.complete, labels))
    out += [(f"classes.{name}.complete", c.complete, labels) for name, c in params.classes.items() if c.complete]
    if params.score.decoys:
        out.append(("score.decoys", params.score.decoys, labels))
    if params.imagery.source == "geotiff":
        out.append(("imagery.geotiff", params.imagery.geotiff, (f"{synth}/ortho.tif", f"{inputs}/imagery")))
    for name in params.cities:  # per-city stages depend on the city's synth folder and on <inputs>/{labels,imagery,osm}
        c = params.city(name)
        own = f"{c.root}/synth"
        key = f"cities.{name}"
        files = [("labels." + k, v, (f"{own}/truth", f"{inputs}/labels")) for k, v in c.labels.items()]
        files += [("complete", c.complete, (f"{own}/truth", f"{inputs}/labels")), ("truth", c.truth, (f"{own}/truth", f"{inputs}/labels"))]
        files += [("osm", c.pbf, (own, f"{inputs}/osm")), ("geotiff", c.geotiff, (own, f"{inputs}/imagery"))]
        if not _is_bbox(c.aoi):
            files.append(("aoi", c.aoi, (own, f"{inputs}/labels")))
        out += [(f"{key}.{k}", v, folders) for k, v, folders in files if v]
    return out


def _is_bbox(text: str) -> bool:
    """Whether an AOI is written as ``west,south,east,north`` rather than a file."""
    parts = text.split(",")
    try:
        return len(parts) == 4 and all(float(x) == float(x) for x in parts)
    except ValueError:
        return False


def check_tracked_inputs(params: Params, where: str = "params.yaml") -> None:
    """Refuse an own input file outside the folders dvc.yaml tracks: DVC would not rerun a stage when it changes."""
    for key, path, folders in tracked_inputs(params):
        if not any(_under(path, f) for f in folders):
            raise ConfigError(
                f"{where}: {key}: {path} lies outside what dvc.yaml tracks for it ({', '.join(folders)}); "
                f"move or link it into {folders[-1]} so that DVC reruns the pipeline when it changes"
            )
