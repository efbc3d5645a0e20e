"""Decoding audio files and uploads to 16 kHz mono float32: soundfile for what libsndfile
reads (wav, flac, ogg/opus, mp3), an ffmpeg pipe for the rest (m4a, aac, webm...)."""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
from emotion_monitor.streamer.audio import (
    MAX_FILE_RATE,
    MIN_FILE_RATE,
    SAMPLE_RATE,
    AudioError,
    StreamResampler,
    resample,
    to_mono,
)


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
