"""``POST /predict``: one uploaded recording in, one JSON analysis out."""

from __future__ import annotations

import asyncio

from emotion_monitor.streamer.analysis import predict_response
from emotion_monitor.streamer.audio import AudioError
from emotion_monitor.streamer.decode import decode_upload
from emotion_monitor.streamer.server.http import HttpRequest, HttpResponse, multipart_file
from emotion_monitor.streamer.service import MonitorService
from emotion_monitor.streamer.settings import Settings

#: Uploads analysed at once: inference shares the cores with the live streams.
MAX_CONCURRENT = 2


class PredictRoute:
    """The route handler: the body is an audio file (raw, or one multipart file field)."""

    def __init__(self, service: MonitorService, settings: Settings, stats: dict[str, int]):
        self.service = service
        self.settings = settings
        self.stats = stats
        self._running = 0

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        """``POST /predict``: the body is an audio file (raw, or one multipart file field)."""
        self.stats["predict_requests"] += 1
        data, filename = request.body, request.query.get("filename", "")
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            data, filename = multipart_file(request)
        # messages start with the name: a nameless body must not read ": cannot decode..."
        filename = filename or "upload"
        if not data:
            return HttpResponse.error(400, "empty_upload", "send an audio file as the body")
        if self._running >= MAX_CONCURRENT:
            return HttpResponse.error(503, "busy", "two uploads are being analysed; retry soon")
        self._running += 1
        model = self.service.engine.model

        def work() -> dict:
            return predict_response(decode_upload(data, filename), model, self.settings, filename)

        try:
            return HttpResponse.json(await asyncio.to_thread(work))
        except (AudioError, ValueError) as exc:
            return HttpResponse.error(400, "bad_audio", str(exc))
        finally:
            self._running -= 1
