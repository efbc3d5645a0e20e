"""emotion-monitor's streaming side: the engine, sources, server, telephony, alerts and commands.

The public names load lazily, so ``import emotion_monitor.streamer`` imports nothing heavy::

    from emotion_monitor.streamer import Engine, Settings, Event, Monitor, subscribe
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the module that defines it
_PUBLIC = {
    "Engine": "emotion_monitor.streamer.engine",
    "Settings": "emotion_monitor.streamer.settings",
    "Event": "emotion_monitor.streamer.protocol",
    "Alert": "emotion_monitor.streamer.protocol",
    "Monitor": "emotion_monitor.streamer.api",
    "subscribe": "emotion_monitor.streamer.client",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
