"""File modes that follow the process umask for files made by :func:`tempfile.mkstemp`.

``mkstemp`` creates its file mode 0600 (and ``mkdtemp`` its folder 0700) whatever
the umask, so an output written as temp-and-rename would be private while every
other output is 0644. :func:`follow_umask` gives such a file (or folder) the mode
a plain ``open()`` (or ``mkdir``) would have given it: ``0o666 & ~umask``
(``0o777 & ~umask`` for a folder).
"""

from __future__ import annotations

import os
import threading

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


def follow_umask(path: str | os.PathLike, directory: bool = False) -> None:
    """Give ``path`` the mode ``open()`` / ``mkdir`` would have: 0o666 (0o777 for a folder) minus the umask."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())
