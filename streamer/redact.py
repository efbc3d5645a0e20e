"""Credentials out of logs: the logger the server and the client hand to websockets."""

from __future__ import annotations

import logging


class RedactingLogger(logging.LoggerAdapter):
    """A logger for websockets (server and client) that keeps credentials out of its trace.

    At DEBUG level websockets logs every request line and header; the values of the headers
    that carry credentials and the query string of every request path become ``[redacted]``.
    """

    SECRET_HEADERS = frozenset({"authorization", "cookie", "x-api-key", "x-twilio-signature"})

    def process(self, msg, kwargs):
        return msg, kwargs  # keep the caller's `extra` (websockets puts the connection there)

    def log(self, level, msg, *args, **kwargs):
        if args and self.isEnabledFor(level):
            args = self._redact(msg, args)
        super().log(level, msg, *args, **kwargs)

    def _redact(self, msg, args: tuple) -> tuple:
        if msg in ("< %s: %s", "> %s: %s") and str(args[0]).lower() in self.SECRET_HEADERS:
            return (args[0], "[redacted]")
        return tuple(
            a.split("?", 1)[0] + "?[redacted]" if isinstance(a, str) and a[:1] == "/" else a
            for a in args
        )
