"""Exclusive OS file locks: one writer per run directory (:func:`run_lock`), and a lock any
number of processes wait on (:func:`file_lock`, the shared reference's).

Both are ``fcntl.flock`` locks on an open file: the kernel drops them when the process dies, so a
SIGKILL never leaves a stale lock behind. ``flock`` locks belong to an open file description,
not to the process: two threads of one process (a Dask worker's) exclude each other too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from fastal.atomic import check_writable, naming_os_errors
from fastal.errors import FastalError, RunDirLocked

RUN_LOCK = "run.lock"  # inside the run directory; holds the pid of the writer that has it


def _open_lock(lock: Path) -> IO[str]:
    check_writable(lock)
    with naming_os_errors(lock):
        lock.parent.mkdir(parents=True, exist_ok=True)
        return open(lock, "a+")  # noqa: SIM115 - the caller closes it (which drops the lock)


@contextlib.contextmanager
def file_lock(path: str | Path, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on ``path + ".lock"`` (created if need be) for the block.
    ``wait=False``: FastalError if another process holds it."""
    lock = Path(f"{path}.lock")
    with _open_lock(lock) as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise FastalError(f"{lock}: held by another process (is another one running on {path}?)") from None
        yield


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Be the one writer of ``run_dir`` for the block: RunDirLocked (naming the holder's pid)
    when another process, or another thread, writes it. Once held, the temp files a killed
    writer left (``.*.tmp``, see :mod:`fastal.atomic`) are removed: nobody else can be writing them."""
    run_dir = Path(run_dir)
    lock = run_dir / RUN_LOCK
    with _open_lock(lock) as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip() or "unknown"  # empty: the holder is between its lock and its write
            raise RunDirLocked(f"{run_dir}: in use by another fastal process (pid {pid}); wait for it to "
                               f"end, or stop it, and try again") from None  # fmt: skip
        with naming_os_errors(lock):
            f.truncate(0)
            f.write(f"{os.getpid()}\n")
            f.flush()
        remove_stale_temps(run_dir)
        yield


def remove_stale_temps(run_dir: Path) -> None:
    """Delete what atomic writes of a dead writer left under ``run_dir`` (files and directories)."""
    for stale in sorted(run_dir.rglob(".*.tmp"), reverse=True):  # deepest first
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
