"""What the command-line entry points share."""
from __future__ import annotations

import os
import re
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path


class OutputPathError(ValueError):
    """An output path that cannot be written as asked."""


class UsageError(ValueError):
    """Command-line arguments that cannot work (together)."""


def check_output(path: str | Path, flag: str, folder: bool) -> None:
    """Refuse, before any work is done, an output ``path`` that cannot be written: a folder where a
    file is wanted (``folder=False``), a file where a folder is wanted, a path below a file, or one
    in a folder this process may not write (permissions, a read-only file system)."""
    path = Path(path)
    if folder and path.is_symlink() and not path.exists():
        raise OutputPathError(f"{flag} {path} is a broken link (to {os.readlink(path)}): the folder it names "
                              "does not exist")
    if folder and path.exists() and not path.is_dir():
        raise OutputPathError(f"{flag} {path} is a file, not a folder")
    if not folder and path.is_dir():
        raise OutputPathError(f"{flag} {path} is a folder; a file path is needed")
    if not folder and path.exists() and not path.is_file():
        raise OutputPathError(f"{flag} {path} is not a regular file (a device, pipe or socket): outputs are "
                              "written whole to a file; name one")
    for place in ([path] if folder else []) + list(path.parents):
        if place.exists():
            if not place.is_dir():
                raise OutputPathError(f"{flag} {path}: {place} is a file, not a folder")
            if not os.access(place, os.W_OK | os.X_OK):
                raise OutputPathError(f"{flag} {path}: cannot write in {place} (permission denied, or a read-only "
                                      "file system)")
            break


def check_outside_engine(path: str | Path, flag: str, engine: str | Path) -> None:
    """An output must not land in the --engine folder: a rebuild there refuses a folder holding other files."""
    from .engines.format import engine_folder  # imports torch

    folder = engine_folder(engine)
    out = Path(path).resolve()
    if folder.resolve() in out.parents or out == folder.resolve():
        raise UsageError(f"{flag} {path} is inside the --engine folder {folder}: write it elsewhere")


def few_names(names: list[str], shown: int = 5) -> str:
    """The first ``shown`` of ``names`` for a message, and how many more."""
    return ", ".join(names[:shown]) + (f" (+{len(names) - shown} more)" if len(names) > shown else "")


def user_message(error: BaseException) -> str:
    """The error's own message; for one re-raised from a DataLoader worker, without the worker's
    traceback that torch puts in front of it; for the system's own errors (a full disk, a name too
    long), the file and the reason."""
    if isinstance(error, OSError) and error.strerror and error.filename is not None:
        also = f" -> {error.filename2}" if error.filename2 is not None else ""
        return f"{error.filename}{also}: {error.strerror}"
    text = str(error)
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        own = re.fullmatch(rf"(?:[\w.]+\.)?{re.escape(type(error).__name__)}: (.*)", last)
        return own[1] if own else last
    return text


def _warning_line(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


@contextmanager
def on_interrupt(message: str):
    """Ctrl-C as one ``interrupted: MESSAGE`` line on stderr and exit status 130, not a traceback."""
    try:
        yield
    except KeyboardInterrupt:
        print(f"\ninterrupted: {message}", file=sys.stderr)
        raise SystemExit(130) from None


@contextmanager
def exit_on(*errors: type[BaseException], say: bool = True, prefix: str = ""):
    """Report ``errors`` (the problems a user can fix: bad input, bad files), and bad output
    paths, as one ``error: ...`` line on stderr and exit with status 2, without a traceback;
    warnings meanwhile print as one ``warning: ...`` line, without Python's source location.
    ``say=False`` exits without the line (the replicas of a torchrun other than rank 0);
    ``prefix`` goes before the message (which replica says it)."""
    shown = warnings.formatwarning
    warnings.formatwarning = _warning_line
    try:
        yield
    except (OutputPathError, *errors) as e:
        if say:
            print(f"error: {prefix}{user_message(e)}", file=sys.stderr)
        raise SystemExit(2) from e
    finally:
        warnings.formatwarning = shown
