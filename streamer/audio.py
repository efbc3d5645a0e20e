"""Audio conversions done at the edges: decoding files, PCM formats, mu-law, resampling.

Everything past this module speaks one currency: 16 kHz mono float32 in [-1, 1].
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from math import gcd
from pathlib import Path

import numpy as np
from emotion_monitor.models.base import SAMPLE_RATE

SAMPLE_FORMATS = ("s16le", "f32le")
#: Sample rates a recording's header may claim. Wider than live streams accept (8..192 kHz):
#: files come at 5.5 kHz (old formats) up to 768 kHz (studio hardware). A rate outside is a
#: broken or hostile header: 2 GHz turns a whole file into microseconds, 1 Hz into hours.
MIN_FILE_RATE, MAX_FILE_RATE = 4_000, 768_000


class AudioError(ValueError):
    """Audio could not be read or converted; the message names the file or frame and why."""


def pcm_to_float(data: bytes, sample_format: str, channels: int = 1) -> np.ndarray:
    """Decode interleaved PCM bytes into float32 of shape (frames, channels)."""
    if sample_format == "s16le":
        width, dtype, scale = 2, "<i2", 1 / 32768.0
    elif sample_format == "f32le":
        width, dtype, scale = 4, "<f4", 1.0
    else:
        raise AudioError(f"unknown sample format {sample_format!r}; use one of {SAMPLE_FORMATS}")
    if channels < 1:
        raise AudioError(f"channels must be >= 1, got {channels}")
    if len(data) % (width * channels):
        raise AudioError(
            f"{len(data)} bytes is not a whole number of {sample_format} frames "
            f"of {channels} channel(s)"
        )
    samples = np.frombuffer(data, dtype=dtype).astype(np.float32) * scale
    return samples.reshape(-1, channels)


# ITU-T G.711 mu-law, written out from the standard's segment/quantisation definition.
def _mulaw_table() -> np.ndarray:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return (np.where(sign, -magnitude, magnitude) / 32768.0).astype(np.float32)


MULAW_TO_FLOAT = _mulaw_table()


def mulaw_decode(data: bytes) -> np.ndarray:
    """G.711 mu-law bytes -> float32 samples."""
    return MULAW_TO_FLOAT[np.frombuffer(data, dtype=np.uint8)]


def mulaw_encode(samples: np.ndarray) -> bytes:
    """float32 samples -> G.711 mu-law bytes (used by tests and the telephone augmentation)."""
    x = np.clip(np.asarray(samples, dtype=np.float64) * 32768.0, -32635, 32635)
    sign = np.where(x < 0, 0x80, 0x00)
    magnitude = np.abs(x).astype(np.int64) + 0x84
    exponent = np.floor(np.log2(magnitude)).astype(np.int64) - 7
    exponent = np.clip(exponent, 0, 7)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


def resample(samples: np.ndarray, rate_in: int, rate_out: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling along axis 0 (anti-aliased); returns float32."""
    if rate_in <= 0 or rate_out <= 0:
        raise AudioError(f"impossible sample rate {rate_in} -> {rate_out}")
    samples = np.asarray(samples, dtype=np.float32)
    if rate_in == rate_out:
        return samples
    from scipy.signal import resample_poly

    g = gcd(rate_in, rate_out)
    return resample_poly(samples, rate_out // g, rate_in // g, axis=0).astype(np.float32)


def silence_nonfinite(samples: np.ndarray) -> tuple[np.ndarray, int]:
    """``samples`` with NaN/Inf replaced by silence, and how many were replaced.

    Callers do this before resampling: one NaN fed to a resampling filter would smear over its
    taps and turn dozens of good samples into NaN.
    """
    finite = np.isfinite(samples)
    if finite.all():
        return samples, 0
    return np.where(finite, samples, np.float32(0)), int((~finite).sum())


def to_mono(frames: np.ndarray) -> np.ndarray:
    """(frames, channels) or (frames,) -> (frames,) by averaging channels."""
    frames = np.asarray(frames, dtype=np.float32)
    return frames if frames.ndim == 1 else frames.mean(axis=1, dtype=np.float32)


class StreamResampler:
    """Chunk-by-chunk resampler whose output does not depend on how the input was chunked.

    It keeps a short history and resamples overlapping blocks with a windowed-sinc polyphase
    filter, emitting only the samples whose full filter support has arrived.
    """

    def __init__(self, rate_in: int, rate_out: int = SAMPLE_RATE, half_taps: int = 16):
        if rate_in <= 0 or rate_out <= 0:
            raise AudioError(f"impossible sample rate {rate_in} -> {rate_out}")
        g = gcd(rate_in, rate_out)
        self.up, self.down = rate_out // g, rate_in // g
        self.rate_in, self.rate_out = rate_in, rate_out
        self._half = half_taps
        self._buf = np.zeros(half_taps, dtype=np.float32)  # zero history before the start
        self._consumed = 0  # input samples dropped from the front of _buf (excluding padding)
        self._next_out = 0  # index of the next output sample
        # One windowed-sinc filter per output phase (n * down mod up), computed once: output n
        # sits (n * down mod up) / up of a sample past an input sample.
        cutoff = min(1.0, rate_out / rate_in)  # anti-aliasing when downsampling
        taps = np.arange(-half_taps + 1, half_taps + 1)
        phases = np.arange(self.up)[:, None] / self.up
        window = np.hanning(2 * half_taps + 2)[1:-1]
        self._filters = (np.sinc((phases - taps) * cutoff) * window * cutoff).astype(np.float32)

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Feed mono float32 samples; returns the output samples now fully determined."""
        if self.up == self.down:
            return np.asarray(chunk, dtype=np.float32)
        self._buf = np.concatenate([self._buf, np.asarray(chunk, dtype=np.float32)])
        return self._emit(final=False)

    def flush(self) -> np.ndarray:
        """Emit the tail (the missing future is taken as silence)."""
        if self.up == self.down:
            return np.zeros(0, dtype=np.float32)
        self._buf = np.concatenate([self._buf, np.zeros(self._half, dtype=np.float32)])
        return self._emit(final=True)

    def _emit(self, final: bool) -> np.ndarray:
        # Input sample i lives at buffer index i + h - consumed; output n sits at input position
        # n * down / up (exact integer arithmetic, so long streams do not drift).
        h, up, down = self._half, self.up, self.down
        if final:  # every output before the end of the input
            end_input = self._consumed + len(self._buf) - 2 * h
            last = (end_input * up - 1) // down
        else:  # every output whose h future samples have arrived
            newest = len(self._buf) - 1 - 2 * h + self._consumed
            last = ((newest + 1) * up - 1) // down
        first = self._next_out
        if last < first:
            return np.zeros(0, dtype=np.float32)
        n = np.arange(first, last + 1, dtype=np.int64)
        base = (n * down) // up
        idx = (base + h - self._consumed)[:, None] + np.arange(-h + 1, h + 1)[None, :]
        w = self._filters[(n * down) % up]
        out = np.einsum("ij,ij->i", self._buf[idx], w).astype(np.float32)
        self._next_out = last + 1
        # Keep what the next output still needs: from its base - h + 1 onwards.
        next_base = (self._next_out * down) // up
        keep_from = max(0, next_base + 1 - self._consumed)
        self._buf = self._buf[keep_from:]
        self._consumed += keep_from
        return out


def check_file_rate(name: str | Path, rate: int) -> int:
    """``rate`` when a file may claim it (:data:`MIN_FILE_RATE`..:data:`MAX_FILE_RATE`), else
    AudioError naming ``name`` and the rate."""
    if not MIN_FILE_RATE <= rate <= MAX_FILE_RATE:
        raise AudioError(
            f"{name}: the header claims a sample rate of {rate} Hz, outside the "
            f"{MIN_FILE_RATE}..{MAX_FILE_RATE} Hz a recording can have"
        )
    return rate


def ffmpeg_decode_cmd(source: str, max_seconds: float | None = None) -> list[str]:
    """ffmpeg arguments decoding ``source`` to 16 kHz mono f32le on stdout."""
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", source]
    if max_seconds is not None:
        cmd += ["-t", f"{max_seconds:.3f}"]
    return cmd + ["-f", "f32le", "-ac", "1", "-ar", str(SAMPLE_RATE), "-"]


def _require_ffmpeg(path: Path) -> None:
    if shutil.which("ffmpeg") is None:
        raise AudioError(f"{path}: cannot decode (soundfile failed and ffmpeg is not installed)")


def _ffmpeg_reason(path: Path, stderr: bytes) -> str:
    lines = stderr.decode(errors="replace").strip().splitlines()
    # ffmpeg starts its own line with the path: the message names the file once
    reason = lines[-1].removeprefix(f"{path}: ") if lines else "ffmpeg failed"
    return f"{path}: cannot decode ({reason})"


def _ffmpeg_decode(path: Path) -> np.ndarray:
    _require_ffmpeg(path)
    proc = subprocess.run(ffmpeg_decode_cmd(str(path)), capture_output=True, check=False)
    if proc.returncode != 0:
        raise AudioError(_ffmpeg_reason(path, proc.stderr))
    return np.frombuffer(proc.stdout[: len(proc.stdout) // 4 * 4], dtype="<f4").copy()


def _ffmpeg_blocks(path: Path, block: int) -> Iterator[np.ndarray]:
    """16 kHz mono blocks of ``block`` samples from an ffmpeg pipe."""
    _require_ffmpeg(path)
    # stderr goes to a file: a pipe nobody reads could fill up and stall ffmpeg.
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(ffmpeg_decode_cmd(str(path)), stdout=subprocess.PIPE, stderr=err)
        try:
            while True:
                data = proc.stdout.read(block * 4)
                if not data:
                    break
                yield np.frombuffer(data[: len(data) // 4 * 4], dtype="<f4").copy()
        finally:
            proc.stdout.close()
            if proc.poll() is None:  # the consumer stopped early
                proc.kill()
            rc = proc.wait()
        if rc != 0:
            err.seek(0)
            raise AudioError(_ffmpeg_reason(path, err.read()))


def check_audio_path(path: str | Path) -> Path:
    """The path, or AudioError when it is missing or a directory."""
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, not an audio file")
    return path


def iter_file_blocks(
    path: str | Path,
    block_seconds: float = 2.0,
    prepare: Callable[[np.ndarray], np.ndarray] = to_mono,
) -> Iterator[np.ndarray]:
    """Yield a file as consecutive 16 kHz mono float32 blocks of about ``block_seconds``.

    soundfile reads wav/flac/ogg/mp3 block by block; ``prepare`` maps each (frames, channels)
    block to mono before the chunk-invariant :class:`StreamResampler` (a source uses it to count
    and silence NaN/Inf first). Anything soundfile cannot open is decoded by an ffmpeg pipe.
    Memory stays constant whatever the file's length. AudioError when the file cannot be
    decoded or its header claims an impossible sample rate (:func:`check_file_rate`).
    """
    import soundfile as sf

    path = check_audio_path(path)
    try:
        f = sf.SoundFile(str(path))
    except Exception:  # soundfile raises several types; ffmpeg gets a second try
        for block in _ffmpeg_blocks(path, max(1, int(block_seconds * SAMPLE_RATE))):
            yield prepare(block)
        return
    with f:
        resampler = StreamResampler(check_file_rate(path, f.samplerate))
        frames = max(1, int(block_seconds * f.samplerate))
        try:
            for data in f.blocks(blocksize=frames, dtype="float32", always_2d=True):
                yield resampler.process(prepare(data))
        except sf.LibsndfileError as exc:  # a file truncated or corrupted past its header
            raise AudioError(f"{path}: cannot decode ({exc})") from exc
        tail = resampler.flush()
        if len(tail):
            yield tail


def load_audio(path: str | Path) -> np.ndarray:
    """Decode a whole file (wav/flac/ogg/mp3/m4a...) to 16 kHz mono float32.

    soundfile handles wav/flac/ogg/mp3; anything else goes through ffmpeg. A missing or
    undecodable file, or one whose header claims an impossible sample rate
    (:func:`check_file_rate`), raises AudioError naming the file and the reason.
    """
    path = check_audio_path(path)
    import soundfile as sf

    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception:  # soundfile raises several types; ffmpeg gets a second try
        return _ffmpeg_decode(path)
    return resample(to_mono(data), check_file_rate(path, rate), SAMPLE_RATE)


# -- uploads (POST /predict) --------------------------------------------------------------------

#: Upload limits of POST /predict: a few minutes of WAV; longer recordings belong to `analyze`.
MAX_UPLOAD_BYTES = 50 << 20
MAX_UPLOAD_SECONDS = 600.0


class UploadError(ValueError):
    """An uploaded file is refused: too big, too long, empty or undecodable (readable message)."""


def decode_upload(
    data: bytes,
    filename: str = "upload",
    max_bytes: int = MAX_UPLOAD_BYTES,
    max_seconds: float = MAX_UPLOAD_SECONDS,
) -> np.ndarray:
    """Decode an uploaded audio file to 16 kHz mono float32, refusing what breaks the limits.

    soundfile decodes from memory; other formats (m4a, aac, webm...) go through ffmpeg via a
    temporary file, decoding at most ``max_seconds`` + 1 s so a huge file cannot exhaust memory.
    Raises :class:`UploadError` with a message fit to show the user.
    """
    import soundfile as sf

    if not data:
        raise UploadError("the uploaded file is empty")
    if len(data) > max_bytes:
        raise UploadError(
            f"the uploaded file is {len(data) / 1e6:.3g} MB; the limit is {max_bytes / 1e6:.3g} MB"
        )
    too_long = f"{filename}: longer than the limit of {max_seconds:g} s"
    try:
        f = sf.SoundFile(io.BytesIO(data))
    except Exception:  # not a format libsndfile knows: try ffmpeg
        f = None
    if f is not None:
        with f:
            try:
                check_file_rate(filename, f.samplerate)
            except AudioError as exc:
                raise UploadError(str(exc)) from None
            if f.frames / f.samplerate > max_seconds:
                raise UploadError(too_long)
            samples = resample(to_mono(f.read(dtype="float32", always_2d=True)), f.samplerate)
    else:
        samples = _ffmpeg_decode_bytes(data, filename, max_seconds + 1.0)
        if len(samples) > max_seconds * SAMPLE_RATE:
            raise UploadError(too_long)
    if not len(samples):
        raise UploadError(f"{filename}: contains no audio samples")
    return samples


def _ffmpeg_decode_bytes(data: bytes, filename: str, max_seconds: float) -> np.ndarray:
    if shutil.which("ffmpeg") is None:
        raise UploadError(f"{filename}: not a wav/flac/ogg/mp3 file and ffmpeg is not installed")
    suffix = Path(filename).suffix
    # The suffix only helps ffmpeg guess; keep it harmless.
    suffix = suffix if suffix[1:].isalnum() and len(suffix) <= 8 else ""
    with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
        tmp.write(data)
        tmp.flush()
        proc = subprocess.run(
            ffmpeg_decode_cmd(tmp.name, max_seconds), capture_output=True, check=False
        )
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        reason = lines[-1].replace(tmp.name, filename) if lines else "ffmpeg failed"
        raise UploadError(f"{filename}: cannot decode this audio ({reason})")
    return np.frombuffer(proc.stdout[: len(proc.stdout) // 4 * 4], dtype="<f4").copy()
