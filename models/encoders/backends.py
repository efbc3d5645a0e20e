"""Encoder backends: the pooled Whisper features of a batch of windows, computed by torch or by
ONNX Runtime (fp32 or int8), and by wav2vec2-family checkpoints (:mod:`.wav2vec2`).

Serving (:mod:`emotion_monitor.models.heads_model`) and training (the feature cache) use the same
classes here, so heads are trained on exactly the features the serving backend produces.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from emotion_monitor.models.base import SAMPLE_RATE
from emotion_monitor.models.encoders.onnx_cache import cached_encoder_onnx
from emotion_monitor.models.encoders.pooling import groups_by_length, pool_states, prepare
from emotion_monitor.models.features import log_mel
from emotion_monitor.models.runtime import create_session


class OrtEncoder:
    """Log-mel in torch, encoder + pooling in one ONNX Runtime session.

    With ``per_window`` (used for the int8 graph) every window is its own ``run``: dynamic int8
    quantisation picks the activation scale from the whole input tensor, so in a batch a
    window's features would depend on its batchmates (measured: up to 0.06 in a class
    probability). Single-window runs keep predictions independent of batching; a small thread
    pool (one ORT thread each) runs them in parallel, which is as fast as batching on this CPU.
    """

    def __init__(self, path: Path, device: str, threads: int | None, per_window: bool = False):

        self.per_window = per_window
        workers = threads or os.cpu_count() or 1
        self.session, self.provider = create_session(
            path, device, threads=1 if per_window else threads
        )
        self._pool = (
            ThreadPoolExecutor(workers, "ort-encoder") if per_window and workers > 1 else None
        )

    def _run(self, mel: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"mel": mel})[0]

    def __call__(self, batch: np.ndarray) -> np.ndarray:

        mel = log_mel(batch).numpy()
        if not self.per_window:
            return self._run(mel)
        singles = [mel[i : i + 1] for i in range(len(mel))]
        if self._pool is None or len(singles) == 1:
            return np.concatenate([self._run(m) for m in singles])
        return np.concatenate(list(self._pool.map(self._run, singles)))


class TorchEncoder:
    """The torch encoder(s) (used on CUDA, and as a fallback / reference on CPU)."""

    def __init__(self, encoder: str, layers, device: str):
        from emotion_monitor.models.encoders.whisper import load_pooled_whisper  # lazy: torch

        self.pooled = load_pooled_whisper(encoder, layers, device)
        self.device = device
        self.provider = device

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch  # lazy: torch

        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device)
            return self.pooled(log_mel(x)).float().cpu().numpy()


class WhisperTorchEmbedder:
    """Pooled Whisper features computed by the project's torch encoder."""

    def __init__(
        self,
        encoder_name: str = "whisper-base",
        layers: Sequence[int] | None = None,
        device: str = "cpu",
        input_norm: str = "none",
    ):
        from emotion_monitor.models.encoders.whisper import load_whisper_encoder  # lazy: torch

        self.encoder = load_whisper_encoder(encoder_name, device=device)
        self.layers = list(range(self.encoder.num_layers + 1)) if layers is None else list(layers)
        self.input_norm = input_norm
        self.device = device
        self.name = encoder_name
        self.dim = self.encoder.dim
        self.feature_dim = 2 * self.dim * len(self.layers)

    def embed(self, windows: Sequence[np.ndarray]) -> np.ndarray:
        """(batch, feature_dim) float32 features for windows of any lengths."""
        import torch  # lazy: torch

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
        from emotion_monitor.models.encoders.whisper import load_whisper_encoder  # lazy: torch

        if layers is None:
            layers = range(load_whisper_encoder(encoder_name).num_layers + 1)
        self.layers = list(layers)
        path = cached_encoder_onnx(encoder_name, self.layers, backend)
        self.encoder = OrtEncoder(path, "cpu", None, per_window=backend == "ort-int8")
        # "single": int8 features of one window per run (the cache key changes with the method)
        self.name = f"{encoder_name}-{backend}" + ("-single" if backend == "ort-int8" else "")
        self.input_norm = input_norm
        self.feature_dim = self.encoder(np.zeros((1, SAMPLE_RATE), np.float32)).shape[1]
        self.dim = self.feature_dim // (2 * len(self.layers))

    def embed(self, windows: Sequence[np.ndarray]) -> np.ndarray:
        """(batch, feature_dim) float32 features for windows of any lengths."""
        windows = prepare(windows, self.input_norm)
        out = np.zeros((len(windows), self.feature_dim), np.float32)
        for _, idx in groups_by_length(windows).items():
            out[idx] = self.encoder(np.stack([windows[i] for i in idx]))
        return out
