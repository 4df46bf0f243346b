"""JSON log lines carrying the request and correlation ids of the request being served.

Every line goes through one formatter that scrubs anything shaped like an NHS number, so a
log can be shipped to a log store without carrying one in clear."""
from __future__ import annotations

import contextvars
import json
import logging
import re
import time

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("familyview_request_id", default=None)
correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("familyview_correlation_id", default=None)

_NHS_LIKE = re.compile(r"(?<!\d)\d{3}[ -]?\d{3}[ -]?\d{4}(?!\d)")
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName", "color_message"}


def scrub(text: str) -> str:
    """Logs never carry an NHS number in clear (nor any 10-digit number shaped like one)."""
    return _NHS_LIKE.sub("**********", text)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, request and correlation ids, and
    whatever the caller passed in ``extra``."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": scrub(record.getMessage()),
        }
        rid, cid = request_id.get(), correlation_id.get()
        if rid:
            out["request_id"] = rid
        if cid:
            out["correlation_id"] = cid
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = scrub(value) if isinstance(value, str) else value
        if record.exc_info:
            out["exception"] = scrub(self.formatException(record.exc_info))
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = scrub(super().format(record))
        rid = request_id.get()
        return f"{line} request_id={rid}" if rid else line


def configure(level: str = "INFO", fmt: str = "json") -> None:
    """The process's logging: one handler on the root logger; uvicorn's loggers go through it,
    and uvicorn's own access log (which prints query strings) is replaced by ``familyview.access``."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    access = logging.getLogger("uvicorn.access")
    access.handlers[:] = []
    access.propagate = False
    access.disabled = True
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the demo loader's requests: one line each is noise
