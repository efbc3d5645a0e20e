"""The websocket + HTTP server (:class:`~.app.Server`) and its rooms: http, fanout, ingest,
metrics, predict."""

from emotion_monitor.streamer.server.app import ListenError, Server
from emotion_monitor.streamer.server.http import HttpRequest, HttpResponse

__all__ = ["HttpRequest", "HttpResponse", "ListenError", "Server"]
