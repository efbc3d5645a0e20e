"""Audio conversions done at the edges: PCM formats, mu-law, mono, resampling (files and
uploads are decoded by :mod:`.decode`).

Everything past this module speaks one currency: 16 kHz mono float32 in [-1, 1].
"""

from __future__ import annotations

from math import gcd

import numpy as np
from emotion_monitor.models.base import SAMPLE_RATE
from scipy.signal import resample_poly

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
    samples = np.frombuffer(data, dtype=dtype).astype(np.float32)
    if scale != 1.0:  # f32le is used as is (NaN/Inf are for silence_nonfinite to deal with)
        samples *= np.float32(scale)
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

    #: Input samples resampled per step. ``_emit`` builds (outputs x taps) index and sample
    #: matrices, so one step of a whole 1 MiB message would cost hundreds of MB; blocks keep
    #: that to a few MB whatever the message size (the output does not depend on the split).
    BLOCK = 8192

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Feed mono float32 samples; returns the output samples now fully determined."""
        chunk = np.asarray(chunk, dtype=np.float32)
        if self.up == self.down:
            return chunk
        out = []
        for start in range(0, len(chunk), self.BLOCK):
            self._buf = np.concatenate([self._buf, chunk[start : start + self.BLOCK]])
            out.append(self._emit(final=False))
        if len(out) == 1:
            return out[0]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

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
