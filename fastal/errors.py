"""The exception types for problems the user can fix (bad input, bad state)."""


class FastalError(Exception):
    """Bad input or run state. The CLI prints the message on one line and exits with 2.

    Raise it with a message that names the file or option and what is wrong, e.g.
    ``FastalError(f"{path}: label 14 outside 0..10")``.
    """


class RunDirLocked(FastalError):
    """Another live process (or thread) writes this run directory. Nothing was touched: retrying
    once it has ended is safe (a sweep tells this apart from a failed run)."""
