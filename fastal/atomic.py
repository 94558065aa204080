"""Crash-safe writes (a kill at any moment leaves the old file or the new one, never half of one),
and the checked read of what they wrote."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastal.errors import FastalError, check_path_names, path_error


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or a directory (a rename is only durable once its directory entry is on disk)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temp file beside ``path``; on success fsync it and rename it over ``path``.
    An OSError in the block or in the commit (a full disk) is one FastalError naming ``path``."""
    path = Path(path)
    check_writable(path)
    with naming_os_errors(path):  # permissions, or a full disk at a write, the flush or the fsync
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            # mkstemp makes the file 0600; give it the permissions a plain open() would.
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)
            with os.fdopen(fd, mode) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fsync_path(path.parent)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


@contextlib.contextmanager
def naming_os_errors(path: str | os.PathLike) -> Iterator[None]:
    """An OSError in the block (permissions, a full disk) becomes one FastalError naming ``path``."""
    try:
        yield
    except OSError as e:
        raise path_error(OSError(e.errno, e.strerror or str(e), os.fspath(path)), "cannot write ") from None


def check_writable(path: str | os.PathLike, directory: bool = False) -> None:
    """FastalError unless a file (``directory``: a directory) could be written at ``path``: no
    directory (file) is in the way, and no file stands where a parent directory would be. Lets
    a command check every output before it writes any."""
    path = Path(path)
    check_path_names(path, written=True)  # a directory too is built in a temp sibling (atomic_dir)
    if path.exists() and path.is_dir() != directory:
        what = "a file is there, not a directory" if directory else "it is a directory"
        raise FastalError(f"cannot write {path}: {what}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise FastalError(f"cannot write {path}: {parent} is a file, not a directory")
            return


def check_file(path: str | os.PathLike, what: str) -> None:
    """FastalError unless a file is at ``path`` (``what`` names it: an option, a role)."""
    path = Path(path)
    check_path_names(path)
    if path.is_dir():
        raise FastalError(f"{what} {path}: a directory, not a file")
    if not path.is_file():
        raise FastalError(f"{what} {path}: file not found")


def read_json(path: str | os.PathLike, hint: str = "") -> Any:
    """Parse a JSON file; a missing, unreadable or broken one is a FastalError naming it (``hint``
    says why it was expected)."""
    path = Path(path)
    check_path_names(path)
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        raise FastalError(f"{path}: not found{f' ({hint})' if hint else ''}") from None
    except OSError as e:  # a directory, no permission
        raise path_error(e, "cannot read ") from None
    except UnicodeDecodeError as e:
        raise FastalError(f"{path}: not valid JSON (not UTF-8 text: byte 0x{e.object[e.start]:02x} at offset "
                          f"{e.start})") from None
    except json.JSONDecodeError as e:
        raise FastalError(f"{path}: not valid JSON ({e})") from None


@contextlib.contextmanager
def appending(path: str | os.PathLike) -> Iterator[Any]:
    """Open text file ``path`` for appending; fsync it when the block ends. An OSError (a full
    disk) is one FastalError naming ``path``; lines written before it stay, so an append-only
    log must be one its reader can cut back (the query log is: the pool says how long it is)."""
    with naming_os_errors(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        with os.fdopen(fd, "a") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as JSON; a NaN or infinite float (pandas' missing value, a class absent from an
    evaluation) is written as null: JSON has no such numbers, and other readers refuse them."""
    atomic_write_text(path, json.dumps(finite_json(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


def finite_json(obj: Any) -> Any:
    """``obj`` with every float that is not finite (NaN, inf) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Build a directory in a temp sibling; rename it to ``path`` only when the block succeeds.

    An existing ``path`` is replaced; ``replace=False``: FastalError if a directory with files
    appeared at ``path`` meanwhile (another process made it), and leftover temp siblings are left
    alone (they may be another process's work). On any error (or a kill) nothing appears at
    ``path``; a leftover ``.path.*.tmp`` sibling from a kill is harmless and removed on the next
    replacing call. An OSError in the block or in the commit (a full disk) is one FastalError naming ``path``.
    """
    path = Path(path)
    check_writable(path, directory=True)
    with naming_os_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        if replace:
            for stale in path.parent.glob(f".{path.name}.*.tmp"):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        try:
            yield tmp
            if not replace:
                try:
                    os.rename(tmp, path)  # fails on a directory that holds files: no replacing it
                except OSError as e:
                    if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
                    raise FastalError(f"{path}: already exists (made by another process meanwhile)") from None
            elif path.exists():
                old = path.with_name(f".{path.name}.old.tmp")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
            fsync_path(path.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
