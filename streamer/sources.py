"""Audio sources: a microphone, a file, raw PCM on stdin and a synthesized demo dialogue.

Every source is an iterable of items that are either a chunk of 16 kHz mono float32 samples
(``np.ndarray``) or a :class:`SourceError` saying that the source failed and is retrying. The
chunks go unchanged into :meth:`Engine.push`. NaN/Inf input samples are replaced by silence and
counted in ``stats["nonfinite_samples"]`` before down-mixing and resampling (the engine does the
same for audio that reaches it some other way); clipping is left intact for the engine to flag.

Sources do blocking I/O (device waits, pipe reads, real-time pacing); run them on their own
thread (``run_command.run_source`` does, with a bounded queue). :meth:`Source.stop` may be called
from any thread and ends the iteration promptly, except for a read already blocked on a pipe.

Example (one thread, a file as fast as possible)::

    engine, events = Engine(load_model(None)), []
    for item in FileSource("call.wav", realtime=False):
        if isinstance(item, SourceError):  # only live sources retry; a file raises AudioError
            print(item.message)
        else:
            events += engine.push("call", item)
    events += engine.flush()
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from emotion_monitor.streamer.audio import (
    SAMPLE_FORMATS,
    SAMPLE_RATE,
    AudioError,
    StreamResampler,
    check_audio_path,
    iter_file_blocks,
    pcm_to_float,
    silence_nonfinite,
    to_mono,
)
from emotion_monitor.streamer.events import SourceError
from emotion_monitor.streamer.protocol import MAX_CHANNELS, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from emotion_monitor.streamer.ringbuffer import RingBuffer

log = logging.getLogger(__name__)

Item = np.ndarray | SourceError


class Source:
    """Base class: iterate to get 16 kHz mono float32 chunks (and SourceError notices).

    Attributes:
        name: the stream id events of this source carry.
        duration: length in seconds when known up front (files), else ``None``.
        stats: counters specific to the source (overflows, reopens, ...).
    """

    name: str = "source"
    duration: float | None = None
    #: how long a consumer should wait after stop() for the source to release its resources
    close_timeout: float = 1.0

    def __init__(self) -> None:
        self._stop = threading.Event()
        self.stats: dict[str, int] = {}

    def __iter__(self) -> Iterator[Item]:
        raise NotImplementedError

    def stop(self) -> None:
        """Ask the iteration to end (any thread)."""
        self._stop.set()

    def describe(self) -> str:
        """What the source is, for people (the ``source`` of its stream's metadata): the
        ``--source`` spelling, e.g. ``mic``, ``stdin``, ``demo`` or ``file:NAME``."""
        return self.name

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def _mono(self, frames: np.ndarray) -> np.ndarray:
        """Down-mix to mono, replacing NaN/Inf by silence (before resampling) and counting them."""
        frames, nonfinite = silence_nonfinite(frames)
        self.stats["nonfinite_samples"] += nonfinite
        return to_mono(frames)


class _Pacer:
    """Holds chunks back until their audio would have been heard live (real-time mode)."""

    def __init__(self, realtime: bool, stop: threading.Event):
        self.realtime = realtime
        self._stop = stop
        self._t0: float | None = None

    def wait_until(self, samples_done: int) -> None:
        """Sleep until ``samples_done`` samples of 16 kHz audio have elapsed since the start."""
        if not self.realtime:
            return
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        delay = self._t0 + samples_done / SAMPLE_RATE - now
        if delay > 0:
            self._stop.wait(delay)  # returns early when the source is stopped


# -- files -------------------------------------------------------------------------------------


def _ffprobe_duration(path: Path) -> float | None:
    """Duration of a file ffmpeg can decode; raises AudioError with ffprobe's reason if not."""
    if shutil.which("ffprobe") is None:
        raise AudioError(f"{path}: cannot decode (not a soundfile format and ffmpeg is missing)")
    probe = "ffprobe -v error -select_streams a:0 -show_entries stream=codec_type:format=duration"
    cmd = [*probe.split(), "-of", "default=nw=1", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0 or "codec_type=audio" not in proc.stdout:
        lines = proc.stderr.strip().splitlines()
        reason = lines[-1].replace(f"{path}: ", "") if lines else "no audio stream found"
        raise AudioError(f"{path}: cannot decode: not a readable audio file ({reason})")
    for line in proc.stdout.splitlines():
        if line.startswith("duration="):
            try:
                return float(line.split("=", 1)[1])
            except ValueError:
                return None
    return None


class FileSource(Source):
    """An audio file, decoded block by block and paced in real time or as fast as possible.

    wav/flac/ogg/mp3 are read by soundfile; anything else (m4a, opus in webm, ...) through an
    ffmpeg pipe. The file is checked when the source is built, so a missing or undecodable file
    raises :class:`AudioError` naming the file and the reason before any model is loaded.

    Args:
        path: the file.
        realtime: pace chunks at the speed of the audio (a live stream) or deliver at once.
        block_seconds: chunk length.
        loop: start over at the end, forever (used by the demo).
        name: stream id; defaults to the file name.
    """

    def __init__(
        self,
        path: str | Path,
        realtime: bool = True,
        block_seconds: float = 0.1,
        loop: bool = False,
        name: str | None = None,
    ):
        super().__init__()
        self.path = Path(path)
        self.realtime = realtime
        self.block_seconds = block_seconds
        self.loop = loop
        self.name = name or self.path.name
        check_audio_path(self.path)
        import soundfile as sf

        try:
            info = sf.info(str(self.path))
            self.duration = info.frames / info.samplerate if info.samplerate else None
            if not info.frames or not info.samplerate:
                raise AudioError(f"{self.path}: contains no audio frames")
        except AudioError:
            raise
        except Exception:  # not a soundfile format (or a broken one): let ffmpeg try or explain
            self.duration = _ffprobe_duration(self.path)
        self.stats = {"nonfinite_samples": 0}

    def describe(self) -> str:
        """``file:`` and the file's name (not its whole path)."""
        return f"file:{self.path.name}"

    def __iter__(self) -> Iterator[Item]:
        pacer = _Pacer(self.realtime, self._stop)
        done = 0
        while not self.stopped:
            for chunk in iter_file_blocks(self.path, self.block_seconds, prepare=self._mono):
                if self.stopped:
                    return
                if len(chunk) == 0:
                    continue
                done += len(chunk)
                pacer.wait_until(done)
                yield chunk
            if not self.loop:
                return


# -- stdin -------------------------------------------------------------------------------------


class StdinSource(Source):
    """Raw interleaved PCM from a binary stream (stdin by default), at any rate and channel count.

    Args:
        fp: the byte stream; ``sys.stdin.buffer`` when ``None``.
        rate: sample rate of the incoming PCM, in the range ``/ingest`` accepts
            (:data:`~.protocol.MIN_SAMPLE_RATE`..:data:`~.protocol.MAX_SAMPLE_RATE`, resampled
            to 16 kHz).
        channels: interleaved channels (averaged to mono), 1..:data:`~.protocol.MAX_CHANNELS`
            like ``/ingest``.
        sample_format: ``"s16le"`` or ``"f32le"``.
        block_seconds: largest chunk handed on at once.

    Raises:
        AudioError: an unknown format, a rate or channel count out of range (at construction),
        or a stream that ends in the middle of a frame (at the end of the iteration).
    """

    def __init__(
        self,
        fp: BinaryIO | None = None,
        rate: int = SAMPLE_RATE,
        channels: int = 1,
        sample_format: str = "s16le",
        block_seconds: float = 0.1,
        name: str = "stdin",
    ):
        super().__init__()
        if sample_format not in SAMPLE_FORMATS:
            raise AudioError(
                f"stdin: unknown sample format {sample_format!r}; use one of {SAMPLE_FORMATS}"
            )
        if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
            # e.g. 1 Hz would turn 64 kB of input into hours of audio to analyse
            raise AudioError(
                f"stdin: sample rate {rate} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz"
            )
        if not 1 <= channels <= MAX_CHANNELS:
            # the limit /ingest has: more is almost surely a wrong flag (a rate, a byte count)
            raise AudioError(f"stdin: channel count {channels} is outside 1..{MAX_CHANNELS}")
        self.fp = fp
        self.rate, self.channels, self.sample_format = rate, channels, sample_format
        self.frame_bytes = (2 if sample_format == "s16le" else 4) * channels
        self.block_bytes = self.frame_bytes * max(1, int(block_seconds * rate))
        self.name = name
        self.close_timeout = 0.0  # a read blocked on an open pipe cannot be interrupted anyway
        self.stats = {"bytes": 0, "nonfinite_samples": 0}

    def __iter__(self) -> Iterator[Item]:
        if self.fp is None:
            # os.read on the descriptor returns what the pipe has (low latency) and holds no
            # Python-level lock, so a read still blocked at exit cannot hang interpreter shutdown.
            fd = sys.stdin.fileno()

            def read(n: int) -> bytes:
                return os.read(fd, n)
        else:
            read = getattr(self.fp, "read1", self.fp.read)
        resampler = StreamResampler(self.rate, SAMPLE_RATE)
        pending = b""
        checked_range = False
        while not self.stopped:
            data = read(self.block_bytes)
            if not data:
                break
            self.stats["bytes"] += len(data)
            pending += data
            whole = len(pending) - len(pending) % self.frame_bytes
            if not whole:
                continue
            frames = pcm_to_float(pending[:whole], self.sample_format, self.channels)
            pending = pending[whole:]
            if not checked_range and self.sample_format == "f32le" and len(frames) >= 256:
                checked_range = True
                self._warn_if_not_float(frames)
            yield resampler.process(self._mono(frames))
        if self.stopped:
            return
        yield resampler.flush()
        if pending:
            raise AudioError(
                f"stdin: the stream ended with {len(pending)} byte(s) that do not make a whole "
                f"{self.sample_format} frame of {self.channels} channel(s); "
                "check --format and --channels"
            )

    def _warn_if_not_float(self, frames: np.ndarray) -> None:
        # s16le read as f32le decodes to huge or tiny garbage values; say so once.
        finite = np.abs(frames[np.isfinite(frames)])
        if finite.size and np.mean((finite > 2.0) | ((finite < 1e-30) & (finite > 0))) > 0.25:
            log.warning(
                "stdin: f32le samples are mostly outside [-1, 1]; is the input s16le? "
                "(use --format s16le)"
            )


# -- microphone --------------------------------------------------------------------------------


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
            import sounddevice as sd
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
        import sounddevice as sd

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
        import sounddevice as sd

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
    import sounddevice as sd

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
DEMO_DIALOGUE: tuple[tuple[str, int, int, int], ...] = (
    ("Hello, thank you for calling. Please take your time, there is no rush at all.", 140, 35, 70),
    (
        "This is the third time I am calling! Nothing works and nobody fixes it! "
        "I want this sorted out right now!",
        210,
        80,
        110,
    ),
    ("I understand. Let us go through it together, calmly, one step at a time.", 130, 30, 60),
    ("No! I have waited for two weeks! This is completely unacceptable!", 220, 90, 110),
)


def synthesize_speech(
    text: str,
    path: str | Path,
    speed: int = 160,
    pitch: int = 50,
    amplitude: int = 100,
    voice: str = "en",
) -> Path:
    """Speak ``text`` with espeak-ng into a wav file (22.05 kHz mono) and return its path.

    ``speed`` is words per minute, ``pitch`` 0-99, ``amplitude`` 0-200.
    """
    if shutil.which("espeak-ng") is None:
        raise AudioError("speech synthesis needs espeak-ng (Debian: apt install espeak-ng)")
    path = Path(path)
    cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-a", str(amplitude)]
    cmd += ["-w", str(path), text]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0 or not path.exists():
        raise AudioError(f"espeak-ng failed: {proc.stderr.strip() or proc.returncode}")
    return path


def make_demo_dialogue(folder: str | Path, pause: float = 0.8) -> Path:
    """Synthesize :data:`DEMO_DIALOGUE` into ``folder/demo_dialogue.wav`` (16 kHz mono)."""
    import soundfile as sf
    from emotion_monitor.streamer.audio import load_audio

    folder = Path(folder)
    gap = np.zeros(int(pause * SAMPLE_RATE), np.float32)
    parts = []
    for i, (text, speed, pitch, amp) in enumerate(DEMO_DIALOGUE):
        clip = synthesize_speech(text, folder / f"line{i}.wav", speed, pitch, amp)
        parts += [load_audio(clip), gap]
    out = folder / "demo_dialogue.wav"
    sf.write(str(out), np.concatenate(parts), SAMPLE_RATE, subtype="PCM_16")
    return out


class DemoSource(FileSource):
    """The synthesized demo dialogue, generated into ``folder``; by default played in real time
    in a loop, like a live stream."""

    def __init__(self, folder: str | Path, loop: bool = True, realtime: bool = True):
        super().__init__(make_demo_dialogue(folder), realtime=realtime, loop=loop, name="demo")

    def describe(self) -> str:
        """``demo``."""
        return "demo"
