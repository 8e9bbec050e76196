"""A quiet start: TensorFlow's C++ and absl start-up notices and library INFO logs stay out of the terminal.

Without `-v`, `quiet_start()` (called by the CLI before any handler runs, so before TensorFlow is imported):
- sets TF_CPP_MIN_LOG_LEVEL=1 unless the environment sets it (C++ INFO lines hidden; warnings, such as
  a dropped undecodable record, still shown);
- filters the lines `import tensorflow` writes to the process's stderr (file descriptor 2): its
  oneDNN and CPU-feature notes and absl's "before InitializeLog" banner come from C++ static
  initialisers, before TF_CPP_MIN_LOG_LEVEL is read, once per TensorFlow library; other lines pass;
- sets the `absl` Python logger to WARNING. (Not werkzeug's: TensorBoard's server resets it to inherit the
  root logger, which `hpcvision tensorboard` therefore sets.)
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator

# What TensorFlow 2.21 prints while it is imported, before any option can silence it.
NOTICE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called|^I0000 |"
    r"oneDNN custom operations are on|cpu_feature_guard|^To enable the following instructions:"
)
QUIET_LOGGERS = ("absl",)


def quiet_start(verbose: bool) -> None:
    """Hide TensorFlow's start-up notices and INFO chatter of libraries, unless `verbose`."""
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())


@contextlib.contextmanager
def filtered_stderr(pattern: re.Pattern[str] = NOTICE) -> Iterator[None]:
    """Collect what is written to file descriptor 2 (C++ included); afterwards pass on the lines not matching."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable stderr: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode(errors="replace")
            kept = [line for line in text.splitlines(keepends=True) if not pattern.search(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class _FilteredLoader(importlib.abc.Loader):
    """TensorFlow's own loader, run inside `filtered_stderr`."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__spec__.loader = module.__loader__ = self.loader  # nothing else sees this wrapper
        with filtered_stderr():
            self.loader.exec_module(module)


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` once, as the other finders would, and has it imported with its notices filtered."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _FilteredLoader(spec.loader)
        return spec
