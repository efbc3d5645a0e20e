"""File and stdin sources, the ring buffer, and the engine fed through them, on real speech."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from audio_fixtures import SR, default_model_once, dialogue_16k, ravdess_16k, to_pcm, write_wav
from emotion_monitor.streamer.audio import AudioError
from emotion_monitor.streamer.engine import Engine
from emotion_monitor.streamer.protocol import Event
from emotion_monitor.streamer.ringbuffer import RingBuffer
from emotion_monitor.streamer.settings import Settings
from emotion_monitor.streamer.sources.files import FileSource, StdinSource
from emotion_monitor.streamer.sources.runner import run_source


def collect(source) -> np.ndarray:
    return np.concatenate([c for c in source if isinstance(c, np.ndarray)])


def run_events(source, settings: Settings | None = None) -> tuple[list[Event], Engine]:
    engine = Engine(default_model_once(), settings or Settings())
    events: list = []
    run_source(source, engine, events.append, threading.Event())
    return events, engine


def comparable(ev: Event) -> dict:
    d = ev.to_dict()
    d.pop("latency_ms")
    return d


def assert_same_events(a: list[Event], b: list[Event], tol: float = 1e-4) -> None:
    assert a and len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        dx, dy = comparable(x), comparable(y)
        assert dx.keys() == dy.keys()
        for k, vx in dx.items():
            if isinstance(vx, float):
                assert dy[k] == pytest.approx(vx, abs=tol), k
            elif isinstance(vx, dict):
                assert {n: pytest.approx(v, abs=tol) for n, v in vx.items()} == dy[k], k
            else:
                assert vx == dy[k], k


# -- ring buffer ---------------------------------------------------------------------------------


def test_ringbuffer_keeps_order_and_wraps():
    rb = RingBuffer(10, channels=2)
    data = np.arange(24, dtype=np.float32).reshape(12, 2)
    assert rb.write(data[:7]) == 0
    np.testing.assert_array_equal(rb.read(5), data[:5])
    assert rb.write(data[7:12]) == 0  # wraps around the end of the storage
    np.testing.assert_array_equal(rb.read(), data[5:12])
    assert len(rb) == 0 and rb.dropped == 0


def test_ringbuffer_drops_oldest_and_counts():
    rb = RingBuffer(8)
    rb.write(np.arange(6, dtype=np.float32))
    assert rb.write(np.arange(6, 11, dtype=np.float32)) == 3
    assert rb.dropped == 3
    np.testing.assert_array_equal(rb.read()[:, 0], np.arange(3, 11))
    assert rb.write(np.arange(20, dtype=np.float32)) == 12  # larger than the whole buffer
    np.testing.assert_array_equal(rb.read()[:, 0], np.arange(12, 20))
    assert rb.dropped == 15 and rb.written == 31


def test_ringbuffer_concurrent_writer_loses_nothing_when_read_in_time():
    rb, chunks = RingBuffer(1000), [np.full(64, i, np.float32) for i in range(500)]

    def writer():  # a producer never faster than the reader: the buffer wraps ~32 times
        for c in chunks:
            while len(rb) > rb.capacity - len(c):
                time.sleep(0.0005)
            rb.write(c)

    t = threading.Thread(target=writer)
    t.start()
    got = []
    while t.is_alive() or len(rb):
        if rb.wait(0.05):
            got.append(rb.read()[:, 0])
    t.join()
    np.testing.assert_array_equal(np.concatenate(got), np.concatenate(chunks))
    assert rb.dropped == 0


# -- file source ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "suffix,subtype", [(".wav", "PCM_16"), (".flac", "PCM_16"), (".ogg", None)]
)
def test_file_formats_decode_to_16k(tmp_path, suffix, subtype):
    speech = ravdess_16k("angry")
    stereo44 = np.stack([speech, speech], 1)
    from scipy.signal import resample_poly

    stereo44 = resample_poly(stereo44, 441, 160, axis=0).astype(np.float32) * 0.5
    import soundfile as sf

    path = tmp_path / f"clip{suffix}"
    sf.write(str(path), stereo44, 44_100, **({"subtype": subtype} if subtype else {}))
    out = collect(FileSource(path, realtime=False))
    assert abs(len(out) - len(speech)) <= 2
    assert out.dtype == np.float32
    corr = np.corrcoef(out[: len(speech)][2000:-2000], speech[: len(out)][2000:-2000])[0, 1]
    assert corr > 0.9


def test_mp3_and_m4a_decode(tmp_path):
    import subprocess

    import soundfile as sf

    src = write_wav(tmp_path / "s.wav", ravdess_16k("happy"), subtype="PCM_16")
    for name in ("s.mp3", "s.m4a"):  # mp3: soundfile; m4a: the ffmpeg pipe
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y", "-i", str(src), str(tmp_path / name)],
            check=True,
            timeout=60,
        )
        source = FileSource(tmp_path / name, realtime=False)
        # iter_file_blocks falls back to the ffmpeg pipe exactly when soundfile cannot open it
        try:
            sf.info(str(tmp_path / name))
            via_ffmpeg = False
        except Exception:
            via_ffmpeg = True
        assert via_ffmpeg == (name == "s.m4a")
        out = collect(source)
        assert abs(len(out) / SR - 2.39) < 0.1 and np.abs(out).max() > 0.05


def test_missing_and_undecodable_files_name_file_and_reason(tmp_path):
    with pytest.raises(AudioError, match=r"nope\.wav: no such file"):
        FileSource(tmp_path / "nope.wav")
    bad = tmp_path / "notes.wav"
    bad.write_text("this is not audio at all\n" * 20)
    with pytest.raises(AudioError, match=r"notes\.wav: cannot decode"):
        FileSource(bad)
    with pytest.raises(AudioError, match="is a directory"):
        FileSource(tmp_path)


def test_truncated_file_names_the_file(tmp_path):
    path = write_wav(tmp_path / "cut.flac", ravdess_16k("sad"), subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] + bytes(4000))  # header intact, body corrupted
    try:
        out = collect(FileSource(path, realtime=False))
    except AudioError as exc:
        assert "cut.flac" in str(exc)
    else:  # libsndfile may decode what it can; then it must not invent audio
        assert len(out) <= len(ravdess_16k("sad")) + 16


def test_file_realtime_pacing_and_stop(tmp_path):
    path = write_wav(tmp_path / "d.wav", dialogue_16k()[: 2 * SR])
    source = FileSource(path, realtime=True)
    t0 = time.monotonic()
    out = collect(source)
    elapsed = time.monotonic() - t0
    assert len(out) == 2 * SR
    assert elapsed >= 1.8, f"2 s of audio delivered in {elapsed:.2f} s"  # lower bound only

    long = FileSource(path, realtime=True, loop=True)
    threading.Timer(0.3, long.stop).start()
    t0 = time.monotonic()
    collect(long)  # a looping source ends only through stop()
    assert time.monotonic() - t0 < 5


# -- chunk-size invariance -------------------------------------------------------------------------


def test_events_do_not_depend_on_file_block_size(tmp_path):
    """44.1 kHz stereo file read in different block sizes: same events (resampler + engine)."""
    from scipy.signal import resample_poly

    speech = dialogue_16k() * 0.4
    x44 = resample_poly(speech, 441, 160).astype(np.float32)
    path = write_wav(tmp_path / "d44.wav", np.stack([x44, x44], 1), 44_100)
    runs = [
        run_events(FileSource(path, realtime=False, block_seconds=b))[0] for b in (0.013, 0.1, 0.77)
    ]
    assert any(e.speech for e in runs[0])
    assert_same_events(runs[0], runs[1])
    assert_same_events(runs[0], runs[2])


class RandomChunks(io.RawIOBase):
    """A pipe that returns random-sized reads (1 byte to 9000 bytes), like a real one might."""

    def __init__(self, data: bytes, seed: int):
        self._data, self._pos = data, 0
        self._rng = np.random.default_rng(seed)

    def readable(self) -> bool:
        return True

    def read1(self, n: int = -1) -> bytes:
        k = int(self._rng.integers(1, 9000))
        out = self._data[self._pos : self._pos + min(k, n if n > 0 else k)]
        self._pos += len(out)
        return out


@pytest.mark.parametrize("rate,channels,fmt", [(16_000, 1, "s16le"), (48_000, 2, "f32le")])
def test_stdin_random_chunking_gives_identical_events(rate, channels, fmt):
    from scipy.signal import resample_poly

    speech = dialogue_16k() * 0.5
    x = resample_poly(speech, rate // 1000, 16).astype(np.float32) if rate != SR else speech
    x = np.repeat(x[:, None], channels, 1) if channels > 1 else x
    pcm = to_pcm(x, fmt)
    a, _ = run_events(StdinSource(RandomChunks(pcm, 1), rate, channels, fmt))
    b, _ = run_events(StdinSource(RandomChunks(pcm, 2), rate, channels, fmt))
    c, _ = run_events(StdinSource(io.BytesIO(pcm), rate, channels, fmt, block_seconds=1.3))
    assert_same_events(a, b)
    assert_same_events(a, c)
    assert abs(a[-1].t1 - len(speech) / SR) < 0.01


# -- what the engine sees through the sources ---------------------------------------------


def test_silence_and_noise_are_not_speech():
    rng = np.random.default_rng(0)
    quiet = np.zeros(3 * SR, np.float32)
    noise = (rng.normal(0, 0.05, 3 * SR)).astype(np.float32)
    hum = (0.1 * np.sin(2 * np.pi * 50 * np.arange(3 * SR) / SR)).astype(np.float32)
    for audio in (quiet, noise, hum):
        events, engine = run_events(
            StdinSource(io.BytesIO(to_pcm(audio, "f32le")), sample_format="f32le")
        )
        assert events and not any(e.speech for e in events)
        assert all(e.label is None and e.valence is None for e in events)
    speech_events, _ = run_events(StdinSource(io.BytesIO(to_pcm(ravdess_16k("angry")))))
    assert any(e.speech for e in speech_events)  # the same path does see real speech


@pytest.mark.parametrize("rate", [16_000, 48_000])
def test_nan_samples_are_counted_and_replaced(rate):
    from scipy.signal import resample_poly

    audio = ravdess_16k("fear")
    audio = resample_poly(audio, rate // 1000, 16).astype(np.float32) if rate != SR else audio
    audio[1000:1100] = np.nan
    audio[5000:5010] = np.inf
    source = StdinSource(io.BytesIO(to_pcm(audio, "f32le")), rate, sample_format="f32le")
    events, engine = run_events(source)
    # Counted once, at the source, before resampling could smear them over neighbours.
    assert source.stats["nonfinite_samples"] == 110
    assert engine.stats["nonfinite_samples"] == 0
    assert any(e.speech for e in events)
    for e in events:
        assert all(np.isfinite(v) for v in (e.valence, e.arousal) if v is not None)


def test_clipping_is_flagged():
    audio = ravdess_16k("angry")
    clean = audio / np.abs(audio).max() * 0.5
    clipped = np.clip(clean * 8, -1, 1)
    events, engine = run_events(StdinSource(io.BytesIO(to_pcm(clipped))))
    assert any(e.clipped for e in events) and engine.stats["clipped_windows"] > 0
    events, engine = run_events(StdinSource(io.BytesIO(to_pcm(clean))))
    assert not any(e.clipped for e in events) and engine.stats["clipped_windows"] == 0


def test_bad_stdin_formats():
    with pytest.raises(AudioError, match="unknown sample format"):
        StdinSource(io.BytesIO(b""), sample_format="s24le")
    # The channel range /ingest accepts (protocol.MAX_CHANNELS = 8).
    for channels in (0, -1, 9):
        with pytest.raises(AudioError, match=f"channel count {channels} is outside 1..8"):
            StdinSource(io.BytesIO(b""), channels=channels)
    assert len(collect(StdinSource(io.BytesIO(bytes(2 * 8 * SR)), channels=8))) == SR
    # The range /ingest accepts: 1 Hz would turn 64 kB of PCM into hours of audio to analyse.
    for rate in (1, 100, 7_999, 192_001, 200_000):
        with pytest.raises(AudioError, match=f"sample rate {rate} Hz is outside 8000..192000 Hz"):
            StdinSource(io.BytesIO(b""), rate=rate)
    for rate in (8_000, 192_000):  # the limits themselves are fine
        assert len(collect(StdinSource(io.BytesIO(bytes(2 * rate)), rate=rate))) == SR
    # 3 bytes of s16le stereo is not a whole frame: said once the stream ends.
    with pytest.raises(AudioError, match="whole s16le frame of 2 channel"):
        collect(StdinSource(io.BytesIO(bytes(4 * 1000 + 3)), channels=2))


def test_sources_describe_themselves_as_a_user_names_them(tmp_path):
    """Stream metadata says ``file:NAME``, not a class name such as FileSource."""
    path = write_wav(tmp_path / "talk.wav", ravdess_16k("calm"))
    assert FileSource(path).describe() == "file:talk.wav"
    assert FileSource(path, name="other").describe() == "file:talk.wav"
    assert StdinSource(io.BytesIO(b"")).describe() == "stdin"
