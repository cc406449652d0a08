"""What the synthetic city is made of: plain records in local metres.

Local frame: ``x`` east, ``y`` north, metres from the south-west corner of the
square city. Colours are ``(R, G, B)`` 0..255. :mod:`navml.data.synth.layout`
fills a :class:`Scene`; :mod:`~navml.data.synth.render`, :mod:`~navml.data.synth.osm`
and :mod:`~navml.data.synth.truth` read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

Color = tuple[int, int, int]

#: Turn-arrow kinds, in the class order of ``classes.turn_markings.names``.
KINDS = ("left", "right", "through", "through_left", "through_right", "left_right")
#: Kinds of look-alikes (``truth/decoys.geojson``) per class they resemble.
DECOY_KINDS = {"parking": ("plaza", "flat_roof", "court", "paved_yard"), "turn_markings": ("crosswalk", "stop_line", "word")}
#: OSM ``turn:lanes`` value of each arrow kind.
TURN_VALUE = {
    "left": "left",
    "right": "right",
    "through": "through",
    "through_left": "left;through",
    "through_right": "through;right",
    "left_right": "left;right",
}


@dataclass
class Car:
    """A vehicle seen from above: centre, heading (rad), size (m), body colour."""

    x: float
    y: float
    ang: float
    length: float
    width: float
    color: Color


@dataclass
class Street:
    """A whole street before it is split into OSM ways at junctions."""

    coords: np.ndarray  # centreline inside the city (direction of travel for one-way streets)
    ext: np.ndarray  # centreline extended past the city edge (for drawing)
    highway: str
    lanes: int
    oneway: bool
    lane_w: float
    park_w: float  # parking lane on each side, 0 when none
    gap: float  # painted centre gap (double yellow), 0 when none
    centre: str  # double | dashed | none
    verge: float  # grass strip between kerb and walk
    walk: float
    name: str
    tone: int  # asphalt grey
    kind: str  # grid | partial | diagonal | curved

    @property
    def width(self) -> float:
        """Kerb-to-kerb width, metres."""
        return self.gap + self.lanes * self.lane_w + 2 * self.park_w

    @property
    def half_total(self) -> float:
        """Centreline to the back of the walk, metres."""
        return self.width / 2 + self.verge + self.walk

    @property
    def lanes_per_dir(self) -> int:
        return self.lanes if self.oneway else max(1, self.lanes // 2)


@dataclass
class Way:
    """One OSM road way: a street between two junctions (or a junction and the city edge)."""

    id: int
    street: Street
    coords: np.ndarray
    nodes: list[int]  # OSM node ids, one per coordinate
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class Marking:
    """A painted turn arrow: kind, the road way it is on, footprint rectangle and paint polygon."""

    kind: str
    way_id: int
    footprint: np.ndarray  # (4, 2)
    shape: Polygon


@dataclass
class Lot:
    """A parking lot: visible surface lot, underground, or the roof deck of a multi-storey garage."""

    poly: Polygon  # true outline, metres (holes are not parking)
    kind: str  # surface | underground | multi-storey
    variant: str
    tone: Color = (100, 100, 102)
    line_color: Color = (230, 230, 230)
    lines: list[np.ndarray] = field(default_factory=list)  # stall lines (polylines)
    cars: list[Car] = field(default_factory=list)
    stains: list[tuple[float, float, float, float, float]] = field(default_factory=list)  # x, y, ang, a, b
    patches: list[tuple[Polygon, Color]] = field(default_factory=list)
    poles: list[tuple[float, float]] = field(default_factory=list)  # light poles (x, y)
    stalls: int = 0
    lot_id: int = 0
    mapped: bool = True
    shift: tuple[float, float] = (0.0, 0.0)
    osm_type: str | None = None
    osm_id: int | None = None
    osm_tags: dict[str, str] = field(default_factory=dict)

    @property
    def visible(self) -> bool:
        return self.kind == "surface"


@dataclass
class Building:
    """A building: footprint, height (m), roof base colour and roof details drawn on top in order."""

    poly: Polygon
    height: float
    color: Color
    details: list[tuple[BaseGeometry, Color]] = field(default_factory=list)
    deck: Lot | None = None  # roof deck of a parking garage
    tags: dict[str, str] = field(default_factory=dict)
    osm_id: int | None = None


@dataclass
class Scene:
    """Everything in the city, in drawing order per list."""

    size_m: float
    n_px: int
    gsd: float
    shadow: tuple[float, float]  # ground shadow offset per metre of height (dx, dy)
    streets: list[Street] = field(default_factory=list)
    ways: list[Way] = field(default_factory=list)
    nodes: dict[int, tuple[float, float]] = field(default_factory=dict)  # road nodes
    junctions: dict[int, list[tuple[int, bool]]] = field(default_factory=dict)
    sidewalk: BaseGeometry | None = None
    verge: BaseGeometry | None = None
    carriageway: BaseGeometry | None = None
    grounds: list[tuple[BaseGeometry, Color]] = field(default_factory=list)
    ground_lines: list[tuple[np.ndarray, Color, float]] = field(default_factory=list)
    driveways: list[tuple[BaseGeometry, Color]] = field(default_factory=list)
    paint_lines: list[tuple[np.ndarray, Color, float]] = field(default_factory=list)
    paint_polys: list[tuple[np.ndarray, Color]] = field(default_factory=list)
    road_patches: list[tuple[BaseGeometry, Color]] = field(default_factory=list)
    markings: list[Marking] = field(default_factory=list)
    road_cars: list[Car] = field(default_factory=list)
    lots: list[Lot] = field(default_factory=list)
    buildings: list[Building] = field(default_factory=list)
    courts: list[BaseGeometry] = field(default_factory=list)  # courts and ponds: no tree canopy over them
    trees_raw: list[tuple[float, float, float, float]] = field(default_factory=list)  # x, y, r, h before settling
    trees: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)))  # x, y, r (m), h (m), tone 0..1
    osm_areas: list[tuple[Polygon, dict[str, str]]] = field(default_factory=list)  # parks, pitches, squares
    complete: BaseGeometry | None = None
    #: how many look-alikes to draw (0..1, ``synth.decoy_share``)
    decoy_share: float = 0.5
    #: look-alikes drawn: (geometry, class they resemble, kind), e.g. (plaza, "parking", "plaza")
    decoys: list[tuple[BaseGeometry, str, str]] = field(default_factory=list)
