"""The call-center floor: the supervisor wall, the agent view of one call and the history of a
recorded call.

::

    GET /floor                the wall: one row per live call (floor.html)
    GET /call/<stream id>     one call: live, or its history once it has ended (call.html)
    GET /history?stream=ID    JSON: the recorded call's timeline and summary (serve --record)

The pages are static files of the dashboard package; they read ``/ws`` like the dashboard.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from emotion_monitor.streamer import recorder
from emotion_monitor.streamer.protocol import STREAM_ID
from emotion_monitor.streamer.server.http import HttpRequest, HttpResponse

CALL_PREFIX = "/call/"


def page_file(path: str) -> str | None:
    """The static file that answers ``GET path`` for the floor's pages, or None."""
    if path == "/floor":
        return "/static/floor.html"
    if path.startswith(CALL_PREFIX) and STREAM_ID.match(path[len(CALL_PREFIX) :]):
        return "/static/call.html"
    return None


def call_history(path: str | Path, stream: str) -> dict | None:
    """The latest recorded call with id ``stream``: ``report``'s summary of it (per track the
    speech time, time per quadrant, means and peaks; its alerts) plus ``timeline``, per track
    the smoothed ``t``/``valence``/``arousal`` of its speech. None when it is not recorded."""
    calls = recorder.summarize(path, stream)
    if not calls:
        return None
    _, tracks, _ = recorder.call_timelines(path, stream, max_calls=len(calls))[-1]
    timeline = {k: {"t": t, "valence": v, "arousal": a} for k, (t, v, a) in tracks.items()}
    return {**calls[-1], "timeline": timeline}


class HistoryRoute:
    """``GET /history?stream=ID``: :func:`call_history` of the recording at ``path`` as JSON;
    400 for a malformed id, 404 for a call that is not recorded."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        stream = request.query.get("stream", "")
        if not STREAM_ID.match(stream):
            return HttpResponse.error(
                400, "bad_field", "history: 'stream' must be 1-64 characters of A-Z a-z 0-9 _ . : -"
            )
        try:
            # sqlite reads off the event loop: a long call has tens of thousands of rows
            history = await asyncio.to_thread(call_history, self.path, stream)
        except (FileNotFoundError, sqlite3.Error) as exc:
            return HttpResponse.error(503, "no_recording", f"the recording is unreadable: {exc}")
        if history is None:
            return HttpResponse.error(404, "no_such_call", f"no recorded call {stream!r}")
        return HttpResponse.json(history)
