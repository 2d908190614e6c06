"""Atomic file writes: a crash or kill never leaves a half-written artifact behind.

A writer of NAME works in ``.NAME.XXXXXXXX.tmp`` beside it (``.old`` holds a directory it moved
aside; NAME is shortened where the name would be too long) and holds an exclusive ``flock`` on
that temporary while it lives (taken while it is still ``.new``, a name sweepers ignore). A lock
dies with its process, so the next writer of NAME can tell a killed writer's leftovers from a
running one's, across containers and without trusting process ids. (On shared storage whose locks
stay local to each client, e.g. NFS mounted with ``local_lock=flock``, only writers on the same host
are told apart.)
"""
from __future__ import annotations

import errno
import hashlib
import math
import os
import re
import shutil
import socket
import stat
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock, so nothing is swept and runs are not locked
    fcntl = None


NAME_MAX = 255  # the longest file name: bytes on ext4, xfs, btrfs (characters on APFS and NTFS)
_TEMP_ROOM = NAME_MAX - len(".") - len(".XXXXXXXX.tmp")


def _temp_name(name: str) -> str:
    """NAME as its temporaries carry it: whole where ``.NAME.XXXXXXXX.tmp`` fits in a file name,
    else its start, a digest of it and its last 32 characters (which keep the suffix sweepers match)."""
    raw = os.fsencode(name)  # the bytes on disk (a name that is not UTF-8 carries surrogates in Python)
    if len(raw) <= _TEMP_ROOM:
        return name
    tail = name[-32:]
    head = raw[: _TEMP_ROOM - len(os.fsencode(tail)) - len("~12345678")]
    while head:  # not cut inside a UTF-8 character
        try:
            head.decode()
            break
        except UnicodeDecodeError:
            head = head[:-1]
    return f"{os.fsdecode(head)}~{hashlib.sha256(raw).hexdigest()[:8]}{tail}"


class LockedError(RuntimeError):
    """Another process holds the lock."""


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


def _try_lock(fd: int) -> bool:
    """An exclusive ``flock`` on ``fd``, without waiting; False where another open file holds
    one. Other errors (a file system without ``flock``) propagate."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


_held: set[int] = set()  # hold_lock's fds: closed in forked children, so the lock dies with its holder


def _close_held_in_child() -> None:
    for fd in _held:
        os.close(fd)
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_in_child)  # e.g. DataLoader workers


def json_safe(value):
    """JSON has no NaN: undefined values (metrics of a split without a labelled pixel) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    return value


@contextmanager
def hold_lock(path: str | os.PathLike):
    """Hold an exclusive lock on ``path`` (created if missing) for the block; raise
    :class:`LockedError`, naming the holder, where another process has it. Where the file
    system has no ``flock``, warn and go on unlocked."""
    if fcntl is None:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    _held.add(fd)
    try:
        try:
            locked = _try_lock(fd)
        except OSError as err:
            warnings.warn(f"cannot lock {path} ({err.strerror}): a second writer would not be noticed",
                          stacklevel=3)
        else:
            if not locked:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                raise LockedError(f"{path} is held by {holder}")
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        _held.discard(fd)
        os.close(fd)  # releases the lock


def _as_temporary(new: str) -> str:
    """Rename a just-made ``.NAME.XXXXXXXX.new`` to the ``.tmp`` that sweepers look at, once its
    writer holds the lock on it: a sweeper never sees it unlocked."""
    tmp = new[: -len(".new")] + ".tmp"
    os.replace(new, tmp)
    return tmp


def _lock_own(fd: int) -> None:
    """Lock a writer's own temporary: the sign, for sweepers, that its writer is alive."""
    try:
        _try_lock(fd)  # just made under a random name: nobody else holds it
    except OSError:
        pass


def _claim(tmp: Path) -> int | None:
    """Lock a leftover temporary of ours whose writer is gone; None where a live writer (or
    another user) holds it, or where there is no telling. The fd, to close once it is cleared."""
    try:
        info = os.lstat(tmp)
        if info.st_uid != os.geteuid() or stat.S_ISLNK(info.st_mode):
            return None
        fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if _try_lock(fd):
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)  # a finishing writer may be deleting it too
        if os.path.lexists(path):
            raise OSError(errno.ENOTEMPTY, "could not be deleted", str(path))
    else:
        path.unlink(missing_ok=True)


def sweep_leftovers(path: str | os.PathLike, stacklevel: int = 2) -> list[Path]:
    """Clear what killed writers of ``path`` left beside it; returns the leftovers cleared.

    A temporary no live process holds is deleted. A directory :func:`atomic_dir` had moved
    aside is put back if ``path`` is missing and the kill fell between its two renames (its
    temporary is there too), deleted if ``path`` is there, and else left alone. Best effort:
    what cannot be cleared is warned about, and the write goes on. ``stacklevel`` is the
    warnings' (the frame to blame, counted from here).
    """
    path = Path(path)
    if fcntl is None:
        return []
    named = re.compile(rf"\.{re.escape(_temp_name(path.name))}\.([a-z0-9_]{{8}})\.(?:tmp|old)")
    try:
        stems = sorted({m[1] for m in map(named.fullmatch, os.listdir(path.parent)) if m})
    except OSError:
        return []
    cleared = []
    for stem in stems:
        cleared += _clear(path, stem, stacklevel + 1)
    return cleared


def sweep_folder(folder: str | os.PathLike, suffixes: tuple[str, ...], stacklevel: int = 2) -> list[Path]:
    """Clear the temporaries that killed :func:`atomic_path` writes of files ending in ``suffixes``
    left in ``folder`` (one scan for a folder of many small outputs whose writes do not sweep one
    by one). Only ``.NAME.XXXXXXXX.tmp`` files of ours whose writer is gone go: a folder may be the
    user's own (photos beside their label maps), holding other programs' temporaries."""
    if fcntl is None:
        return []
    ends = "|".join(map(re.escape, suffixes))
    named = re.compile(rf"\.(.+(?:{ends}))\.([a-z0-9_]{{8}})\.tmp")
    try:
        found = sorted({m.groups() for m in map(named.fullmatch, os.listdir(folder)) if m})
    except OSError:
        return []
    cleared = []
    for name, stem in found:
        cleared += _clear(Path(folder) / name, stem, stacklevel + 1)
    return cleared


def _clear(path: Path, stem: str, stacklevel: int) -> list[Path]:
    """Clear one killed write's leftovers (see :func:`sweep_leftovers`)."""
    tmp, old = (path.parent / f".{_temp_name(path.name)}.{stem}.{kind}" for kind in ("tmp", "old"))
    had_tmp = os.path.lexists(tmp)
    fd = _claim(tmp) if had_tmp else None
    if had_tmp and fd is None:
        return []  # its writer is alive, or there is no telling
    cleared = []
    try:
        if os.path.lexists(old):
            if had_tmp and not os.path.lexists(path):
                os.replace(old, path)
                warnings.warn(f"{path} was put back from {old.name}, where a killed write had moved it",
                              stacklevel=stacklevel)
                cleared.append(old)
            elif os.path.lexists(path):
                _remove(old)
                cleared.append(old)
        if had_tmp:
            _remove(tmp)
            cleared.append(tmp)
    except OSError as err:
        warnings.warn(f"could not clear {err.filename or path.name}, left by a killed write: {err}",
                      stacklevel=stacklevel)
    finally:
        if fd is not None:
            os.close(fd)
    return cleared


@contextmanager
def atomic_path(path: str | os.PathLike, sweep: bool = False):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    ``sweep``: first clear killed writers' temporaries (:func:`sweep_leftovers`); worth a
    directory scan for big artifacts, not for each of thousands of small outputs (their
    writer sweeps the folder once: :func:`sweep_folder`). A symbolic link is followed: the file it
    points to is replaced, and the link stays; anything but a regular file is refused.
    """
    path = Path(os.path.realpath(path))
    if path.exists() and not path.is_file():
        raise OSError(f"{path} is not a regular file (a folder, device, pipe or socket): it is not replaced")
    path.parent.mkdir(parents=True, exist_ok=True)
    if sweep:
        sweep_leftovers(path, stacklevel=4)
    fd, tmp = tempfile.mkstemp(prefix=f".{_temp_name(path.name)}.", suffix=".new", dir=path.parent)
    if fcntl is None:  # nothing to lock; and Windows renames no open file
        os.close(fd)
        fd = None
    try:
        if fd is not None:
            _lock_own(fd)  # held until the rename
        tmp = _as_temporary(tmp)
        yield Path(tmp)
        _fsync(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it owner-only
        os.replace(tmp, path)
    finally:
        try:
            if os.path.lexists(tmp):
                os.unlink(tmp)
        finally:
            if fd is not None:
                os.close(fd)


@contextmanager
def atomic_dir(path: str | os.PathLike, before_swap=None):
    """Yield a temporary directory beside ``path``; on success it replaces ``path`` whole.

    Its files are flushed to disk before the swap; ``before_swap(path)``, if given, is called then
    (to check again what is about to be replaced: it may raise). An existing ``path`` is moved aside under a
    name of its own (so concurrent builds do not collide) and put back if the new one cannot
    take its place; it is deleted only once the new directory is in. A symbolic link is
    followed: the directory it points to is the one replaced, and the link stays. Killed
    writers' leftovers are cleared first (:func:`sweep_leftovers`).
    """
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(path, stacklevel=4)
    tmp = Path(tempfile.mkdtemp(prefix=f".{_temp_name(path.name)}.", suffix=".new", dir=path.parent))
    fd = None
    try:
        if fcntl is not None:
            fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
            _lock_own(fd)  # held to the end
        tmp = Path(_as_temporary(str(tmp)))
        yield tmp
        for file in tmp.rglob("*"):
            if file.is_file():
                _fsync(file)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it owner-only
        if before_swap is not None:
            before_swap(path)
        if not path.exists():
            os.replace(tmp, path)
        else:
            old = tmp.with_suffix(".old")  # paired with tmp by name: see sweep_leftovers
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
    finally:
        try:
            shutil.rmtree(tmp, ignore_errors=True)
        finally:
            if fd is not None:
                os.close(fd)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
