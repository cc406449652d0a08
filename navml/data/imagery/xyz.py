"""Fetch XYZ / TMS tiles from a URL template into the shard store.

The template names the tile with ``{z}``, ``{x}`` and ``{y}`` (``{-y}`` or
``{tms_y}`` for TMS servers, whose rows count from the south) and may carry
``{token}``, filled from an environment variable and never written to logs,
errors or files (it shows as ``***``).

Each shard is a task of :func:`navml.geo.parallel.map_shards` (in this
process by default, or on Dask); its tiles are fetched concurrently over one
pooled :class:`requests.Session`;
429, 5xx, timeouts, connection errors and bodies that are not an image are
retried with exponential back-off and jitter (``Retry-After`` honoured).
Every decoded tile is cached atomically under the cache folder, so a run that
was interrupted fetches only what is still missing. Shards are assembled from
the tiles (memory: about two shards per process) into a staging layer
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
from dataclasses import dataclass
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
        self.workers = max(1, workers)
        self._pool: ThreadPoolExecutor | None = None
        self.counts = {"fetched": 0, "cached": 0, "requests": 0, "retries": 0, "bytes": 0, "cache_corrupt": 0}

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def cache_path(self, tile: Tile) -> Path:
        return self.cache / str(tile.z) / str(tile.x) / f"{tile.y}.{self.url.suffix()}"

    def pool(self) -> ThreadPoolExecutor:
        """The threads of this fetcher's concurrent downloads (made at first use; :meth:`close` shuts them down)."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="navml-xyz")
            return self._pool

    def close(self) -> None:
        """Stop queued downloads, wait for those in flight (they land in the cache), close the connections."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=self.stop.is_set())
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


#: Fetchers of the runs in this process, by run id (the in-process modes share one HTTP pool; a Dask task makes its own).
_FETCHERS: dict[str, TileFetcher] = {}


@dataclass(frozen=True)
class ShardFetch:
    """One shard of :func:`build_from_xyz`, as a task of :func:`navml.geo.parallel.map_shards` (picklable)."""

    run: str  # the run's id: its fetcher, where this process has one
    url: TileUrl
    shard: Tile
    tiles: tuple[Tile, ...]
    store: object  # navml.geo.store.Store
    layer: str  # the staging layer written to
    write: bool  # write the shard here (True) or send it back to the client
    cache_dir: str
    workers: int  # concurrent downloads
    retries: int
    timeout_s: float
    backoff_s: float


def fetch_shard(task: ShardFetch) -> tuple[dict | None, tuple[np.ndarray, np.ndarray] | None]:
    """Fetch (or take from the cache) the tiles of one shard, assemble it and write it (``task.write``) or return it.

    Returns this task's download counts (``None`` when it used the run's fetcher of this process,
    which counts for the whole run) and ``None`` or the ``(pixels, valid mask)`` to write.
    """
    grid: Grid = task.store.grid
    size = grid.tile_size
    own = task.run not in _FETCHERS
    fetcher = _FETCHERS.get(task.run) or TileFetcher(
        task.url, size, cache_dir=task.cache_dir, workers=task.workers, retries=task.retries, timeout_s=task.timeout_s,
        backoff_s=task.backoff_s,
    )
    pool = fetcher.pool()
    sw = shard_window(task.shard, grid)
    arr = np.zeros((3, grid.shard_size, grid.shard_size), dtype="uint8")
    valid = np.zeros((grid.shard_size, grid.shard_size), dtype=bool)
    futures = [(t, pool.submit(fetcher.get, t)) for t in task.tiles]
    try:
        for t, fut in futures:
            r, c = t.y * size - sw.row, t.x * size - sw.col
            arr[:, r : r + size, c : c + size], valid[r : r + size, c : c + size] = fut.result()
    except BaseException:
        # stop retries and queued tiles; tiles in flight finish and land in the cache (atomically).
        # The run's shared fetcher is stopped by the run (build_from_xyz), which reports the first error in shard order.
        if own:
            fetcher.stop.set()
        for _, fut in futures:
            fut.cancel()
        raise
    finally:
        if own:
            fetcher.close()
    out = None
    if task.write:
        task.store.write_shard(task.layer, task.shard, arr, tags={"navml_source": "xyz", "navml_url": task.url.template}, valid=valid)
    else:
        out = (arr, valid)
    return (dict(fetcher.counts) if own else None), out


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
    scheduler=None,
) -> dict:
    """Fetch every tile of ``tiles`` and write the shards of layer ``imagery``.

    Each shard is a task (:func:`fetch_shard`: its tiles on ``workers``
    concurrent downloads, then assembled and written) of
    :func:`navml.geo.parallel.map_shards` where ``scheduler`` says (a name, an
    address or a :class:`~navml.geo.parallel.Plan`). Without one, it runs in
    this process, the tiles of the next shard requested while one is assembled,
    over one pool of ``workers`` connections. On Dask every task fetches with
    its own ``workers`` connections into the cache folder of its machine.

    The shards go to a staging layer that replaces the old ``imagery`` layer as
    a whole once every shard is written: a failed tile or Ctrl-C leaves the old
    layer exactly as it was (the tiles fetched so far stay in the cache).
    Transparent tile pixels are marked invalid in the shards' valid-data mask.

    Returns counts: ``shards``, ``tiles``, ``fetched`` (downloaded now),
    ``cached`` (taken from the cache), ``requests``, ``retries``, ``bytes``,
    ``cache_corrupt`` (cached tiles that did not decode and were refetched).
    """
    import uuid

    from navml.geo.parallel import Plan, map_shards, resolve_scheduler, writes_on_workers

    grid: Grid = store.grid
    groups = group_by_shard(tiles, grid)
    plan = resolve_scheduler(scheduler)
    if plan.serial:  # in this process: the next shard's tiles are fetched while one is assembled and written
        plan = Plan("threads", 1 + LOOKAHEAD)
    cache = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE)
    if plan.mode != "address":
        cache = cache.absolute()  # a local worker's working folder may differ
    run = uuid.uuid4().hex
    fetcher = None
    if not plan.distributed:
        fetcher = _FETCHERS[run] = TileFetcher(
            url, grid.tile_size, cache_dir=cache, workers=workers, retries=retries, timeout_s=timeout_s, backoff_s=backoff_s
        )
    counts = {"fetched": 0, "cached": 0, "requests": 0, "retries": 0, "bytes": 0, "cache_corrupt": 0}
    try:
        with _redacting_logs(url), store.staged_layer(LAYER) as staging:
            write = writes_on_workers(plan, store.root)
            tasks = [ShardFetch(run, url, s, tuple(ts), store, staging, write, str(cache), workers, retries, timeout_s, backoff_s)
                     for s, ts in groups.items()]
            for task, (got, shard) in zip(tasks, map_shards(
                fetch_shard, tasks, scheduler=plan, desc="imagery (xyz)", unit="tile", weights=[len(t.tiles) for t in tasks],
                in_flight=plan.workers if plan.mode == "threads" else None, progress=progress,
                stop=fetcher.stop.set if fetcher is not None else None,
            )):
                for k, v in (got or {}).items():
                    counts[k] += v
                if shard is not None:
                    store.write_shard(staging, task.shard, shard[0], tags={"navml_source": "xyz", "navml_url": url.template}, valid=shard[1])
    except BaseException:
        if fetcher is not None:
            fetcher.stop.set()
        raise
    finally:
        if fetcher is not None:
            fetcher.close()
            _FETCHERS.pop(run, None)
    if fetcher is not None:
        counts = dict(fetcher.counts)
    return {"source": "xyz", "shards": len(groups), "tiles": len(tiles), **counts}
