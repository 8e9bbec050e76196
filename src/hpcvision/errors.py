"""Errors that end a command with a one-line message instead of a traceback."""

from __future__ import annotations

import errno
import os
import re


class UserError(Exception):
    """A fatal problem with the user's input (bad argument, unreadable archive): exit code 2."""

    exit_code = 2


class CountMismatch(UserError):
    """Counts that must add up do not (a source returned fewer images than asked for; listed differs
    from written + skipped): the output would not account for every listed image."""


# A full, read-only or over-quota disk, or a folder the user may not write: the user's to fix, not
# ours to explain with a traceback. TensorFlow reports the same conditions as an OpError whose
# message carries the C library's text, so both are recognised.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM})
STORAGE_MESSAGES = tuple(os.strerror(code) for code in sorted(STORAGE_ERRNOS))


def storage_problem(exc: BaseException) -> str | None:
    """One line for a storage failure (disk full, read-only, no permission), else None."""
    if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
        where = exc.filename if exc.filename is not None else "output"
        return f"{where}: {exc.strerror or os.strerror(exc.errno)}"
    if type(exc).__module__.startswith("tensorflow"):
        lines = [line for line in _op_error_lines(exc) if any(text in line for text in STORAGE_MESSAGES)]
        return lines[0] if lines else None
    return None


def op_error_line(exc: BaseException) -> str:
    """The informative line of a TensorFlow op error, without "Graph execution error:", node names, stacks."""
    lines = _op_error_lines(exc)
    return (lines[-1] if lines else type(exc).__name__)[:200]


def _op_error_lines(exc: BaseException) -> list[str]:
    text = re.sub(r"\{\{[^}]*\}\}|\[\[.*?\]\]|\[Op:[^\]]*\]", "", str(getattr(exc, "message", exc)))
    skip = ("Graph execution error", "Detected at node", "File ", "Traceback")
    lines = [line.strip() for line in text.splitlines()]
    return [line for line in lines if re.search("[A-Za-z]", line) and not line.startswith(skip)]
