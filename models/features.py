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

N_FFT = 400
HOP = 160
N_MELS = 80
SAMPLE_RATE = 16_000


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    # Slaney scale: linear below 1 kHz, logarithmic above.
    f = np.asarray(f, dtype=np.float64)
    lin = f / (200.0 / 3)
    log = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log, lin)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    lin = m * (200.0 / 3)
    log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0))
    return np.where(m >= 15.0, log, lin)


@functools.lru_cache(maxsize=4)
def mel_filters(n_mels: int = N_MELS) -> np.ndarray:
    """Slaney-normalised triangular filters, shape (n_mels, N_FFT // 2 + 1), float32."""
    fft_freqs = np.linspace(0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    mel_pts = np.linspace(_hz_to_mel(0.0), _hz_to_mel(SAMPLE_RATE / 2), n_mels + 2)
    hz_pts = _mel_to_hz(mel_pts)
    fb = np.zeros((n_mels, fft_freqs.size))
    for i in range(n_mels):
        lo, mid, hi = hz_pts[i], hz_pts[i + 1], hz_pts[i + 2]
        rising = (fft_freqs - lo) / (mid - lo)
        falling = (hi - fft_freqs) / (hi - mid)
        fb[i] = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (hi - lo))
    return fb.astype(np.float32)


def log_mel(audio, n_mels: int = N_MELS):
    """Log-mel frames of a batch of equal-length 16 kHz windows.

    ``audio`` is a float32 array or tensor of shape (batch, samples) or (samples,); returns a
    float32 torch tensor (batch, n_mels, samples // 160) on the input's device.
    """
    import torch

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
