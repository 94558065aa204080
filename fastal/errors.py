"""The exception types for problems the user can fix (bad input, bad state), and the one way an
operating-system error about a path becomes one (:func:`path_error`)."""

from __future__ import annotations

import errno
import os

NAME_MAX = 255  # bytes in one path component on the file systems fastal writes to (ext4, xfs, tmpfs, NFS)
# A file fastal writes is first a temp sibling ".<name>.<8 random>.tmp" (fastal.atomic): its name needs this
# much more room.
TEMP_ROOM = 14


class FastalError(Exception):
    """Bad input or run state. The CLI prints the message on one line and exits with 2.

    Raise it with a message that names the file or option and what is wrong, e.g.
    ``FastalError(f"{path}: label 14 outside 0..10")``.
    """


class RunDirLocked(FastalError):
    """Another live process (or thread) writes this run directory. Nothing was touched: retrying
    once it has ended is safe (a sweep tells this apart from a failed run)."""


def path_error(e: OSError, doing: str = "") -> FastalError:
    """The one line for an OSError about the path ``e.filename``: ``doing`` (e.g. "cannot write ")
    the path, and why."""
    why = e.strerror or str(e)
    if e.errno == errno.ENAMETOOLONG:
        why = f"a name in the path is longer than the file system allows ({NAME_MAX} bytes)"
    return FastalError(f"{doing}{e.filename}: {why}")


def check_path_names(path: str | os.PathLike, written: bool = False) -> None:
    """FastalError naming ``path`` when one of its components is longer than a file name may be
    (``written``: the last one leaves room for the temp sibling of an atomic write)."""
    parts = os.fspath(path).split(os.sep)
    for k, part in enumerate(parts):
        size = len(os.fsencode(part))
        last = written and k == len(parts) - 1
        limit = NAME_MAX - TEMP_ROOM if last else NAME_MAX
        if size > limit:
            short = part if len(part) <= 24 else f"{part[:12]}…{part[-8:]}"
            why = f" here ({NAME_MAX} less {TEMP_ROOM} for the temp file of an atomic write)" if last else ""
            raise FastalError(f"{path}: the name {short!r} is {size} bytes; a file name may have at most {limit}{why}")
