"""Errors that end a command with a one-line message instead of a traceback."""


class UserError(Exception):
    """A fatal problem with the user's input (bad argument, unreadable archive): exit code 2."""

    exit_code = 2
