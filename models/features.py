"""Whisper's log-mel front end for short windows, in torch.

Identical to OpenAI Whisper / ``transformers.WhisperFeatureExtractor``: 25 ms Hann window (400
samples), 10 ms hop, centred reflect-padded STFT, power spectrum, 80 Slaney mel bands up to 8 kHz,
log10 floored at 1e-10, dynamic range clipped to 8 (per example) and scaled by (x + 4) / 4; the
last STFT frame is dropped so N samples give N // 160 frames. Unlike Whisper nothing is padded to
30 s: the clip of 8 is taken over the window itself.
"""

from __future__ import annotations

import functools

import numpy as np
from emotion_monitor.models.base import SAMPLE_RATE

N_FFT = 400
HOP = 160
N_MELS = 80


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale: 3 mels per 200 Hz up to 1 kHz, then log-spaced (27 steps per ln 6.4)."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3)
    log_part = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log_part, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * (200.0 / 3)
    log_part = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0))
    return np.where(mel >= 15.0, log_part, linear)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Slaney-style triangular mel filters, shape (n_mels, n_fft // 2 + 1), area-normalised."""
    fft_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_hz[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]


@functools.lru_cache(maxsize=4)
def mel_filters(n_mels: int = N_MELS) -> np.ndarray:
    """Whisper's filters: 16 kHz, 400-point FFT, shape (n_mels, 201), float32."""
    return mel_filterbank(SAMPLE_RATE, N_FFT, n_mels).astype(np.float32)


def log_mel(audio, n_mels: int = N_MELS):
    """Log-mel frames of a batch of equal-length 16 kHz windows.

    ``audio`` is a float32 array or tensor of shape (batch, samples) or (samples,); returns a
    float32 torch tensor (batch, n_mels, samples // 160) on the input's device.
    """
    import torch  # lazy: torch

    x = torch.as_tensor(audio, dtype=torch.float32)
    if x.ndim == 1:
        x = x[None]
    window = torch.hann_window(N_FFT, device=x.device)
    spec = torch.stft(
        x, N_FFT, HOP, window=window, center=True, pad_mode="reflect", return_complex=True
    )
    power = spec[..., :-1].abs() ** 2
    fb = torch.from_numpy(mel_filters(n_mels)).to(x.device)
    mel = fb @ power
    logs = torch.clamp(mel, min=1e-10).log10()
    peak = logs.amax(dim=(1, 2), keepdim=True)
    logs = torch.maximum(logs, peak - 8.0)
    return (logs + 4.0) / 4.0
