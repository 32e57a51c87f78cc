"""Structured logs that never contain keys.

Two formats: ``text`` (``time level logger: message``, with ``key=value`` pairs in the message)
for journald and people, ``json`` (one object per line) for log shippers. Every record passes a
filter that blanks out what looks like key material (hex runs of 16 bytes and more, base64 runs
of 30 bytes and more: shorter base64 cannot be told from a path) and any secret the
configuration holds (the MQTT and database passwords), so a careless log call elsewhere (or in
a library) cannot leak a master secret: the gateway itself only ever holds keys as bytes.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

_KEYLIKE = re.compile(r"(?<![0-9A-Za-z])(?:[0-9a-fA-F]{32,}|[A-Za-z0-9+/]{40,}={0,2})"
                      r"(?![0-9A-Za-z])")
REDACTED = "<redacted>"


class Redact(logging.Filter):
    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def clean(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return _KEYLIKE.sub(REDACTED, text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = self.clean(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.clean(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"t": round(record.created, 3),
               "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + "Z",
               "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage()}
        # key=value pairs in the message become fields too
        for key, value in re.findall(r"(\w+)=(\S+)", out["msg"]):
            out.setdefault(key, value)
        if record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, ensure_ascii=False)


def setup(level: str, fmt: str, secrets: list[str]) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(Redact(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
