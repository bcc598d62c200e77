"""Log set-up for the CLI: plain text, or one JSON object per line with the message context."""

from __future__ import annotations

import logging
import sys
import time

import msgspec

from ._context import ContextFilter

# Context romeways attaches to records about a message (``extra=``), copied into JSON lines.
CONTEXT_FIELDS = (
    "connector",
    "queue",
    "handler",
    "attempt",
    "position",
    "key",
    "topic",
    "partition",
    "offset",
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, context fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        for field in CONTEXT_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return msgspec.json.encode(line).decode()


def configure(level: str, fmt: str) -> None:
    """Send the ``romeways`` logger (and the root logger) to stderr at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
        )
    handler.addFilter(ContextFilter())  # message context on records of any logger, too
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
