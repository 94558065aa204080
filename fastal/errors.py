"""The one exception type for problems the user can fix (bad input, bad state)."""


class FastalError(Exception):
    """Bad input or run state. The CLI prints the message on one line and exits with 2.

    Raise it with a message that names the file or option and what is wrong, e.g.
    ``FastalError(f"{path}: label 14 outside 0..10")``.
    """
