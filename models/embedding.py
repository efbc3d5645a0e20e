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
    import torch

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


class WhisperTorchEmbedder:
    """Pooled Whisper features computed by the project's torch encoder."""

    def __init__(
        self,
        encoder_name: str = "whisper-base",
        layers: Sequence[int] | None = None,
        device: str = "cpu",
        input_norm: str = "none",
    ):
        from emotion_monitor.models.whisper_encoder import load_whisper_encoder

        self.encoder = load_whisper_encoder(encoder_name, device=device)
        self.layers = list(range(self.encoder.num_layers + 1)) if layers is None else list(layers)
        self.input_norm = input_norm
        self.device = device
        self.name = encoder_name
        self.dim = self.encoder.dim
        self.feature_dim = 2 * self.dim * len(self.layers)

    def embed(self, windows: Sequence[np.ndarray]) -> np.ndarray:
        """(batch, feature_dim) float32 features for windows of any lengths."""
        import torch
        from emotion_monitor.models.features import log_mel

        windows = prepare(windows, self.input_norm)
        out = np.zeros((len(windows), self.feature_dim), np.float32)
        with torch.inference_mode():
            for _, idx in groups_by_length(windows).items():
                x = torch.from_numpy(np.stack([windows[i] for i in idx])).to(self.device)
                states = self.encoder(log_mel(x), max_layer=max(self.layers))
                out[idx] = pool_states(states, self.layers).float().cpu().numpy()
        return out


class WhisperOrtEmbedder:
    """Pooled Whisper features from the ONNX Runtime encoder (fp32 or int8), computed exactly as
    the serving path computes them (int8: one window per run), so heads can be trained on the
    features the default backend produces."""

    def __init__(
        self,
        encoder_name: str = "whisper-base",
        layers: Sequence[int] | None = None,
        backend: str = "ort-int8",
        input_norm: str = "none",
    ):
        from emotion_monitor.models.default_model import _OrtEncoder
        from emotion_monitor.models.export import cached_encoder_onnx
        from emotion_monitor.models.whisper_encoder import load_whisper_encoder

        if layers is None:
            layers = range(load_whisper_encoder(encoder_name).num_layers + 1)
        self.layers = list(layers)
        path = cached_encoder_onnx(encoder_name, self.layers, backend)
        self.encoder = _OrtEncoder(path, "cpu", None, per_window=backend == "ort-int8")
        # "single": int8 features of one window per run (the cache key changes with the method)
        self.name = f"{encoder_name}-{backend}" + ("-single" if backend == "ort-int8" else "")
        self.input_norm = input_norm
        self.feature_dim = self.encoder(np.zeros((1, 16000), np.float32)).shape[1]
        self.dim = self.feature_dim // (2 * len(self.layers))

    def embed(self, windows: Sequence[np.ndarray]) -> np.ndarray:
        """(batch, feature_dim) float32 features for windows of any lengths."""
        windows = prepare(windows, self.input_norm)
        out = np.zeros((len(windows), self.feature_dim), np.float32)
        for _, idx in groups_by_length(windows).items():
            out[idx] = self.encoder(np.stack([windows[i] for i in idx]))
        return out
