"""Encoder features -> ONNX heads: the shipped default model and every folder ``train`` writes.

A heads folder holds ``config.json`` (encoder, layers, labels, ...) and ``heads.onnx``; the
default model is the one shipped in the package (Whisper base + tiny.en encoders).
``load_default()`` returns an :class:`EmotionModel` whose ``predict`` maps a batch of 16 kHz
windows to 8-class probabilities and (derived) valence/arousal. The encoder runs through the
backend named in ``default/config.json`` (chosen by measurement, see ``MODEL_CARD.md``): ONNX
Runtime with the int8 encoder shipped in the package on CPU, or the torch encoder on CUDA.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
from emotion_monitor.models.base import (
    SAMPLE_RATE,
    EmotionModel,
    ModelError,
    Prediction,
    read_json,
)
from emotion_monitor.models.encoders.backends import OrtEncoder, TorchEncoder
from emotion_monitor.models.encoders.onnx_cache import cached_encoder_onnx
from emotion_monitor.models.encoders.pooling import groups_by_length, prepare
from emotion_monitor.models.encoders.wav2vec2 import Wav2Vec2Embedder
from emotion_monitor.models.runtime import check_input_size, create_session, resolve_device

#: The shipped default model (package data, found through the import system). The package is
#: installed as plain files, so this is a real folder that ONNX Runtime can open files in.
DEFAULT_DIR = Path(str(resources.files("emotion_monitor.models") / "default")).resolve()
#: Largest batch sent to the encoder at once (bounds peak memory; the engine sends <= 32).
MAX_BATCH = 32
#: Whisper's positional table covers 30 s.
MAX_WINDOW_SAMPLES = 30 * SAMPLE_RATE


def read_config(folder: Path) -> dict:
    """The JSON config of a heads folder, with a clear error when it is missing or malformed."""
    path = Path(folder) / "config.json"
    config = read_json(path)
    for key in ("encoder", "layers", "labels", "feature_dim", "heads"):
        if key not in config:
            raise ModelError(f"{path}: missing key {key!r}")
    labels, dim = config["labels"], config["feature_dim"]
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise ModelError(f"{path}: labels must be a non-empty list of strings, got {labels!r}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ModelError(f"{path}: feature_dim must be a positive integer, got {dim!r}")
    if not isinstance(config["encoder"], str) or not isinstance(config["heads"], str):
        raise ModelError(f"{path}: encoder and heads must be strings")
    return config


class EncoderHeadsModel(EmotionModel):
    """Whisper encoder features -> ONNX heads. Stateless: every call depends only on its input."""

    has_valence_arousal = True

    def __init__(self, folder: Path, encoder, heads_session, heads_provider: str, config: dict):
        self.folder = folder
        self.config = config
        self.encoder = encoder
        self.heads = heads_session
        self.labels = tuple(config["labels"])
        # a folder written by `train` is named by its path: logs must tell it from the default
        kind = "default" if Path(folder).resolve() == DEFAULT_DIR else f"heads:{folder}"
        self.name = config.get("name", f"{kind} ({config['encoder']} + heads)")
        self.device = encoder.provider
        self.heads_provider = heads_provider
        self.input_norm = config.get("input_norm", "none")
        # ORT sessions are thread-safe; the lock only keeps two callers from oversubscribing the
        # same cores (the engine calls from one worker thread anyway).
        self._lock = threading.Lock()

    def features(self, windows: Sequence[np.ndarray]) -> np.ndarray:
        """Pooled encoder features (batch, feature_dim) of windows of any lengths."""
        windows = prepare(windows, self.input_norm)
        longest = max(len(w) for w in windows)
        if longest > MAX_WINDOW_SAMPLES:
            raise ModelError(
                f"window of {longest / SAMPLE_RATE:.1f} s is longer than the encoder's 30 s; "
                "cut long audio into windows first"
            )
        out = np.zeros((len(windows), int(self.config["feature_dim"])), np.float32)
        for _, idx in groups_by_length(windows).items():
            for s in range(0, len(idx), MAX_BATCH):
                part = idx[s : s + MAX_BATCH]
                out[part] = self.encoder(np.stack([windows[i] for i in part]))
        return out

    def predict(self, windows: Sequence[np.ndarray]) -> list[Prediction]:
        """One :class:`Prediction` per 1-D float32 16 kHz window (any lengths, >= 0.1 s useful)."""
        if len(windows) == 0:
            return []
        with self._lock:
            feats = self.features(windows)
            probs, va = self.heads.run(None, {"features": feats})
        return [
            Prediction(
                classes={lab: float(p) for lab, p in zip(self.labels, row, strict=True)},
                valence=float(v[0]),
                arousal=float(v[1]),
            )
            for row, v in zip(probs, va, strict=True)
        ]

    def describe(self) -> dict:
        d = super().describe()
        d.update(
            encoder=self.config["encoder"],
            backend=self.config.get("backend", "torch"),
            heads_provider=self.heads_provider,
        )
        return d


def _encoder_onnx(folder: Path, config: dict, backend: str) -> Path:
    """The ONNX encoder file for ``backend`` ("ort-int8" / "ort-fp32"): shipped in the package
    when present, else exported once from the pinned weights into the user cache."""
    shipped = folder / ("encoder_int8.onnx" if backend == "ort-int8" else "encoder_fp32.onnx")
    if shipped.exists():
        return shipped
    return cached_encoder_onnx(config["encoder"], config["layers"], backend)


def load_model_dir(
    folder: str | Path, device: str = "auto", backend: str | None = None, threads: int | None = None
) -> EncoderHeadsModel:
    """Load a heads folder written by ``emotion-monitor train`` (the default is one of these).

    ``backend`` overrides the encoder backend of the config: "torch", "ort-fp32" or "ort-int8".
    On CUDA the torch encoder is used (the int8 graph is a CPU optimisation).
    """
    folder = Path(folder)
    config = read_config(folder)
    dev = resolve_device(device)
    backend = backend or config.get("backend", "torch")
    if backend not in ("torch", "ort-fp32", "ort-int8"):
        raise ModelError(f"unknown encoder backend {backend!r}")
    if not config["encoder"].startswith("whisper"):
        # heads trained on a wav2vec2-family encoder: that encoder runs in torch
        encoder = Wav2Vec2Embedder(config["encoder"], config["layers"], dev)
    elif dev != "cpu" or backend == "torch":
        encoder = TorchEncoder(config["encoder"], config["layers"], dev)
    else:
        path = _encoder_onnx(folder, config, backend)
        encoder = OrtEncoder(path, "cpu", threads, per_window=backend == "ort-int8")
    heads_path = folder / config["heads"]
    if not heads_path.is_file():
        raise ModelError(f"{folder / 'config.json'}: names heads file {heads_path}: missing")
    # one short window through the encoder: a config whose layers do not match the encoder
    # fails here, naming the files, instead of on the first window of a stream
    produced = encoder(np.zeros((1, SAMPLE_RATE), np.float32)).shape[1]
    if produced != int(config["feature_dim"]):
        raise ModelError(
            f"{folder / 'config.json'}: feature_dim is {config['feature_dim']} but encoder "
            f"{config['encoder']} with layers {config['layers']} produces {produced} features"
        )
    heads, heads_provider = create_session(heads_path, "cpu", threads=1)
    check_input_size(heads, produced, heads_path)
    _check_heads_outputs(heads, len(config["labels"]), heads_path)
    return EncoderHeadsModel(folder, encoder, heads, heads_provider, config)


def _check_heads_outputs(session, n_labels: int, path: Path) -> None:
    """The heads graph must give one probability per config label and (valence, arousal)."""
    outputs = session.get_outputs()
    # symbolic or missing dimensions cannot be checked before a run
    sizes = [o.shape[-1] if o.shape and isinstance(o.shape[-1], int) else None for o in outputs]
    if len(outputs) != 2 or sizes[0] not in (n_labels, None) or sizes[1] not in (2, None):
        raise ModelError(
            f"{path}: heads give outputs of sizes {sizes}, but config.json lists {n_labels} "
            "labels; expected [class probabilities per label, (valence, arousal)] = "
            f"[{n_labels}, 2]"
        )


def load_default(device: str = "auto") -> EmotionModel:
    """The shipped default model. ``device``: "auto" (CUDA when torch sees one), "cpu", "cuda"."""
    return load_model_dir(DEFAULT_DIR, device=device)
