"""The microphone source on the real PortAudio capture thread, recording a PulseAudio null sink.

A private PulseAudio daemon (see ``audio_fixtures.PulseServer``) plays speech into a null sink
whose monitor is the default source; ``MicrophoneSource(device="pulse")`` records it through
PortAudio's ALSA ``pulse`` device, exactly as it would record a real microphone.
"""

from __future__ import annotations

import queue
import shutil
import threading
import time

import numpy as np
import pytest
from audio_fixtures import ANGRY_TEXT, CALM_TEXT, PulseServer, default_model_once, espeak
from emotion_monitor.streamer.engine import Engine
from emotion_monitor.streamer.protocol import SourceError
from emotion_monitor.streamer.settings import Settings
from emotion_monitor.streamer.sources.mic import MicrophoneSource
from emotion_monitor.streamer.sources.runner import run_source

pytestmark = [
    pytest.mark.slow,  # a real PulseAudio microphone
    pytest.mark.skipif(
        shutil.which("pulseaudio") is None, reason="needs the pulseaudio Debian package"
    ),
]


@pytest.fixture
def pulse(tmp_path):
    """A running private PulseAudio server that this process's PortAudio records from."""
    server = PulseServer(tmp_path / "pulse").start()
    server.activate()
    try:
        from emotion_monitor.streamer.sources.mic import list_input_devices

        if not any(d["name"] == "pulse" for d in list_input_devices()):
            pytest.skip("PortAudio has no 'pulse' device (Debian: libasound2-plugins)")
        yield server
    finally:
        server.deactivate()
        server.stop()


class Collector:
    """Iterates a source on a thread; items land in a queue the test waits on with timeouts."""

    def __init__(self, source):
        self.source = source
        self.items: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            for item in self.source:
                self.items.put(item)
        except BaseException as exc:
            self.items.put(exc)

    def wait_for(self, predicate, timeout: float) -> list:
        """Collect items until ``predicate(item)`` holds for one; fails after ``timeout``."""
        seen, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                item = self.items.get(timeout=0.1)
            except queue.Empty:
                continue
            if isinstance(item, BaseException):
                raise item
            seen.append(item)
            if predicate(item):
                return seen
        raise AssertionError(f"condition not met within {timeout} s; got {len(seen)} items")

    def close(self):
        self.source.stop()
        self.thread.join(timeout=5)
        assert not self.thread.is_alive(), "the source did not stop"


def is_audio(item) -> bool:
    return isinstance(item, np.ndarray) and len(item) > 0


def test_mic_records_speech_played_into_null_sink(pulse):
    clip = espeak(CALM_TEXT + " " + ANGRY_TEXT, speed=170)
    source = MicrophoneSource(device="pulse")
    engine = Engine(default_model_once(), Settings())
    events, stop = [], threading.Event()
    runner = threading.Thread(
        target=run_source, args=(source, engine, events.append, stop), daemon=True
    )
    runner.start()
    # Readiness: wait for the first windows (the null sink's silence) before playing.
    deadline = time.monotonic() + 20
    while not events and time.monotonic() < deadline:
        time.sleep(0.05)
    assert events, "no event from the microphone within 20 s"
    player = pulse.play(clip)
    assert player.wait(timeout=30) == 0, player.stderr.read()
    deadline = time.monotonic() + 10
    while not any(e.speech for e in events) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    runner.join(timeout=10)
    assert not runner.is_alive()

    assert not any(isinstance(e, SourceError) for e in events)
    first = events[0]  # the window recorded before playback began: the sink's silence
    assert not first.speech and first.label is None, "silence recorded as speech"
    speech = [e for e in events if getattr(e, "speech", False)]
    assert len(speech) >= 3, f"only {len(speech)} speech windows recorded"
    assert source.stats["device_rate"] > 0
    assert source.stats["reopens"] == 0


def test_mic_vanishing_reports_source_error_and_reopens(pulse, tmp_path):
    source = MicrophoneSource(device="pulse", stall_timeout=1.0, backoff=(0.2, 1.0))
    got = Collector(source)
    try:
        got.wait_for(is_audio, timeout=20)
        # The null sink whose monitor we record disappears under the open stream.
        pulse.pactl("unload-module", pulse.module_index("sink_name=virt"))
        errors = got.wait_for(lambda i: isinstance(i, SourceError), timeout=15)
        err = errors[-1]
        assert err.stream == "mic" and "pulse" in err.message and err.retry_in is not None
        # ... and the source reopens the device (now on the server's fallback sink).
        got.wait_for(is_audio, timeout=20)
        assert source.stats["reopens"] >= 1

        # The whole sound server dies: reopening fails, with a source_error per attempt, ...
        pulse.kill()
        got.wait_for(lambda i: isinstance(i, SourceError), timeout=15)
        got.wait_for(lambda i: isinstance(i, SourceError) and "cannot open" in i.message, 15)
        # ... until it comes back on the same socket, and audio flows again.
        revived = PulseServer(pulse.folder).start()
        try:
            got.wait_for(is_audio, timeout=30)
        finally:
            got.close()
            revived.stop()
    finally:
        got.close()


def test_slow_reader_overflow_drops_oldest_and_counts(pulse):
    """The capture thread never waits: a stalled reader loses the oldest audio, counted."""
    from emotion_monitor.streamer.sources.mic import list_input_devices

    index = next(d["index"] for d in list_input_devices() if d["name"] == "pulse")
    source = MicrophoneSource(device=index, buffer_seconds=0.2)  # a device given by index
    items = iter(source)
    first = next(items)
    assert isinstance(first, np.ndarray)
    rate = source.stats["device_rate"]
    deadline = time.monotonic() + 20
    while source._ring.written < rate and time.monotonic() < deadline:  # > 1 s captured
        time.sleep(0.05)
    assert source._ring.written >= rate, "the capture thread stopped delivering"
    backlog = next(items)  # what survived: at most the ring's 0.2 s (resampled to 16 kHz)
    assert len(backlog) <= int(0.2 * 16_000) + 64
    source.stop()
    for _ in items:  # the iteration ends promptly and closes the stream
        pass
    assert source._stream is None
    assert source.stats["frames_dropped"] >= 0.5 * rate
