"""Small I/O helpers shared by every writer: files appear whole or not at all."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb"):
    """Open a temporary file beside ``path``; on success fsync and rename it over ``path``.

    An exception (or an interrupt) inside the block removes the temporary file and leaves any
    previous ``path`` untouched; a process killed inside the block leaves at most a temporary file
    (``<name>.<random>.tmp`` beside ``path``), never a partial ``path``. Writers racing to one path
    each write their own temporary file; the last rename wins and ``path`` is always one whole file.
    An OSError while writing (a full disk, a file-size limit) is re-raised as the same OSError type
    with ``path`` and the cause in its message.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        try:
            with os.fdopen(fd, mode) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            if exc.filename is not None or exc.errno is None:
                raise
            raise type(exc)(exc.errno, f"{exc.strerror} while writing {path} (left unchanged)",
                            path) from exc
        with contextlib.suppress(OSError):  # make the rename durable (not every file system can)
            dfd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj, indent: int = 2) -> None:
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=indent)
        f.write("\n")
