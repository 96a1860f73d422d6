"""Logging for the command line: one logger tree, ``xray_hybrid``, a level,
an optional log file, and progress bars only on a terminal."""

from __future__ import annotations

import logging
import sys

__all__ = ["LOGGER", "get_logger", "configure", "ensure_handler", "progress_enabled"]

LOGGER = "xray_hybrid"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record, so that
    a redirected or captured stderr receives the messages."""

    def __init__(self):
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def get_logger(name):
    """The logger ``xray_hybrid.<name>``."""
    return logging.getLogger(f"{LOGGER}.{name}")


def configure(level="INFO", log_file=None):
    """Send the ``xray_hybrid`` messages at ``level`` and above to stderr (the
    bare message) and, with ``log_file``, to that file too (with time, level
    and module). Replaces the handlers an earlier call installed."""
    root = logging.getLogger(LOGGER)
    for handler in [h for h in root.handlers if getattr(h, "_xray_hybrid", False)]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level.upper() if isinstance(level, str) else level)
    console = _CurrentStderr()
    console.setFormatter(logging.Formatter("%(message)s"))
    handlers = [console]
    if log_file:
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter(_FORMAT))
        handlers.append(file_handler)
    for handler in handlers:
        handler._xray_hybrid = True
        root.addHandler(handler)
    root.propagate = False
    return root


def ensure_handler():
    """`configure` at INFO unless the caller (the console command, or an
    application) has configured logging already: ``python -m pipelines.run``
    keeps printing its progress messages."""
    root = logging.getLogger(LOGGER)
    if not root.handlers and not logging.getLogger().handlers:
        configure("INFO")


def progress_enabled(quiet=False, stream=None):
    """Progress bars only when asked for and writing to a terminal: a
    redirected log gets no carriage-return noise."""
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    return not quiet and bool(isatty and isatty())
