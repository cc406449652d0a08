"""Fetch XYZ / TMS tiles from a URL template into the shard store.

The template names the tile with ``{z}``, ``{x}`` and ``{y}`` (``{-y}`` or
``{tms_y}`` for TMS servers, whose rows count from the south) and may carry
``{token}``, filled from an environment variable and never written to logs,
errors or files (it shows as ``***``).

Tiles are fetched concurrently over one pooled :class:`requests.Session`;
429, 5xx, timeouts, connection errors and bodies that are not an image are
retried with exponential back-off and jitter (``Retry-After`` honoured).
Every decoded tile is cached atomically under the cache folder, so a run that
was interrupted fetches only what is still missing. Shards are assembled from
the tiles one after the other (memory: about two shards) into a staging layer
that replaces the ``imagery`` layer as a whole at the end
(:meth:`navml.geo.store.Store.staged_layer`): the layer is never half old, half new.
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import os
import random
import re
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from navml.errors import ConfigError, FetchError
from navml.geo.grid import Grid, Tile, group_by_shard, shard_window
from navml.io import follow_umask

LAYER = "imagery"
PLACEHOLDERS = ("z", "x", "y", "-y", "tms_y", "token")
#: Default cache root; one sub-folder per URL template (hashed).
DEFAULT_CACHE = Path(".navml-cache") / "xyz"
#: Longest single wait between two attempts, seconds.
MAX_BACKOFF_S = 60.0
#: Shards whose tiles are requested ahead of the one being assembled.
LOOKAHEAD = 1
RETRY_STATUS = {429} | set(range(500, 600))
USER_AGENT = "navml/0.1 (imagery stage; +https://github.com/navml)"

log = logging.getLogger("navml.data.imagery")
_FIELD = re.compile(r"\{([^{}]*)\}")


class _Stopped(Exception):
    """The run is being cancelled (Ctrl-C or another tile failed)."""


class TileUrl:
    """A checked URL template; :meth:`url` fills it, :meth:`redact` hides the token."""

    def __init__(self, template: str, token: str | None = None, token_env: str | None = None):
        if not isinstance(template, str) or not template.strip():
            raise ConfigError("imagery.url: empty; give a template like https://host/{z}/{x}/{y}.png")
        template = template.strip()
        if urlsplit(template).scheme not in ("http", "https"):
            raise ConfigError(f"imagery.url: '{template}' is not an http(s) URL template")
        fields = _FIELD.findall(template)
        unknown = sorted({f for f in fields if f not in PLACEHOLDERS})
        if unknown:
            raise ConfigError(
                f"imagery.url: unknown placeholder(s) {', '.join('{' + f + '}' for f in unknown)} in '{template}'; "
                f"use {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
            )
        if "z" not in fields or "x" not in fields or not {"y", "-y", "tms_y"} & set(fields):
            raise ConfigError(f"imagery.url: '{template}' needs {{z}}, {{x}} and {{y}} (or {{-y}} / {{tms_y}} for TMS)")
        if "token" in fields:
            if not token_env:
                raise ConfigError("imagery.url has {token} but imagery.token_env is empty; name the environment variable holding the token")
            if not token:
                raise ConfigError(f"imagery.url has {{token}} but environment variable {token_env} is not set; export {token_env}=<your token>")
        self.template = template
        self.token = token if "token" in fields else None
        self.token_env = token_env

    @property
    def key(self) -> str:
        """A stable short hash of the template (token placeholder unfilled)."""
        return hashlib.sha256(self.template.encode()).hexdigest()[:16]

    def url(self, tile: Tile) -> str:
        """The URL of ``tile`` (token filled in: never log it, use :meth:`redact`)."""
        tms = (1 << tile.z) - 1 - tile.y
        values = {"z": tile.z, "x": tile.x, "y": tile.y, "-y": tms, "tms_y": tms, "token": self.token or ""}
        return _FIELD.sub(lambda m: str(values[m.group(1)]), self.template)

    def redact(self, text: str) -> str:
        """``text`` with the token replaced by ``***``."""
        if self.token:
            text = text.replace(self.token, "***")
        return text

    def suffix(self) -> str:
        """File extension of the cached tiles (from the template's path; png by default)."""
        ext = Path(urlsplit(_FIELD.sub("0", self.template)).path).suffix.lower().lstrip(".")
        return ext if ext in ("png", "jpg", "jpeg", "webp") else "png"


def _quiet_opencv() -> None:
    """Keep OpenCV's own ``[ WARN]`` lines (one per broken image) off stderr: navml reports the tile itself."""
    import cv2

    logging_ = cv2.utils.logging
    if logging_.getLogLevel() > logging_.LOG_LEVEL_ERROR:
        logging_.setLogLevel(logging_.LOG_LEVEL_ERROR)


#: The last chunk of every PNG (IEND, with its CRC).
_PNG_END = b"IEND\xaeB`\x82"


def _truncated(data: bytes) -> bool:
    """True for a PNG, JPEG or WebP cut short (a dropped connection, a full disk): the decoder's
    own libraries would print their complaints straight to stderr, so such a body never reaches them."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return not data.rstrip(b"\x00").endswith(_PNG_END)
    if data.startswith(b"\xff\xd8"):
        return not data.rstrip(b"\x00\r\n").endswith(b"\xff\xd9")
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return len(data) < 8 + int.from_bytes(data[4:8], "little")
    return False


def decode_tile_valid(data: bytes, size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """An encoded tile (PNG / JPEG / WebP) as RGB uint8 (3, size, size) and its valid-data mask
    (bool, size x size: False where the tile is transparent); ``None`` if ``data`` is not an image.
    Transparent pixels become 0; other sizes are resampled."""
    import cv2

    if not data or _truncated(data):
        return None
    _quiet_opencv()
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        return None
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        return None
    valid = None
    if img.ndim == 2:
        rgb = np.repeat(img[:, :, None], 3, axis=2)
    elif img.shape[2] == 4:
        valid = img[:, :, 3] > 0
        rgb = img[:, :, 2::-1] * valid[:, :, None]
    elif img.shape[2] == 3:
        rgb = img[:, :, ::-1]
    else:
        return None
    if rgb.shape[:2] != (size, size):
        shrink = rgb.shape[0] > size
        rgb = cv2.resize(np.ascontiguousarray(rgb), (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        if valid is not None:
            valid = cv2.resize(valid.astype("uint8"), (size, size), interpolation=cv2.INTER_NEAREST).astype(bool)
            rgb = rgb * valid[:, :, None]
    if valid is None:
        valid = np.ones((size, size), dtype=bool)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)), valid


def decode_tile(data: bytes, size: int) -> np.ndarray | None:
    """An encoded tile (PNG / JPEG / WebP) as RGB uint8 (3, size, size); ``None`` if
    ``data`` is not an image. Transparent pixels become 0; other sizes are resampled."""
    out = decode_tile_valid(data, size)
    return None if out is None else out[0]


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        follow_umask(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class _Redact(logging.Filter):
    """Hides the token in records of third-party loggers (urllib3 logs URLs at DEBUG)."""

    def __init__(self, redact):
        super().__init__()
        self._redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = self._redact(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        return True


@contextmanager
def _redacting_logs(url: TileUrl):
    if not url.token:
        yield
        return
    flt = _Redact(url.redact)
    loggers = [logging.getLogger(n) for n in ("urllib3.connectionpool", "urllib3", "requests")]
    for lg in loggers:
        lg.addFilter(flt)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(flt)


class TileFetcher:
    """Fetches, checks and caches single tiles; safe to call from many threads."""

    def __init__(
        self,
        url: TileUrl,
        size: int,
        *,
        cache_dir: str | os.PathLike | None = None,
        workers: int = 8,
        retries: int = 5,
        timeout_s: float = 20.0,
        backoff_s: float = 0.5,
    ):
        import requests
        from requests.adapters import HTTPAdapter

        self.url = url
        self.size = size
        self.cache = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE) / url.key
        self.retries = retries
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.stop = threading.Event()
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max(1, workers), max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = USER_AGENT
        self._lock = threading.Lock()
        self.counts = {"fetched": 0, "cached": 0, "requests": 0, "retries": 0, "bytes": 0, "cache_corrupt": 0}

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def cache_path(self, tile: Tile) -> Path:
        return self.cache / str(tile.z) / str(tile.x) / f"{tile.y}.{self.url.suffix()}"

    def close(self) -> None:
        self.session.close()

    def get(self, tile: Tile) -> tuple[np.ndarray, np.ndarray]:
        """The tile as (3, size, size) uint8 and its valid-data mask (size x size bool), from the cache or the server."""
        path = self.cache_path(tile)
        if path.exists():
            try:
                arr = decode_tile_valid(path.read_bytes(), self.size)
            except OSError:
                arr = None
            if arr is not None:
                self._count("cached")
                return arr
            log.warning("%s: cached tile does not decode; fetching it again", path)
            self._count("cache_corrupt")
            path.unlink(missing_ok=True)
        data, arr = self._download(tile)
        _write_atomic(path, data)
        self._count("fetched")
        return arr

    def _wait(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise _Stopped()

    def _download(self, tile: Tile) -> tuple[bytes, tuple[np.ndarray, np.ndarray]]:
        import requests

        url = self.url.url(tile)
        shown = self.url.redact(url)
        attempts = self.retries + 1
        last = "no attempt"
        for attempt in range(attempts):
            if self.stop.is_set():
                raise _Stopped()
            if attempt:
                self._count("retries")
            wait = None
            self._count("requests")
            try:
                resp = self.session.get(url, timeout=self.timeout_s)
            except requests.Timeout:
                last = f"timed out after {self.timeout_s:g} s"
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                last = f"connection error ({type(exc).__name__})"
            else:
                status = resp.status_code
                body = resp.content
                if status == 200:
                    arr = decode_tile_valid(body, self.size)
                    if arr is not None:
                        self._count("bytes", len(body))
                        return body, arr
                    ctype = resp.headers.get("Content-Type", "?")
                    last = f"HTTP 200 but {len(body)} bytes of {ctype} that are not an image"
                elif status == 404:
                    raise FetchError(
                        f"{shown}: tile {tile.z}/{tile.x}/{tile.y} is missing on the server (HTTP 404); "
                        f"check imagery.url and that the server has zoom {tile.z} over the AOI"
                    )
                elif status in (401, 403):
                    how = (
                        f"check the token in ${self.url.token_env}"
                        if self.url.token
                        else "the server wants a token: add it with {token} in imagery.url and set imagery.token_env"
                    )
                    raise FetchError(f"{shown}: HTTP {status} (not authorised); {how}")
                elif status in RETRY_STATUS:
                    last = f"HTTP {status}"
                    wait = _retry_after(resp.headers.get("Retry-After"))
                else:
                    raise FetchError(f"{shown}: HTTP {status}; not retried, check imagery.url")
            if attempt + 1 == attempts:
                break
            if wait is None:
                base = self.backoff_s * 2**attempt
                wait = base * (0.5 + random.random())  # jitter: 0.5x .. 1.5x
            wait = min(wait, MAX_BACKOFF_S)
            log.debug("%s: %s; retry %d/%d in %.2f s", shown, last, attempt + 1, self.retries, wait)
            self._wait(wait)
        raise FetchError(
            f"{shown}: gave up after {attempts} attempt(s), last: {self.url.redact(last)}; "
            "try again later (cached tiles are kept) or raise imagery.retries"
        )


def build_from_xyz(
    store,
    tiles: Sequence[Tile],
    url: TileUrl,
    *,
    workers: int = 8,
    retries: int = 5,
    timeout_s: float = 20.0,
    backoff_s: float = 0.5,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict:
    """Fetch every tile of ``tiles`` and write the shards of layer ``imagery``.

    The shards go to a staging layer that replaces the old ``imagery`` layer as
    a whole once every shard is written: a failed tile or Ctrl-C leaves the old
    layer exactly as it was (the tiles fetched so far stay in the cache).
    Transparent tile pixels are marked invalid in the shards' valid-data mask.

    Returns counts: ``shards``, ``tiles``, ``fetched`` (downloaded now),
    ``cached`` (taken from the cache), ``requests``, ``retries``, ``bytes``,
    ``cache_corrupt`` (cached tiles that did not decode and were refetched).
    """
    from tqdm import tqdm

    grid: Grid = store.grid
    groups = group_by_shard(tiles, grid)
    shards = list(groups)
    size = grid.tile_size
    fetcher = TileFetcher(
        url, size, cache_dir=cache_dir, workers=workers, retries=retries, timeout_s=timeout_s, backoff_s=backoff_s
    )
    tags = {"navml_source": "xyz", "navml_url": url.template}
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="navml-xyz")
    pending: dict[int, list] = {}

    def submit(i: int) -> None:
        if i < len(shards) and i not in pending:
            pending[i] = [(t, pool.submit(fetcher.get, t)) for t in groups[shards[i]]]

    try:
        with _redacting_logs(url), store.staged_layer(LAYER) as staging, tqdm(
            total=len(tiles), unit="tile", desc="imagery (xyz)", disable=None if progress else True
        ) as bar:
            for i in range(LOOKAHEAD + 1):
                submit(i)
            for i, shard in enumerate(shards):
                submit(i + LOOKAHEAD)
                sw = shard_window(shard, grid)
                arr = np.zeros((3, grid.shard_size, grid.shard_size), dtype="uint8")
                valid = np.zeros((grid.shard_size, grid.shard_size), dtype=bool)
                for t, fut in pending.pop(i):
                    r, c = t.y * size - sw.row, t.x * size - sw.col
                    arr[:, r : r + size, c : c + size], valid[r : r + size, c : c + size] = fut.result()
                    bar.update(1)
                store.write_shard(staging, shard, arr, tags=tags, valid=valid)
    except BaseException:
        # Stop retries and queued tiles; tiles in flight finish and land in the
        # cache (atomically), so the next run resumes where this one stopped.
        fetcher.stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        fetcher.close()
        raise
    pool.shutdown(wait=True)
    fetcher.close()
    return {"source": "xyz", "shards": len(shards), "tiles": len(tiles), **fetcher.counts}
