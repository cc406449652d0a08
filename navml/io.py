"""Atomic writes: every file and folder navml writes appears whole or not at all.

A file is written to a hidden temporary name beside its target and renamed
over it (``os.replace``, atomic on one filesystem); a folder is built beside
its target and swapped in. A failure or an interrupt leaves the previous
output intact and no partial one. Files get the permissions of the user's
umask (``tempfile.mkstemp`` would leave them 0600). JSON is written one way:
two-space indent, keys in insertion order, NaN and infinities as ``null``, a final newline.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux: /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _LOCK:  # elsewhere: set and restore (other threads must not create files meanwhile)
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _umask_mode(directory: bool = False) -> int:
    return (0o777 if directory else 0o666) & ~current_umask()


def follow_umask(path: str | os.PathLike, directory: bool = False) -> None:
    """Give ``path`` (made by ``mkstemp``/``mkdtemp``: 0600/0700) the mode ``open()``/``mkdir`` would have: 0o666 (0o777) minus the umask."""
    os.chmod(path, _umask_mode(directory))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``.

    ``suffix`` is kept at the end of the temporary name for writers that pick
    a format by extension (``.tif``, ``.keras``). On an exception the
    temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def _clean(value: Any) -> Any:
    """JSON-ready copy: NumPy scalars to Python, tuples to lists, NaN to None."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps_json(data: Any) -> str:
    """``data`` as navml writes JSON: indent 2, NaN as null, final newline."""
    return json.dumps(_clean(data), indent=2, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as JSON to ``path`` atomically (see :func:`dumps_json`)."""
    return write_text(path, dumps_json(data))


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file (errors are the caller's to word)."""
    return json.loads(Path(path).read_text())


def replace_dir(staged: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Swap folder ``staged`` in as ``target``: the old ``target`` is kept until the new one is in place."""
    staged, target = Path(staged), Path(target)
    os.chmod(staged, _umask_mode(directory=True))
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / target.name)
    os.replace(staged, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


@contextlib.contextmanager
def staging_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty folder beside ``target``; on success it replaces ``target`` as a whole."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent))
    try:
        yield staged
        replace_dir(staged, target)
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)
