"""Deterministic audio degradations for training augmentation and robustness measurements.

Each augmentation is a pure function of the audio and a seed: its random draws are seeded from
the samples themselves, so embeddings of augmented clips can be cached on disk and a training
run repeats exactly wherever the data lies and however its manifest path is spelled.
"""

from __future__ import annotations

import hashlib

import numpy as np
from emotion_monitor.models.base import SAMPLE_RATE


def _mulaw_roundtrip(x: np.ndarray, mu: float = 255.0) -> np.ndarray:
    # G.711-style companding to 8 bits and back (continuous mu-law curve, 256 levels).
    x = np.clip(x, -1.0, 1.0)
    y = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    q = np.round((y + 1.0) * 127.5) / 127.5 - 1.0
    return np.sign(q) * ((1.0 + mu) ** np.abs(q) - 1.0) / mu


def telephone(x: np.ndarray) -> np.ndarray:
    """The 8 kHz mu-law phone round trip: 300-3400 Hz band, resample to 8 kHz, mu-law, back."""
    from scipy.signal import butter, resample_poly, sosfilt  # lazy: scipy.signal

    sos = butter(4, [300, 3400], btype="bandpass", fs=SAMPLE_RATE, output="sos")
    band = sosfilt(sos, x.astype(np.float64))
    narrow = resample_poly(band, 1, 2)
    narrow = _mulaw_roundtrip(narrow)
    return resample_poly(narrow, 2, 1)[: len(x)].astype(np.float32)


def noise_gain(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Coloured noise at 5-25 dB SNR plus a random gain of -15..+6 dB (clipped at full scale)."""
    n = len(x)
    white = rng.standard_normal(n)
    # random spectral tilt between white and brown-ish noise, built in the frequency domain
    tilt = rng.uniform(0.0, 1.5)
    spec = np.fft.rfft(white) / np.maximum(np.arange(n // 2 + 1), 1) ** (tilt / 2)
    noise = np.fft.irfft(spec, n)
    sig_p = np.mean(x.astype(np.float64) ** 2) + 1e-12
    snr = rng.uniform(5.0, 25.0)
    noise *= np.sqrt(sig_p / (np.mean(noise**2) + 1e-12) / 10 ** (snr / 10))
    gain = 10 ** (rng.uniform(-15.0, 6.0) / 20)
    return np.clip((x + noise) * gain, -1.0, 1.0).astype(np.float32)


def crop(x: np.ndarray, rng: np.random.Generator, seconds: float = 2.0) -> np.ndarray:
    """A random ``seconds``-long excerpt: the streaming engine's 2 s windows, seen in training."""
    n = int(seconds * SAMPLE_RATE)
    if len(x) <= n:
        return x
    start = int(rng.integers(0, len(x) - n + 1))
    return x[start : start + n]


def reverb(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random room: convolution with a synthetic impulse response (the direct sound, then a
    low-passed, exponentially decaying noise tail with a reverberation time of 0.2-0.8 s, 0-12 dB
    below the direct sound's energy), at the clip's level."""
    from scipy.signal import fftconvolve, lfilter  # lazy: scipy.signal

    rt60 = rng.uniform(0.2, 0.8)
    t = np.arange(int(rt60 * SAMPLE_RATE)) / SAMPLE_RATE
    # a -60 dB decay over rt60; the one-pole low-pass (up to 12 dB down at 8 kHz) stands in for
    # the walls and air absorbing highs more than lows
    tail = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60)
    tail = lfilter([1.0 - 0.6], [1.0, -0.6], tail)
    tail *= np.sqrt(10 ** (-rng.uniform(0.0, 12.0) / 10) / np.sum(tail**2))
    pre_delay = int(rng.uniform(0.002, 0.02) * SAMPLE_RATE)
    response = np.concatenate([[1.0], np.zeros(pre_delay), tail])
    dry = x.astype(np.float64)
    wet = fftconvolve(dry, response)[: len(x)]
    level = np.sqrt(np.mean(dry**2) / (np.mean(wet**2) + 1e-12))
    return np.clip(wet * level, -1.0, 1.0).astype(np.float32)


def speech_only(x: np.ndarray, seconds: float = 2.0, floor_db: float = 35.0) -> np.ndarray:
    """The clip's speech (first to last 20 ms frame within ``floor_db`` of the loudest), repeated
    or cut to ``seconds``: a window of continuous speech, as in a conversation, where the training
    clips hold a second of silence before each sentence."""
    target = int(seconds * SAMPLE_RATE)
    if len(x) == 0:
        return np.zeros(target, np.float32)
    frame = SAMPLE_RATE // 50
    n = len(x) // frame * frame
    voiced = x  # shorter than one frame: all of it
    if n:
        frames = x[:n].reshape(-1, frame).astype(np.float64)
        energy_db = 10 * np.log10(np.mean(frames**2, 1) + 1e-12)
        active = np.flatnonzero(energy_db > energy_db.max() - floor_db)
        voiced = x[active[0] * frame : (active[-1] + 1) * frame]
    return np.tile(voiced, -(-target // len(voiced)))[:target].astype(np.float32)


def short_speech(
    x: np.ndarray, rng: np.random.Generator, seconds: float = 2.0, floor_db: float = 35.0
) -> np.ndarray:
    """0.5-1 s of the clip's speech (a random excerpt of its active part, faded in and out over
    10 ms) at a random place in a ``seconds`` window whose rest is the clip's own background
    (its frames more than ``floor_db`` below the loudest, repeated), or faint noise 50 dB below
    the speech when the clip has under 0.2 s of it: a short utterance ("yes", "no way") in a
    window, as the engine sees one."""
    target = int(seconds * SAMPLE_RATE)
    frame = SAMPLE_RATE // 50
    n = len(x) // frame * frame
    if n < frame:
        return np.zeros(target, np.float32)
    frames = x[:n].reshape(-1, frame).astype(np.float64)
    energy_db = 10 * np.log10(np.mean(frames**2, 1) + 1e-12)
    loud = energy_db > energy_db.max() - floor_db
    active = np.flatnonzero(loud)
    speech = x[active[0] * frame : (active[-1] + 1) * frame].astype(np.float64)
    length = int(rng.uniform(0.5, 1.0) * SAMPLE_RATE)
    start = int(rng.integers(0, max(len(speech) - length, 0) + 1))
    part = speech[start : start + length].copy()
    fade = min(SAMPLE_RATE // 100, len(part) // 4)
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        part[:fade] *= ramp
        part[-fade:] *= ramp[::-1]
    quiet = frames[~loud].reshape(-1)
    if len(quiet) >= 10 * frame:
        window = np.tile(quiet, -(-target // len(quiet)))[:target].copy()
    else:
        level = np.sqrt(np.mean(part**2) + 1e-12) * 10 ** (-50 / 20)
        window = rng.standard_normal(target) * level
    at = int(rng.integers(0, target - len(part) + 1))
    window[at : at + len(part)] += part
    return np.clip(window, -1.0, 1.0).astype(np.float32)


def speed(x: np.ndarray, factor: float) -> np.ndarray:
    """Play ``factor`` times faster (pitch and tempo together), a stand-in for other voices."""
    from scipy.signal import resample_poly  # lazy: scipy.signal

    return resample_poly(x, 100, int(round(100 * factor))).astype(np.float32)


AUGMENTATIONS = (
    "clean",
    "noise",
    "phone",
    "phone_noise",
    "crop",
    "crop_phone",
    "slow",
    "fast",
    "reverb",
    "speech_only",
    "short",
)


#: the augmentations that draw random numbers (their results depend on the seed)
RANDOM_AUGMENTATIONS = frozenset({"noise", "phone_noise", "crop", "crop_phone", "reverb", "short"})


def augment(x: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    """Apply augmentation ``kind`` to 16 kHz float32 audio ``x``; the randomness is seeded by
    ``kind``, ``seed`` and a digest of the samples."""
    rng = None
    if kind in RANDOM_AUGMENTATIONS:  # only these draw: the others need no digest of the samples
        salt = f"{kind}:{seed}:".encode()
        digest = hashlib.sha1(salt + np.ascontiguousarray(x, np.float32).tobytes())
        rng = np.random.default_rng(int.from_bytes(digest.digest()[:8], "little"))
    if kind == "clean":
        return x
    if kind == "noise":
        return noise_gain(x, rng)
    if kind == "phone":
        return telephone(x)
    if kind == "phone_noise":
        return telephone(noise_gain(x, rng))
    if kind == "crop":
        return crop(x, rng)
    if kind == "crop_phone":
        return telephone(crop(x, rng))
    if kind == "slow":
        return speed(x, 0.9)
    if kind == "fast":
        return speed(x, 1.1)
    if kind == "reverb":
        return reverb(x, rng)
    if kind == "speech_only":
        return speech_only(x)
    if kind == "short":
        return short_speech(x, rng)
    raise ValueError(f"unknown augmentation {kind!r}; choose from {', '.join(AUGMENTATIONS)}")
