"""The microphone: a PortAudio input stream (sounddevice) whose callback only copies into a
ring buffer; a vanished device is reopened with backoff and reported as a ``SourceError``."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import numpy as np
from emotion_monitor.streamer.audio import (
    SAMPLE_RATE,
    AudioError,
    StreamResampler,
)
from emotion_monitor.streamer.protocol import SourceError
from emotion_monitor.streamer.ringbuffer import RingBuffer
from emotion_monitor.streamer.sources.base import Item, Source

log = logging.getLogger(__name__)


class MicrophoneSource(Source):
    """A sounddevice input stream; its callback only copies frames into a :class:`RingBuffer`.

    Down-mixing and resampling from the device rate to 16 kHz happen on the reading thread. When
    the stream fails or stops delivering audio (device unplugged, sound server gone) the source
    yields a :class:`SourceError` and reopens the device with exponential backoff, forever, until
    :meth:`stop`.

    Args:
        device: index, name or unique substring of the name of an input device; ``None`` is the
            default input.
        name: stream id.
        block_seconds: callback block length.
        buffer_seconds: ring buffer capacity; beyond it the oldest audio is dropped and counted.
        stall_timeout: seconds without audio after which a running stream counts as failed.
        start_timeout: seconds a freshly opened stream may take to deliver its first block.
        backoff: (first, largest) delay between reopen attempts, seconds.

    ``stats``: ``input_overflows`` (PortAudio reported lost input), ``frames_dropped`` (ring
    buffer overflow, device frames), ``reopens``, ``device_rate``, ``nonfinite_samples``.

    Stream time continues across a reopen without the gap: events keep counting audio samples.
    Reopening re-initialises PortAudio to rescan devices, so other sounddevice streams of the
    same process would be interrupted; use one microphone source per process.
    """

    def __init__(
        self,
        device: int | str | None = None,
        name: str = "mic",
        block_seconds: float = 0.02,
        buffer_seconds: float = 5.0,
        stall_timeout: float = 3.0,
        start_timeout: float = 10.0,
        backoff: tuple[float, float] = (0.5, 8.0),
    ):
        super().__init__()
        if isinstance(device, str) and device.strip().lstrip("-").isdigit():
            device = int(device)
        self.device = device
        self.name = name
        self.block_seconds = block_seconds
        self.buffer_seconds = buffer_seconds
        self.stall_timeout = stall_timeout
        self.start_timeout = start_timeout
        self.backoff = backoff
        self.stats = {"input_overflows": 0, "frames_dropped": 0, "reopens": 0, "device_rate": 0}
        self.stats["nonfinite_samples"] = 0
        self.close_timeout = 3.0  # closing the PortAudio stream must finish before exit
        self._stream = None
        self._ring: RingBuffer | None = None
        self._failure: str | None = None  # set by PortAudio's thread when the stream dies
        self._closing = False

    # The two PortAudio-thread functions: no allocation beyond the copy, no waiting, no logging.
    def _callback(self, indata, frames, time_info, status) -> None:
        if status.input_overflow:
            self.stats["input_overflows"] += 1
        self._ring.write(indata)

    def _finished(self) -> None:
        if not self._closing:
            self._failure = "the input stream stopped"

    def check(self) -> None:
        """Fail fast: raise AudioError unless PortAudio works and the device names one input."""
        try:
            import sounddevice as sd  # lazy: PortAudio loads only when a microphone is used
        except OSError as exc:  # the PortAudio library itself is missing
            raise AudioError(f"no audio input: {exc} (Debian: apt install libportaudio2)") from exc
        try:
            sd.query_devices(self.device, kind="input")
        except (ValueError, sd.PortAudioError) as exc:
            hint = "; see `emotion-monitor devices`"
            if self.device is None:
                raise AudioError(f"no default input device ({exc}){hint}") from exc
            raise AudioError(f"{self.describe_device()}: {exc}{hint}") from exc

    def describe_device(self) -> str:
        return (
            "the default input device" if self.device is None else f"input device {self.device!r}"
        )

    def _open(self) -> None:
        import sounddevice as sd  # lazy: PortAudio loads only when a microphone is used

        info = sd.query_devices(self.device, kind="input")  # ValueError if absent or ambiguous
        rate = int(info["default_samplerate"])
        block = max(1, int(rate * self.block_seconds))
        last_error: Exception | None = None
        # Mono is cheapest, but some hardware only opens with its native channel count.
        for channels in dict.fromkeys((1, min(2, int(info["max_input_channels"])))):
            self._ring = RingBuffer(int(rate * self.buffer_seconds), channels)
            self._failure, self._closing = None, False
            try:
                stream = sd.InputStream(
                    device=info["index"],
                    channels=channels,
                    samplerate=rate,
                    blocksize=block,
                    dtype="float32",
                    callback=self._callback,
                    finished_callback=self._finished,
                )
                stream.start()
            except sd.PortAudioError as exc:
                last_error = exc
                continue
            self._stream, self._channels = stream, channels
            self._resampler = StreamResampler(rate, SAMPLE_RATE)
            self.stats["device_rate"] = rate
            self.device_name = info["name"]
            return
        raise last_error or RuntimeError("could not open the input stream")

    def _close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            self._closing = True
            try:
                stream.abort()
                stream.close()
            except Exception:  # the device may already be gone; closing is best effort
                pass
        if self._ring is not None:
            self.stats["frames_dropped"] += self._ring.dropped
            self._ring = None

    @staticmethod
    def _rescan() -> None:
        # PortAudio lists devices once, at initialisation: re-initialise it so that a device
        # that came back (or a restarted sound server) can be found again. sounddevice has no
        # public call for this, only the private _terminate/_initialize pair.
        import sounddevice as sd  # lazy: PortAudio loads only when a microphone is used

        sd._terminate()
        sd._initialize()

    def _drain(self) -> Iterator[np.ndarray]:
        """Yield 16 kHz chunks until the stream fails or the source is stopped."""
        opened = last_data = time.monotonic()
        got_any = False
        while not self.stopped:
            if self._ring.wait(0.05):
                frames = self._ring.read()
                if len(frames):
                    got_any, last_data = True, time.monotonic()
                    yield self._resampler.process(self._mono(frames))
                continue
            if self._failure:
                return
            if self._stream is not None and not self._stream.active:
                self._failure = "the input stream is no longer active"
                return
            now = time.monotonic()
            if got_any and now - last_data > self.stall_timeout:
                self._failure = f"no audio for {self.stall_timeout:g} s"
                return
            if not got_any and now - opened > self.start_timeout:
                self._failure = f"no audio within {self.start_timeout:g} s of opening"
                return

    def __iter__(self) -> Iterator[Item]:
        delay = self.backoff[0]
        first = True
        while not self.stopped:
            try:
                if not first:
                    self._rescan()
                    self.stats["reopens"] += 1
                self._open()
            except Exception as exc:
                if first and isinstance(exc, ValueError):
                    raise AudioError(f"{self.describe_device()}: {exc}") from exc
                yield SourceError(self.name, f"cannot open {self.describe_device()}: {exc}", delay)
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff[1])
                first = False
                continue
            first = False
            try:
                for chunk in self._drain():
                    delay = self.backoff[0]  # audio flows again: the next failure retries soon
                    yield chunk
            finally:
                self._close()
            if self.stopped:
                return
            yield SourceError(
                self.name, f"{self.describe_device()} failed: {self._failure}; reopening", delay
            )
            self._stop.wait(delay)
            delay = min(delay * 2, self.backoff[1])


def list_input_devices() -> list[dict]:
    """Input devices as dicts: index, name, channels, default_rate, default (bool), hostapi.

    Raises OSError when the PortAudio library itself is missing.
    """
    import sounddevice as sd  # lazy: PortAudio loads only when a microphone is used

    try:
        default_in = sd.default.device[0]
    except Exception:
        default_in = -1
    if default_in is None or default_in < 0:
        try:
            default_in = sd.query_devices(kind="input")["index"]
        except Exception:
            default_in = -1
    hostapis = sd.query_hostapis()
    return [
        {
            "index": d["index"],
            "name": d["name"],
            "channels": d["max_input_channels"],
            "default_rate": d["default_samplerate"],
            "default": d["index"] == default_in,
            "hostapi": hostapis[d["hostapi"]]["name"],
        }
        for d in sd.query_devices()
        if d["max_input_channels"] > 0
    ]


# -- demo --------------------------------------------------------------------------------------

#: (text, espeak-ng speed words/min, pitch 0-99, amplitude 0-200): a calm caller turning angry and
#: an agent answering calmly. Prosody, not words, is what should move arousal. The agitated lines
#: are louder, but at 110: from about 140 espeak-ng's output clips (peaks at full scale), and the
#: demo would raise the CLIPPED flag it is meant to show only for bad input.


def has_input_device() -> bool:
    """Whether PortAudio is available and lists at least one input device."""
    try:
        return bool(list_input_devices())
    except Exception:  # no PortAudio library, or a broken audio setup: no microphone
        return False
