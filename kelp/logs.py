"""Structured, quiet-by-default logging shared by every kelp process.

Lines are logfmt (``ts=... level=info proc=broker msg="..." key=value``) so people can read them
and tools can parse them. Nothing per-request is logged at INFO: hot paths log at DEBUG only, and
callers guard expensive formatting with ``log.isEnabledFor``.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}


def _quote(value: Any) -> str:
    text = str(value)
    if text and all(c.isalnum() or c in "._-:/@" for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class LogfmtFormatter(logging.Formatter):
    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [
            f"ts={ts}.{int(record.msecs):03d}Z",
            f"level={record.levelname.lower()}",
            f"proc={self.process}",
            f"logger={record.name}",
            f"msg={_quote(record.getMessage())}",
        ]
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                parts.append(f"{key}={_quote(value)}")
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


def setup(process: str, level: str = "info") -> None:
    """Configure the root logger for one process (``level``: debug, info, warning, error)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter(process))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party libraries chatter at INFO about every connection.
    for noisy in ("grpclib", "hpack", "asyncio", "trio_asyncio", "h2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("grpclib.server").addFilter(_peer_reset_is_not_an_error)


def _peer_reset_is_not_an_error(record: logging.LogRecord) -> bool:
    """grpclib logs a caller that reset its stream while the reply was being sent as "Failed
    to handle cancellation" with a traceback: that is the caller going away (its Kafka client
    disconnected), not a fault. Keep it out of the log; everything else passes."""
    if record.getMessage() == "Failed to handle cancellation" and record.exc_info:
        error = record.exc_info[1]
        return type(error).__name__ != "StreamTerminatedError"
    return True


class RateLimited:
    """A token bucket for log lines: bursts of ``burst``, then one per ``interval_s``; the next
    line that gets through counts the ones held back.

    For events a hostile peer can cause at will (malformed requests, bad records): every one is
    counted, none is lost silently, and none can flood the log.
    """

    def __init__(self, logger: logging.Logger, interval_s: float = 1.0, burst: int = 10) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.burst = burst
        self._tokens = float(burst)
        self._last = time.monotonic()
        self.suppressed = 0

    def log(self, level: int, msg: str, *, exc_info: bool | BaseException = False,
            **extra: Any) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._last) / self.interval_s)
        self._last = now
        if self._tokens < 1:
            self.suppressed += 1
            return
        self._tokens -= 1
        if self.suppressed:
            extra["suppressed"] = self.suppressed
            self.suppressed = 0
        self.logger.log(level, msg, exc_info=exc_info, extra=extra)

    def warning(self, msg: str, **extra: Any) -> None:
        self.log(logging.WARNING, msg, **extra)
