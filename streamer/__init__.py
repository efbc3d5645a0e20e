"""Streaming side of emotion-monitor: sources, the windowing engine, the server and the CLI.

Public API (imported lazily so ``import emotion_monitor.streamer`` stays cheap)::

    from emotion_monitor.streamer.engine import Engine
    from emotion_monitor.streamer.settings import Settings
    from emotion_monitor.streamer.events import Event
"""
