"""One log schema for `maitred router`, `maitred operator` and `maitred sim` (`--log-format json|text`).

Every line has a timestamp (UTC, ISO 8601 with ms), a level, the logger's name and the message;
lines that describe a request (the router's `maitred.access`) add its fields, passed as
``logger.info(msg, *args, extra={"fields": {...}})``. Fields given to :func:`configure` (the router
worker's index) go on every line.

- ``json``: one JSON object a line, ``{"timestamp", "level", "logger", "message", **fields}``, plus
  ``"exception"`` (the traceback) when there is one: for log collectors (Loki, Elasticsearch, Cloud Logging).
- ``text``: ``2025-01-31T12:00:00.123Z INFO maitred.access: POST /v1/chat/completions 200 requestId=ab12 ...``,
  the fields as key=value (a value with spaces or quotes JSON-quoted): for people.

uvicorn's and kopf's own loggers go through the same handler (uvicorn is run with ``log_config=None``).
"""

from __future__ import annotations

import json
import logging
import sys
import time

import orjson

FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")


def option_choice(value: str, allowed: tuple[str, ...], option: str) -> str:
    """`value` lower-cased if it is one of `allowed`; else typer.BadParameter naming `option` (exit 2)."""
    import typer

    if value.lower() not in allowed:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(allowed)}", param_hint=option)
    return value.lower()


def _timestamp(record: logging.LogRecord) -> str:
    seconds = int(record.created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: timestamp, level, logger, message, then the record's and the static fields."""

    def __init__(self, static: dict | None = None) -> None:
        super().__init__()
        self.static = static or {}

    def format(self, record: logging.LogRecord) -> str:
        line = {"timestamp": _timestamp(record), "level": record.levelname.lower(), "logger": record.name,
                "message": record.getMessage(), **self.static}
        fields = getattr(record, "fields", None)
        if fields:
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        try:
            return orjson.dumps(line, default=str).decode()
        except TypeError:  # orjson.JSONEncodeError: a lone surrogate in some str; json escapes it
            return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """``timestamp LEVEL logger: message key=value ...`` (then the traceback, if any)."""

    def __init__(self, static: dict | None = None) -> None:
        super().__init__()
        self.prefix = "".join(f" [{k} {v}]" for k, v in (static or {}).items())

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname} {record.name}{self.prefix}: {record.getMessage()}"
        fields = getattr(record, "fields", None)
        if fields:
            line += "".join(f" {k}={_text_value(v)}" for k, v in fields.items() if v is not None)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if not text or any(c in text for c in ' "=\n'):
        return json.dumps(text)
    return text


def formatter(log_format: str, static: dict | None = None) -> logging.Formatter:
    """The formatter of `log_format` ("json" or "text")."""
    if log_format not in FORMATS:
        raise ValueError(f"log format {log_format!r} is not one of {', '.join(FORMATS)}")
    return JsonFormatter(static) if log_format == "json" else TextFormatter(static)


def configure(level: str, log_format: str = "text", static: dict | None = None) -> None:
    """Send every logger's lines at `level` and above to stderr, in `log_format`, replacing the root's handlers."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format, static))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(5 if level.lower() == "trace" else level.upper())  # uvicorn's TRACE is 5
