"""What the browser tests share: the Debian chromium driven by playwright, a live server on its
own event-loop thread, real speech played into it in real time, and the screenshot folder.

Screenshots land in artifacts/ (gitignored) for people to look at.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import load_clip, ravdess_clip
from emotion_monitor.streamer.engine import Engine
from emotion_monitor.streamer.server.app import Server
from emotion_monitor.streamer.service import MonitorService
from emotion_monitor.streamer.settings import Settings

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
TIMEOUT_MS = 60_000

#: ``pytestmark`` of every browser test module
BROWSER_MARKS = [
    pytest.mark.slow,  # a real Chromium
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium"),
]


class ServerThread:
    """Service + server on their own event loop thread, so the sync playwright API can drive
    the browser from the test thread."""

    def __init__(self, model, **overrides):
        self.settings = Settings(port=0, **overrides)
        self.model = model
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(60) or self._error:
            raise RuntimeError(f"server did not start: {self._error}")
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by __enter__
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        await self.serve()

    async def serve(self) -> None:
        """Start the server, set ``self.url`` and ``_ready``, serve until ``_stop``, stop it.
        Subclasses serve other things (behind a token, a replayed shift) by overriding this."""
        self.service = MonitorService(Engine(self.model, self.settings)).start()
        self.server = self.make_server(self.service)
        await self.server.start()
        self.url = self.server.url
        self._ready.set()
        await self._stop.wait()
        await self.server.stop()
        await asyncio.to_thread(self.service.stop)

    def make_server(self, service: MonitorService) -> Server:
        return Server(service, self.settings)

    def call(self, fn, *args):
        """Run ``fn(*args)`` (sync or coroutine function) on the server's loop; its result."""

        async def run():
            result = fn(*args)
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(60)


def replay(
    service: MonitorService,
    stream: str,
    audio: np.ndarray,
    halt: threading.Event,
    chunk: int = 1600,
) -> None:
    """A file source in real time: 100 ms chunks, looping, until ``halt``."""
    service.open_stream(stream, source="file")
    i = 0
    while not halt.is_set():
        service.push(stream, audio[i : i + chunk])
        i = (i + chunk) % len(audio)
        halt.wait(chunk / 16_000)  # pacing of the source, not a readiness wait
    service.end_stream(stream)


def speech(*emotions: str) -> np.ndarray:
    """Real utterances with short pauses between them."""
    parts = []
    for emotion in emotions:
        parts += [load_clip(ravdess_clip(emotion)), np.zeros(8000, np.float32)]
    return np.concatenate(parts)


_FAKE_MIC: list[Path] = []


def fake_mic_wav() -> Path:
    """Real speech as a 48 kHz WAV for chromium's fake capture device."""
    if not _FAKE_MIC:
        import soundfile as sf
        from emotion_monitor.streamer.audio import resample

        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / "fake-mic.wav"
        sf.write(path, resample(speech("happy", "angry"), 16_000, 48_000), 48_000, subtype="PCM_16")
        _FAKE_MIC.append(path)
    return _FAKE_MIC[0]
