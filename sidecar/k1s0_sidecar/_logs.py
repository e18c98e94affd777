"""Where the sidecar's log records go and how they look (``app.log_format``).

``json`` (the default, and the chart's): one JSON object per line on stdout, with ``time`` (RFC 3339,
UTC), ``level``, ``logger``, ``message`` and each record's own fields at the top level, which is
what cluster log pipelines (Fluent Bit, Vector, Loki, Elasticsearch) ingest without a parser.
``text`` (``make run``): one readable line per record, and the access log on: a line per request,
so someone trying the API sees each call. In ``json`` the access log is off (a line per read would
swamp the pipeline, and every write already has its audit record); ``EVENTSTORE_LOG_LEVEL=DEBUG``
does not change that, ``app.log_format: text`` does.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

from pythonjsonlogger.json import JsonFormatter

from ._audit import access_log

LogFormat = Literal["json", "text"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(log_format: LogFormat, level: str = "INFO") -> None:
    """Send every record to stdout in ``log_format``; replaces any handler already installed."""
    handler = logging.StreamHandler(sys.stdout)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",
            json_ensure_ascii=False,
        ))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    access_log.setLevel(logging.INFO if log_format == "text" else logging.WARNING)
