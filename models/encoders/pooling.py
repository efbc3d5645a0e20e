"""Pooled multi-layer utterance features from a speech encoder.

Every encoder backend (Whisper in torch, Whisper in ONNX Runtime, wav2vec2-family checkpoints)
turns a batch of 16 kHz windows into one vector per window: for each selected hidden layer, the
mean and the standard deviation over frames, concatenated. Mean and std are what the heads are
trained on, so train and serve compute them the same way (this module).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from emotion_monitor.models.base import ModelError

#: Windows shorter than this are zero-padded (the STFT and the convolutions need a few frames).
MIN_SAMPLES = 1600


def prepare(windows: Sequence[np.ndarray], input_norm: str = "none") -> list[np.ndarray]:
    """Validate windows and apply the input normalisation the heads were trained with.

    ``input_norm="rms"`` scales each window to a fixed RMS level, which removes microphone gain
    (a cross-device nuisance); ``"none"`` leaves the samples alone.
    """
    out = []
    for i, w in enumerate(windows):
        w = np.asarray(w, dtype=np.float32)
        if w.ndim != 1:
            raise ModelError(f"window {i} must be 1-D 16 kHz audio, got shape {w.shape}")
        if not np.all(np.isfinite(w)):
            w = np.nan_to_num(w, nan=0.0, posinf=0.0, neginf=0.0)
        if w.size < MIN_SAMPLES:
            w = np.pad(w, (0, MIN_SAMPLES - w.size))
        if input_norm == "rms":
            rms = float(np.sqrt(np.mean(w.astype(np.float64) ** 2)))
            w = w * (0.05 / max(rms, 1e-4))
        elif input_norm != "none":
            raise ModelError(f"unknown input normalisation {input_norm!r}")
        out.append(w)
    return out


def groups_by_length(windows: Sequence[np.ndarray]) -> dict[int, list[int]]:
    """Indices of windows grouped by length, so each group is one rectangular batch (no padding,
    which would change the pooled statistics)."""
    groups: dict[int, list[int]] = {}
    for i, w in enumerate(windows):
        groups.setdefault(len(w), []).append(i)
    return groups


def pool_states(states, layers: Sequence[int]):
    """Concatenate mean and std over frames of the chosen layers: (batch, 2 * dim * len(layers)).

    Works on torch tensors (used inside the exported ONNX graph too).
    """
    import torch  # lazy: torch

    parts = []
    for i in layers:
        h = states[i]
        mean = h.mean(dim=1)
        # population std, like numpy's default; sqrt of a clamped variance keeps ONNX export simple
        var = (h * h).mean(dim=1) - mean * mean
        parts += [mean, torch.sqrt(torch.clamp(var, min=1e-8))]
    return torch.cat(parts, dim=-1)


def layer_columns(all_layers: Sequence[int], chosen: Sequence[int], dim: int) -> np.ndarray:
    """Column indices of ``chosen`` layers inside features pooled over ``all_layers``."""
    pos = {layer: k for k, layer in enumerate(all_layers)}
    missing = [c for c in chosen if c not in pos]
    if missing:
        raise ModelError(f"layer(s) {missing} not among the pooled layers {list(all_layers)}")
    return np.concatenate([np.arange(2 * dim * pos[c], 2 * dim * (pos[c] + 1)) for c in chosen])
