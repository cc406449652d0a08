"""Running a model at the ground resolution it was trained at, whatever the latitude of the store.

A zoom-18 Web Mercator pixel is ``156543.034 * cos(lat) / 2**18`` ground metres (0.46 m in Denver,
0.30 m at 60 N), so the same lot is 1.5 times larger in pixels at 60 N. A model records the ground
resolution it was trained at (``meta.extra["gsd_m"]``); :func:`scale_factor` gives the model pixels
per store pixel of a store, and a window whose factor is not 1 is resampled onto the *model grid*
(:class:`Rescale`, :func:`to_model_grid`), run, and its output resampled back onto the store's
pixels (:func:`from_model_grid`). Shared by segmentation and detection (docs/cities.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from navml.geo.grid import Window

#: Relative difference between a store's and a model's ground resolution below which windows run as they are.
GSD_TOLERANCE = 0.02


def scale_factor(model_gsd: float | None, store_gsd: float, tolerance: float = GSD_TOLERANCE) -> float:
    """Model pixels per store pixel, ``store_gsd / model_gsd`` (ground metres per pixel of each);
    1.0 when the model does not record its ground resolution or the two differ by less than ``tolerance``."""
    if not model_gsd or model_gsd <= 0:
        return 1.0
    factor = float(store_gsd) / float(model_gsd)
    return 1.0 if abs(factor - 1.0) <= tolerance else factor


@dataclass(frozen=True)
class Rescale:
    """A window resampled to the model's ground resolution: ``read`` (store pixels, global) is resampled
    onto ``model`` (a window of the global *model* pixel grid, ``factor`` model pixels per store pixel),
    and the model's output back onto the job's core.

    Both grids are global (model pixel ``j`` covers store pixels ``[j / factor, (j + 1) / factor)``) and
    ``model`` starts on the model's stride grid, so a model pixel gets the same input and the same output
    whichever window computes it: seamless as without resampling (up to float rounding of the weights).
    """

    factor: float
    read: Window
    model: Window


def _axis_plan(c0: int, c1: int, factor: float, halo_lo: bool, halo_hi: bool, halo: int, stride: int) -> tuple[int, int, int, int]:
    """``(model start, model end, read start, read end)`` along one axis for the core ``[c0, c1)`` (store pixels)."""
    back = max(1.0, factor)  # triangle kernel radius of the way back, model pixels (wider when it averages)
    lo = math.floor(factor * (c0 + 0.5) - 0.5 - back)
    hi = math.ceil(factor * (c1 - 0.5) - 0.5 + back) + 1
    m0 = (lo - (halo if halo_lo else 0)) // stride * stride
    m1 = -(-(hi + (halo if halo_hi else 0)) // stride) * stride
    fwd = max(1.0, 1.0 / factor)  # radius of the way in, store pixels
    r0 = math.floor((m0 + 0.5) / factor - 0.5 - fwd) - 1
    r1 = math.ceil((m1 - 0.5) / factor - 0.5 + fwd) + 2
    return m0, m1, r0, r1


def rescale_plan(job, factor: float, halo: int, stride: int) -> Rescale:
    """The :class:`Rescale` of ``job`` (planned in store pixels) for a model at ``factor`` model pixels per store pixel,
    with ``halo`` model pixels of context on each side where ``job`` has a halo, on the model's ``stride`` grid."""
    core, inp = job.core, job.input
    mc0, mc1, rc0, rc1 = _axis_plan(core.col, core.col + core.width, factor, inp.col < core.col,
                                    inp.col + inp.width > core.col + core.width, halo, stride)
    mr0, mr1, rr0, rr1 = _axis_plan(core.row, core.row + core.height, factor, inp.row < core.row,
                                    inp.row + inp.height > core.row + core.height, halo, stride)
    return Rescale(factor, Window(rc0, rr0, rc1 - rc0, rr1 - rr0), Window(mc0, mr0, mc1 - mc0, mr1 - mr0))


def resample(x: np.ndarray, rows: int, cols: int, scale: tuple[float, float], translation: tuple[float, float]) -> np.ndarray:
    """``x`` (1, h, w, c) float32 onto a ``rows x cols`` grid: output pixel ``i`` (centre ``i + 0.5``) samples ``x`` at
    ``(i + 0.5 - translation) / scale`` (row, col), with a triangle kernel widened when it shrinks (antialiased)."""
    import tensorflow as tf

    y = tf.raw_ops.ScaleAndTranslate(
        images=tf.constant(x, tf.float32), size=[int(rows), int(cols)], scale=[float(scale[0]), float(scale[1])],
        translation=[float(translation[0]), float(translation[1])], kernel_type="triangle", antialias=True,
    )
    return y.numpy()


def to_model_grid(x: np.ndarray, plan: Rescale) -> np.ndarray:
    """Store pixels ``x`` (1, h, w, bands) of ``plan.read`` resampled onto ``plan.model``."""
    f, r, m = plan.factor, plan.read, plan.model
    return resample(x, m.height, m.width, (f, f), (r.row * f - m.row, r.col * f - m.col))


def from_model_grid(y: np.ndarray, plan: Rescale, core: Window) -> np.ndarray:
    """Model output ``y`` (1, rows, cols, c) on ``plan.model`` resampled back onto the store pixels of ``core``."""
    f, m = plan.factor, plan.model
    return resample(y, core.height, core.width, (1.0 / f, 1.0 / f), (m.row / f - core.row, m.col / f - core.col))


