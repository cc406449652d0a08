"""Tiles of the store as web-map PNGs: imagery, class-coloured masks, probability heat.

Every function takes arrays as the store holds them (bands, rows, cols) and
returns PNG bytes; pixels without data are transparent (RGBA), so the
viewer stacks layers over each other.
"""

from __future__ import annotations

import cv2
import numpy as np

from navml.palette import Palette, colorize, to_rgb


def png(rgba: np.ndarray) -> bytes:
    """PNG bytes of an RGB or RGBA uint8 image (rows, cols, 3 or 4)."""
    a = np.ascontiguousarray(rgba, dtype="uint8")
    code = cv2.COLOR_RGBA2BGRA if a.shape[-1] == 4 else cv2.COLOR_RGB2BGR
    ok, buf = cv2.imencode(".png", cv2.cvtColor(a, code), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:  # pragma: no cover - cv2 encodes any uint8 image
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    """RGB(A) uint8 array of PNG bytes (the inverse of :func:`png`)."""
    img = cv2.imdecode(np.frombuffer(data, "uint8"), cv2.IMREAD_UNCHANGED)
    code = cv2.COLOR_BGRA2RGBA if img.ndim == 3 and img.shape[-1] == 4 else cv2.COLOR_BGR2RGB
    return cv2.cvtColor(img, code) if img.ndim == 3 else img


def imagery_rgba(image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """RGBA of imagery (bands, rows, cols) 0..255: RGB as :func:`navml.palette.to_rgb`, transparent where not ``valid``."""
    rgb = to_rgb(np.moveaxis(image, 0, -1))
    return np.dstack([rgb, np.where(valid, 255, 0).astype("uint8")])


def mask_rgba(mask: np.ndarray, palette: Palette, alpha: int = 160) -> np.ndarray:
    """RGBA of a class mask (1, rows, cols) in class colours; background transparent, unknown hatched, ``alpha`` 0..255."""
    m = np.asarray(mask)[0]
    rgb = colorize(m, palette)
    return np.dstack([rgb, np.where(m > 0, alpha, 0).astype("uint8")])


def heat_rgba(probs: np.ndarray, threshold: float = 0.0) -> np.ndarray:
    """RGBA heat (inferno) of probabilities (classes, rows, cols; uint8 0..255 = 0..1), the most probable class per pixel.

    Pixels whose probability is below ``threshold`` (0..1) or 0 are transparent;
    the others have an opacity that grows with the probability (96..255).
    """
    p = np.asarray(probs)
    if p.ndim == 2:
        p = p[None]
    level = p.max(axis=0).astype("uint8")
    bgr = cv2.applyColorMap(level, cv2.COLORMAP_INFERNO)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    shown = (level > 0) & (level >= threshold * 255.0)
    alpha = np.where(shown, 96 + (level.astype("uint16") * 159) // 255, 0).astype("uint8")
    return np.dstack([rgb, alpha])
