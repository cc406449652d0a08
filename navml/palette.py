"""One palette: the colour of every class, of background and of "unknown", for every picture navml draws.

Mask values follow the registry (:func:`navml.config.segmentation_classes`):
0 background (black), ``i + 1`` the i-th segmentation class (its ``color``),
255 unknown (outside complete mapping: a grey diagonal hatch, never black, so
it cannot be mistaken for background). Detection boxes take the colour of
their class. Two classes given the same colour keep the first one; the later
ones get the next free colour of :data:`FALLBACK`, so classes always differ.
Used by :mod:`navml.data.export` and the overlays of :mod:`navml.segment.evaluate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from navml.config import ClassSpec, detection_names, segmentation_classes

Color = tuple[int, int, int]

#: Mask value of unknown pixels (same as :data:`navml.data.rasterize.IGNORE`).
UNKNOWN_VALUE = 255
BACKGROUND: Color = (0, 0, 0)
#: The two greys of the unknown hatch (stripes 4 px wide, 45 degrees).
UNKNOWN: Color = (150, 150, 150)
UNKNOWN_DARK: Color = (70, 70, 70)
HATCH_PX = 4
#: Colours for classes whose colour another class already has (distinct, saturated).
FALLBACK: tuple[Color, ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40), (128, 0, 0),
)


@dataclass(frozen=True)
class Palette:
    """Colours of mask values (``mask[i]`` for value ``i + 1``) and of detection classes by class name."""

    mask: tuple[Color, ...] = ()
    boxes: dict[str, Color] = field(default_factory=dict)
    #: Box class id (boxes.csv ``class_id``) -> class name.
    box_classes: dict[int, str] = field(default_factory=dict)

    def lut(self) -> np.ndarray:
        """(256, 3) uint8 lookup table: mask value -> RGB (unknown gets the light hatch grey)."""
        lut = np.zeros((256, 3), dtype="uint8")
        lut[0] = BACKGROUND
        for i, c in enumerate(self.mask[:254]):
            lut[i + 1] = c
        lut[UNKNOWN_VALUE] = UNKNOWN
        return lut

    def box_color(self, class_id: int, class_name: str | None = None) -> Color:
        """Colour of a box by its class name, else by its class id."""
        name = class_name if class_name in self.boxes else self.box_classes.get(int(class_id))
        return self.boxes.get(name, FALLBACK[int(class_id) % len(FALLBACK)])  # type: ignore[arg-type]


def distinct(colors: Sequence[Sequence[int]]) -> list[Color]:
    """``colors`` with repeats replaced by the first unused :data:`FALLBACK` colours."""
    out: list[Color] = []
    spare = [c for c in FALLBACK if c not in {tuple(int(v) for v in x) for x in colors}]
    for c in colors:
        c = tuple(int(v) for v in c)
        if c in out or c in (BACKGROUND, UNKNOWN, UNKNOWN_DARK):
            c = spare.pop(0) if spare else c
        out.append(c)  # type: ignore[arg-type]
    return out


def palette_of(classes: Sequence[ClassSpec]) -> Palette:
    """The palette of a class registry: segmentation colours in mask order, detection colours by class."""
    seg = segmentation_classes(list(classes))
    det = [c for c in classes if c.task == "detection"]
    colors = distinct([c.color for c in [*seg, *det]])
    ids = {i: cls for i, (cls, _) in enumerate(detection_names(list(classes)))}
    return Palette(
        mask=tuple(colors[: len(seg)]),
        boxes={c.name: colors[len(seg) + i] for i, c in enumerate(det)},
        box_classes=ids,
    )


def palette_from_colors(colors: Sequence[Sequence[int]]) -> Palette:
    """A palette of segmentation colours only (mask value ``i + 1`` -> ``colors[i]``)."""
    return Palette(mask=tuple(distinct(colors)))


def hatch(shape: tuple[int, int]) -> np.ndarray:
    """Boolean (rows, cols): True on the light stripes of the unknown hatch."""
    r, c = np.indices(shape)
    return ((r + c) // HATCH_PX) % 2 == 0


def colorize(mask: np.ndarray, palette: Palette) -> np.ndarray:
    """RGB uint8 (rows, cols, 3) of a class-index mask; unknown pixels hatched grey."""
    rgb = palette.lut()[mask]
    unknown = mask == UNKNOWN_VALUE
    if unknown.any():
        rgb[unknown & ~hatch(mask.shape)] = UNKNOWN_DARK
    return rgb


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Imagery (rows, cols, bands) of 1..n bands as RGB uint8: 1 or 2 bands as grey (first band), 3+ as the first three."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[..., None]
    a = np.repeat(a[..., :1], 3, axis=-1) if a.shape[-1] < 3 else a[..., :3]
    return np.ascontiguousarray(np.clip(a, 0, 255), dtype="uint8")


def paint(image: np.ndarray, labels: np.ndarray, palette: Palette, alpha: float = 0.4) -> np.ndarray:
    """Imagery (rows, cols, 1..n bands) as RGB with translucent class fills (``alpha``); unknown hatched."""
    out = to_rgb(image).astype("float32")
    lut = palette.lut().astype("float32")
    hit = (labels > 0) & (labels <= len(palette.mask))
    out[hit] = (1 - alpha) * out[hit] + alpha * lut[labels[hit]]
    unknown = labels == UNKNOWN_VALUE
    if unknown.any():
        out[unknown] *= 0.5  # class unknown: darkened, light stripes on top
        stripes = unknown & hatch(labels.shape)
        out[stripes] = 0.5 * out[stripes] + 0.5 * np.asarray(UNKNOWN, dtype="float32")
    return np.ascontiguousarray(np.clip(out, 0, 255), dtype="uint8")
