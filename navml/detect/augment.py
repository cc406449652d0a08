"""Flips and 90-degree rotations of an image with its boxes, keeping the arrow labels true.

What a turn-arrow label means: arrows are painted in a lane pointing along
the direction of travel, and the kind (``left``, ``through_right``, …) says
where the arrow bends *as seen by a driver travelling along it*. The label
is therefore a property of the painted shape relative to its own pointing
direction, not of the image axes:

* A rotation (a multiple of 90 degrees; any proper rotation) turns the arrow
  and its direction of travel together: a ``left`` arrow pointing up the image
  becomes a ``left`` arrow pointing left, down or right. The kind is kept.
* A mirror (any flip: horizontal, vertical, or about a diagonal) reverses
  handedness. Horizontal flip of a ``left`` arrow pointing up the image: it
  still points up, the bend now goes to the driver's right -> ``right``.
  Vertical flip of the same arrow: it now points *down* the image (travel
  reverses) while its bend stays on the image's left side, which for a
  driver heading down is the right -> ``right`` as well. A vertical flip is
  a horizontal flip followed by a half turn, so both flips act alike on labels.
  The swap is the class registry's mirror table
  (:func:`navml.detect.classes.mirror_names`): ``left`` <-> ``right``,
  ``through_left`` <-> ``through_right``; ``through`` and ``left_right`` stay.
* A mirrored image shows left-hand traffic (arrows on the other side of the
  road): labels stay true, but the scene is one the model never meets in a
  right-hand-traffic city. ``flip: false`` keeps only the rotations.

Geometry, for an image of ``rows x cols`` pixels and a point ``(x, y)`` in
pixels (``x`` along columns): horizontal flip ``(cols - x, y)``; vertical
flip ``(x, rows - y)``; one quarter turn counter-clockwise as displayed
(``np.rot90(image, 1)``, result ``cols x rows``) ``(y, cols - x)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from navml.detect.classes import mirror_names


def mirror_table(names: Sequence[str], mirror: Mapping[str, str] | None = None) -> np.ndarray:
    """Class id (C,) of each class's mirror image, from the registry names (and its optional ``mirror`` mapping)."""
    table = mirror_names(names, mirror)
    index = {n: i for i, n in enumerate(names)}
    return np.array([index[table[n]] for n in names], dtype=int)


def _boxes(boxes: np.ndarray) -> np.ndarray:
    return np.asarray(boxes, float).reshape(-1, 4)


def hflip_boxes(boxes: np.ndarray, cols: int) -> np.ndarray:
    """Boxes (N, 4) pixels after a left-right flip of a ``cols``-wide image."""
    b = _boxes(boxes)
    return np.column_stack([cols - b[:, 2], b[:, 1], cols - b[:, 0], b[:, 3]])


def vflip_boxes(boxes: np.ndarray, rows: int) -> np.ndarray:
    """Boxes (N, 4) pixels after an up-down flip of a ``rows``-high image."""
    b = _boxes(boxes)
    return np.column_stack([b[:, 0], rows - b[:, 3], b[:, 2], rows - b[:, 1]])


def rot90_boxes(boxes: np.ndarray, rows: int, cols: int, k: int = 1) -> np.ndarray:
    """Boxes (N, 4) pixels after ``np.rot90(image, k)`` of a ``rows x cols`` image (counter-clockwise quarter turns)."""
    b = _boxes(boxes)
    for _ in range(k % 4):
        b = np.column_stack([b[:, 1], cols - b[:, 2], b[:, 3], cols - b[:, 0]])
        rows, cols = cols, rows
    return b


def transform(
    image: np.ndarray,
    boxes: np.ndarray,
    class_ids: np.ndarray,
    mirror: np.ndarray,
    *,
    hflip: bool = False,
    vflip: bool = False,
    k: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image (rows, cols, bands), boxes (N, 4) pixels and class ids (N,) after flips, then ``k`` quarter turns.

    The horizontal flip comes first, then the vertical one, then ``np.rot90(·, k)``.
    Each flip maps class ids through ``mirror`` (from :func:`mirror_table`);
    two flips cancel. The image comes back contiguous.
    """
    image = np.asarray(image)
    rows, cols = image.shape[:2]
    boxes = _boxes(boxes)
    class_ids = np.asarray(class_ids, int).reshape(-1)
    mirror = np.asarray(mirror, int)
    if hflip:
        image, boxes, class_ids = image[:, ::-1], hflip_boxes(boxes, cols), mirror[class_ids]
    if vflip:
        image, boxes, class_ids = image[::-1], vflip_boxes(boxes, rows), mirror[class_ids]
    if k % 4:
        boxes = rot90_boxes(boxes, rows, cols, k)
        image = np.rot90(image, k, axes=(0, 1))
    return np.ascontiguousarray(image), boxes, class_ids


def random_transform(
    image: np.ndarray,
    boxes: np.ndarray,
    class_ids: np.ndarray,
    mirror: np.ndarray,
    rng: np.random.Generator,
    *,
    flip: bool = True,
    rotate: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`transform` with flips (each with probability 1/2) and a uniform number of quarter turns."""
    h = bool(flip and rng.random() < 0.5)
    v = bool(flip and rng.random() < 0.5)
    k = int(rng.integers(4)) if rotate else 0
    return transform(image, boxes, class_ids, mirror, hflip=h, vflip=v, k=k)
