"""The in-process API for programs: :class:`Monitor`.

For programs (a chatbot, a notebook, a test)::

    async with Monitor(model="default") as m:
        events = await m.analyze("turn-1", samples)          # 16 kHz mono float32 (or PCM)
        async for item in m.events(streams=["call-7"]):      # live: Event or Alert
            ...

Each stream is a :class:`~emotion_monitor.streamer.telephony.call.CallStream` on an in-process
service, so programs get exactly the events the server would push.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
from emotion_monitor.models import load_model
from emotion_monitor.streamer.alerts import AlertMonitor
from emotion_monitor.streamer.audio import (
    SAMPLE_RATE,
    AudioError,
    silence_nonfinite,
    to_mono,
)
from emotion_monitor.streamer.engine import Engine
from emotion_monitor.streamer.protocol import MAX_CHANNELS, Alert, Event
from emotion_monitor.streamer.service import MonitorService
from emotion_monitor.streamer.settings import Settings
from emotion_monitor.streamer.telephony.call import CallStream

if TYPE_CHECKING:
    from emotion_monitor.models.base import EmotionModel

log = logging.getLogger(__name__)


class Monitor:
    """Run the engine inside this process and get events back as Python objects.

    Args:
        model: an :class:`EmotionModel`, a ``--model`` spec string, or ``None`` for the default.
        settings: engine settings (``settings.alerts`` turns on alert evaluation).
        vad: passed to the engine (``None`` builds silero-vad when ``settings.vad``).
        queue_size: per-subscriber bound; a subscriber that falls behind loses its oldest items.

    Use as ``async with Monitor(...) as m``; the model is loaded off the event loop.
    """

    #: How many ended stream ids are remembered, so that :meth:`events` can tell a stream that
    #: is over from one still to come (bounded: a bot may open a stream per turn for months).
    ENDED_MEMORY = 10_000

    def __init__(
        self,
        model: EmotionModel | str | None = None,
        settings: Settings | None = None,
        vad: Any = None,
        queue_size: int = 4096,
    ):
        self._model_spec = model
        self.settings = settings or Settings()
        self._vad = vad
        self._queue_size = queue_size
        self.service: MonitorService | None = None
        self._subscribers: list[tuple[asyncio.Queue, set[str] | None]] = []
        self._ended: dict[str, None] = {}  # delivered stream_ended, oldest first (ordered set)
        # Streams opened here whose stream_ended has not been delivered yet: an id used again
        # is not over while its new life runs, even if its first stream_ended is remembered.
        self._unfinished: Counter[str] = Counter()
        self._alerts = None

    async def __aenter__(self) -> Monitor:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def start(self) -> None:
        """Load the model and start the inference worker."""
        model = self._model_spec
        if model is None or isinstance(model, str):
            model = await asyncio.to_thread(load_model, model, self.settings.device)
        engine = await asyncio.to_thread(Engine, model, self.settings, self._vad)
        loop = asyncio.get_running_loop()
        self.service = MonitorService(engine)
        self.service.add_listener(self._deliver, loop)
        if self.settings.alerts:
            self._alerts = AlertMonitor(self.settings.alerts, webhook_url=self.settings.webhook_url)
            self._alerts.attach(self.service)
        self.service.start()

    async def stop(self) -> None:
        """Flush every open stream, stop the worker and any webhook sender."""
        if self.service is not None:
            await asyncio.to_thread(self.service.stop)
            await asyncio.sleep(0)  # let the last call_soon_threadsafe deliveries run
        if self._alerts is not None:
            await asyncio.to_thread(self._alerts.close)

    # -- feeding -------------------------------------------------------------------------

    def open(self, stream: str, **meta: Any) -> None:
        """Open a stream (raises ``StreamLimitError`` beyond ``settings.max_streams``)."""
        self._require().open_stream(stream, **meta)
        self._unfinished[stream] += 1

    def push(self, stream: str, samples: np.ndarray, track: str = "main") -> None:
        """Queue 16 kHz mono float32 samples of an open stream."""
        self._require().push(stream, samples, track)

    def end(self, stream: str) -> None:
        """End a stream: its tail is analysed, then ``stream_ended`` closes its iterators."""
        self._require().end_stream(stream)

    async def analyze(
        self, stream: str, samples: np.ndarray | dict[str, np.ndarray], rate: int = SAMPLE_RATE
    ) -> list[Event]:
        """Analyse a whole utterance (or ``{track: samples}``) and return its events.

        Each track is 1-D, or 2-D ``(n_samples, n_channels)`` as soundfile reads it (at most
        ``MAX_CHANNELS`` channels, fewer than the samples), mixed down by averaging the channels.
        Floats are taken as samples in [-1, 1]; integer PCM is scaled by its dtype's range
        (int16 by 1/32768, unsigned around its midpoint). The audio is resampled to 16 kHz when
        ``rate`` differs. Anything else (channels first, 3-D, empty, not numbers, a rate that is
        not a positive integer) raises :class:`AudioError` (a ``ValueError``) before any stream
        is opened. Returns once the stream has ended, so every window, including the tail, is
        in the list.
        """
        tracks = samples if isinstance(samples, dict) else {"main": samples}
        if not tracks:
            raise AudioError("no tracks to analyse")
        audio = {track: _mono_float(a, f"track {track!r}") for track, a in tracks.items()}
        if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
            raise AudioError(f"the sample rate must be a positive integer, got {rate!r}")
        entry = self._subscribe([stream])
        try:
            call = CallStream(self._require(), stream, source="api")
        except Exception:
            self._subscribers.remove(entry)
            raise
        self._unfinished[stream] += 1
        got: list[dict] = []
        try:
            await self._feed_paced(call, audio, int(rate), entry[0], got)
        finally:
            call.close()
        return [Event.from_dict(m) for m in got if m.get("type") == "event"] + [
            item async for item in self._iterate(entry, alerts=False)
        ]

    async def _feed_paced(
        self, call: CallStream, audio: dict[str, np.ndarray], rate: int, queue, got: list
    ) -> None:
        """Push ``audio`` block by block, each once the events of the one before are in.

        Each track may have at most ``max_pending_windows`` windows of audio waiting (the
        service drops what comes beyond that), so an utterance pushed at once would lose most
        of its windows.
        Messages taken from ``queue`` meanwhile are appended to ``got``.
        """
        settings = self._require().engine.settings
        hop = round(settings.hop * SAMPLE_RATE)
        # a block completes at most windows + 1 windows per track: half the queue at most
        windows = max(1, settings.max_pending_windows // (2 * len(audio)))
        step = max(1, windows * hop * rate // SAMPLE_RATE)
        stats = self._require().engine.stats
        events = 0
        for start in range(0, max(len(a) for a in audio.values()), step):
            dropped = stats["windows_dropped"]
            for track, a in audio.items():
                call.push(track, a[start : start + step], rate)
            # every window that ends in what was handed over has to come back as an event
            while events < call.windows_pushed() and not call.closed:
                try:
                    got.append(await asyncio.wait_for(queue.get(), 0.5))
                    events += got[-1].get("type") == "event"
                except TimeoutError:
                    if stats["windows_dropped"] != dropped:  # lost under load: stop waiting
                        break

    # -- listening -----------------------------------------------------------------------

    def events(
        self, streams: Iterable[str] | None = None, alerts: bool = True
    ) -> AsyncIterator[Event | Alert]:
        """Async iterator of :class:`Event` (and :class:`Alert` when ``alerts``).

        With ``streams``, it only yields those streams and ends when all of them have ended.
        It starts receiving as soon as it is created, so nothing is missed between creating
        it and the first ``async for``: create it before feeding a stream to get all its events.

        There is no replay. A listed stream that is already over when the iterator is created
        (its ``stream_ended`` delivered; the last ``ENDED_MEMORY`` ended ids are remembered)
        counts as ended at once; one that was ended but whose last events are still being
        analysed yields those events. So an iterator over streams that are all over ends
        without yielding anything, rather than waiting forever.
        """
        if streams is not None:
            streams = [s for s in streams if not self._is_over(s)]
        return self._iterate(self._subscribe(streams), alerts)

    def _is_over(self, stream: str) -> bool:
        return stream in self._ended and not self._unfinished[stream]

    def _subscribe(self, streams: Iterable[str] | None) -> tuple[asyncio.Queue, set[str] | None]:
        entry = (asyncio.Queue(self._queue_size), set(streams) if streams is not None else None)
        self._subscribers.append(entry)
        return entry

    async def _iterate(self, entry, alerts: bool) -> AsyncIterator[Event | Alert]:
        queue, wanted = entry
        remaining = set(wanted) if wanted is not None else None
        try:
            while remaining is None or remaining:
                msg = await queue.get()
                kind = msg.get("type")
                if kind == "event":
                    yield Event.from_dict(msg)
                elif kind == "alert" and alerts:
                    yield Alert.from_dict(msg)
                elif kind == "stream_ended" and remaining is not None:
                    remaining.discard(msg.get("stream"))
                    if not remaining:
                        return
        finally:
            if entry in self._subscribers:
                self._subscribers.remove(entry)

    def _deliver(self, messages: list[dict]) -> None:
        for msg in messages:
            if msg.get("type") == "stream_ended":
                self._note_ended(msg["stream"])
        for queue, wanted in list(self._subscribers):
            for msg in messages:
                if wanted is not None and msg.get("stream") not in wanted:
                    continue
                if queue.full():  # overflow policy: the slow reader loses its oldest item
                    queue.get_nowait()
                queue.put_nowait(msg)

    def _note_ended(self, stream: str) -> None:
        self._unfinished[stream] -= 1
        if self._unfinished[stream] <= 0:
            del self._unfinished[stream]
        self._ended.pop(stream, None)  # re-insert: the most recent end goes last
        self._ended[stream] = None
        if len(self._ended) > self.ENDED_MEMORY:
            del self._ended[next(iter(self._ended))]

    def _require(self) -> MonitorService:
        if self.service is None:
            raise RuntimeError("Monitor is not started; use 'async with Monitor(...) as m'")
        return self.service


def _mono_float(audio: Any, name: str) -> np.ndarray:
    """``audio`` (see :meth:`Monitor.analyze`) as 1-D float32, or an AudioError naming ``name``."""
    a = np.asarray(audio)
    integer = np.issubdtype(a.dtype, np.integer)
    if not (integer or np.issubdtype(a.dtype, np.floating)):  # bool, complex, str, object
        raise AudioError(f"{name}: samples must be float or integer PCM, got dtype {a.dtype}")
    if a.ndim == 2 and not 1 <= a.shape[1] <= min(MAX_CHANNELS, a.shape[0] - 1):
        # (2, N) is most likely channels first: refused rather than read as N channels
        raise AudioError(
            f"{name}: 2-D audio must be (n_samples, n_channels) with 1..{MAX_CHANNELS} "
            f"channels, got shape {a.shape}; for channels first, pass audio.T"
        )
    if a.ndim not in (1, 2):
        raise AudioError(f"{name}: audio must be 1-D or 2-D, got {a.ndim}-D shape {a.shape}")
    if not a.size:
        raise AudioError(f"{name}: no samples")
    if integer:  # full scale of the dtype -> [-1, 1): int16 / 32768, uint8 (x - 128) / 128
        info = np.iinfo(a.dtype)
        half = (int(info.max) - int(info.min) + 1) / 2
        a = (a.astype(np.float64) - (int(info.min) + half)) / half
    # as /ingest does, before resampling
    return silence_nonfinite(to_mono(a))[0]
