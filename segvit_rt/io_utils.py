"""Atomic file writes: a crash or kill never leaves a half-written artifact behind.

Temporaries are named ``.NAME.HOST-PID.XXXXXXXX.tmp`` (``.old`` for a directory moved aside),
so the next writer of NAME can tell a killed writer's leftovers from a running one's.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (``os.umask`` sets it
    for a moment, which races with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:  # writable: Windows cannot flush a read-only handle
        os.fsync(f.fileno())


def _prefix(path: Path) -> str:
    return f".{path.name}.{socket.gethostname()}-{os.getpid()}."


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def sweep_leftovers(path: str | os.PathLike) -> list[Path]:
    """Clear what killed writers of ``path`` on this host left beside it; returns those paths.

    Temporaries are deleted. A directory moved aside by :func:`atomic_dir` is put back if
    ``path`` is missing (the kill fell between the two renames), else deleted. Leftovers of a
    process still running, or of another host sharing the folder, are not touched.
    """
    path = Path(path)
    if os.name != "posix" or not path.parent.is_dir():  # os.kill(pid, 0) is a probe on POSIX only
        return []
    named = re.compile(rf"\.{re.escape(path.name)}\.(?P<host>.+)-(?P<pid>\d+)\.[a-z0-9_]+\.(?P<kind>tmp|old)")
    host, stale = socket.gethostname(), []
    with os.scandir(path.parent) as entries:
        for entry in entries:
            m = named.fullmatch(entry.name)
            if m and m["host"] == host and not _running(int(m["pid"])):
                stale.append((entry.stat(follow_symlinks=False).st_mtime, Path(entry.path), m["kind"]))
    for _, leftover, kind in sorted(stale, reverse=True):  # newest first: the one to put back
        try:
            if kind == "old" and not os.path.lexists(path):
                os.replace(leftover, path)
                warnings.warn(f"{path} was put back from {leftover.name}, where an interrupted write had moved it",
                              stacklevel=3)
            elif leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
        except FileNotFoundError:  # another writer swept it first
            pass
        except OSError as err:  # not worth failing the write for
            warnings.warn(f"could not clear {leftover}: {err}", stacklevel=3)
    return [leftover for _, leftover, _ in stale]


@contextmanager
def atomic_path(path: str | os.PathLike, sweep: bool = False):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    ``sweep``: first clear killed writers' temporaries (:func:`sweep_leftovers`); worth a
    directory scan for big artifacts, not for each of thousands of small outputs.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if sweep:
        sweep_leftovers(path)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _fsync(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it owner-only
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield a temporary directory beside ``path``; on success it replaces ``path`` whole.

    Its files are flushed to disk before the swap. An existing ``path`` is moved aside under a
    name of its own (so concurrent builds do not collide) and put back if the new one cannot
    take its place; it is deleted only once the new directory is in. A symbolic link is
    followed: the directory it points to is the one replaced, and the link stays. Killed
    writers' leftovers are cleared first (:func:`sweep_leftovers`).
    """
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(path)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        for file in tmp.rglob("*"):
            if file.is_file():
                _fsync(file)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it owner-only
        if not path.exists():
            os.replace(tmp, path)
        else:
            old = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".old", dir=path.parent))
            try:
                os.replace(path, old)  # renaming a directory onto an empty one replaces it
            except BaseException:
                old.rmdir()
                raise
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
