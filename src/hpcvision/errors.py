"""Errors that end a command with a one-line message instead of a traceback."""


class UserError(Exception):
    """A fatal problem with the user's input (bad argument, unreadable archive): exit code 2."""

    exit_code = 2


class CountMismatch(UserError):
    """Counts that must add up do not (a source returned fewer images than asked for; listed differs
    from written + skipped): the output would not account for every listed image."""
