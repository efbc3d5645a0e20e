"""What the server says about itself: the hello every subscriber gets first, ``GET /healthz``
and ``GET /metrics`` (Prometheus text, see :mod:`.metrics`)."""

from __future__ import annotations

import dataclasses
import importlib.metadata
from typing import Any

from emotion_monitor.streamer import protocol
from emotion_monitor.streamer.protocol import PROTOCOL_VERSION
from emotion_monitor.streamer.server.http import HttpResponse
from emotion_monitor.streamer.server.metrics import metrics_text

# Each function takes the running :class:`.app.Server` (not imported: app.py imports this module).


def hello(server) -> str:
    """The ``hello`` message: server version, limits, open streams, the model, the settings."""
    s = server.settings
    return protocol.Hello(
        server=version(),
        limits={
            "max_clients": s.max_clients,
            "client_queue": s.client_queue,
            "max_message_bytes": s.max_message_bytes,
            "max_message_bytes_per_route": dict(server.max_message_bytes),
            "max_streams": s.max_streams,
            "sample_rates": [protocol.MIN_SAMPLE_RATE, protocol.MAX_SAMPLE_RATE],
            "formats": list(protocol.SAMPLE_FORMATS),
            "max_channels": protocol.MAX_CHANNELS,
            "ping_interval": s.ping_interval,
        },
        streams=server.service.streams,
        model=server.service.engine.model.describe(),
        settings=_jsonable(s.to_dict()),
    ).to_json()


def healthz(server) -> HttpResponse:
    """``GET /healthz``: ok, protocol version, model, open streams, connected clients."""
    return HttpResponse.json(
        {
            "ok": True,
            "v": PROTOCOL_VERSION,
            "model": server.service.engine.model.describe(),
            "streams": server.service.streams,
            "clients": server.clients,
        }
    )


def metrics(server) -> HttpResponse:
    """``GET /metrics``: the engine's, the service's and the server's counters."""
    service = server.service
    text = metrics_text(
        service.engine.stats,
        service.stats,
        server.stats,
        server.clients,
        len(service.streams),
        server.latency,
        getattr(service.engine.model, "tier_stats", None),  # a remote inference tier's
    )
    return HttpResponse(200, text.encode(), "text/plain; version=0.0.4; charset=utf-8")


def _jsonable(value: Any) -> Any:
    """Settings hold tuples and dataclasses; JSON wants lists and dicts."""
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def version() -> str:
    """The installed package's version ("0+unknown" when running from a bare checkout)."""
    try:
        return importlib.metadata.version("emotion-monitor")
    except Exception:  # not installed (running from a checkout)
        return "0+unknown"
