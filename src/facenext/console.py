"""What the library says, on the terminal: a plain handler for the ``facenext`` loggers, as the CLI attaches it.

Library modules log through ``logging.getLogger(__name__)``; they attach no handler, so a program or notebook that
imports them decides where their lines go (``logging.getLogger("facenext.predict").setLevel(logging.WARNING)``
silences predict's report). ``log_to_console()`` gives the CLI's output: each message alone, information on
stdout, warnings and errors on stderr. Progress bars (tqdm) write to stderr themselves.
"""

from __future__ import annotations

import logging
import sys

PACKAGE_LOGGER = "facenext"


class ConsoleHandler(logging.Handler):
    """Each record's message alone, on stdout below WARNING and on stderr from WARNING up.

    The streams are looked up at each record, not kept: a redirection made after the handler was attached
    (``contextlib.redirect_stdout``, pytest's capture, a notebook cell's output) receives the lines."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()  # lines reach a pipe (torchrun, a notebook's subprocess) as they are written
        except Exception:
            self.handleError(record)


def log_to_console() -> None:
    """Attach one ConsoleHandler to the ``facenext`` logger (again: nothing changes) and let information through
    unless a level was already set on it."""
    package = logging.getLogger(PACKAGE_LOGGER)
    if not any(isinstance(handler, ConsoleHandler) for handler in package.handlers):
        package.addHandler(ConsoleHandler())
    if package.level == logging.NOTSET:
        package.setLevel(logging.INFO)
