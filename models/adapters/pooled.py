"""Pooled-embedding transformer classifier (negative / neutral / positive) over wav2vec2 layers.

Spec: ``pooled:DIR`` or a directory holding ``pooled_config.json`` and ``model.safetensors``.

Pipeline: raw 16 kHz audio -> zero-mean/unit-variance (as the wav2vec2 feature extractor does when
``do_normalize``) -> wav2vec2 (e.g. XLSR-53) hidden states -> the configured layers, each
mean-pooled over time -> concatenated (or averaged) into one vector -> feature scaler
``(x - mean) / scale`` -> cut into ``patch_size`` patches -> linear patch embedding -> CLS token +
learnable positions -> ``nn.TransformerEncoder`` -> LayerNorm + Linear on the CLS output -> softmax.

``pooled_config.json``::

    {
      "wav2vec2": "xlsr",              # checkpoint dir, relative to this directory or absolute
      "layers": [0, 6, 12],            # indices into hidden_states (0 = CNN/projection output)
      "combine": "concat",             # or "mean" (element-wise average of the pooled layers)
      "scaler": "scaler.json",         # {"mean": [...], "scale": [...]} or a .safetensors
      "weights": "model.safetensors",  # optional, this is the default
      "patch_size": 64, "d_model": 128, "num_heads": 4, "num_layers": 2,
      "dim_feedforward": 256, "dropout": 0.1, "activation": "gelu",
      "labels": ["negative", "neutral", "positive"]
    }

The weights file holds ``patch_embed.*``, ``cls_token``, ``pos_embed``, ``encoder.*`` and
``classifier.*`` (the names of :func:`build_classifier`). Pickled scalers are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from emotion_monitor.models.adapters.common import (
    ExportPlan,
    GroupedAdapter,
    class_predictions,
    zero_mean_unit_var,
)
from emotion_monitor.models.base import ModelError, Prediction, read_json
from emotion_monitor.models.encoders.wav2vec2 import from_pretrained_checked
from emotion_monitor.models.runtime import resolve_device
from safetensors.numpy import load_file as load_numpy_tensors

PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")


def load_scaler(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a feature scaler's mean and scale from JSON or safetensors (never pickle)."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelError(
            f"{path}: pickled scalers are refused (loading pickle runs arbitrary code). Convert it "
            'once, on a machine where you trust the file, to JSON: python -c "import joblib, json; '
            f"s = joblib.load('{path.name}'); json.dump({{'mean': s.mean_.tolist(), "
            "'scale': s.scale_.tolist()}, open('scaler.json', 'w'))\" and set \"scaler\": "
            '"scaler.json" in pooled_config.json'
        )
    if path.suffix == ".safetensors":
        try:
            data = load_numpy_tensors(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise ModelError(f"{path}: unreadable safetensors ({exc})") from exc
    else:
        data = read_json(path)
    if "mean" not in data or "scale" not in data:
        raise ModelError(f"{path}: a scaler needs 'mean' and 'scale'")
    try:
        mean = np.asarray(data["mean"], dtype=np.float32).reshape(-1)
        scale = np.asarray(data["scale"], dtype=np.float32).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{path}: 'mean' and 'scale' must be lists of numbers ({exc})") from exc
    if mean.shape != scale.shape or np.any(scale == 0):
        raise ModelError(f"{path}: mean and scale must have the same length and no zero scale")
    return mean, scale


def build_classifier(cfg: dict, feature_dim: int):
    """The patch transformer over a pooled feature vector (parameter names = weight file keys)."""
    import torch  # lazy: torch
    from torch import nn  # lazy: torch

    patch, d = int(cfg["patch_size"]), int(cfg["d_model"])
    if feature_dim % patch:
        raise ModelError(f"feature size {feature_dim} is not a multiple of patch_size {patch}")
    n_patches = feature_dim // patch

    class PatchTransformer(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch_size = patch
            self.patch_embed = nn.Linear(patch, d)
            self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
            self.pos_embed = nn.Parameter(torch.zeros(1, n_patches + 1, d))
            layer = nn.TransformerEncoderLayer(
                d,
                int(cfg["num_heads"]),
                int(cfg.get("dim_feedforward", 4 * d)),
                float(cfg.get("dropout", 0.1)),
                activation=cfg.get("activation", "gelu"),
                batch_first=True,
            )
            # enable_nested_tensor only matters for padding masks, which are never used here.
            self.encoder = nn.TransformerEncoder(
                layer, int(cfg["num_layers"]), enable_nested_tensor=False
            )
            self.classifier = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, len(cfg["labels"])))

        def forward(self, features):
            tokens = self.patch_embed(features.reshape(features.shape[0], -1, self.patch_size))
            cls = self.cls_token.expand(features.shape[0], -1, -1)
            x = torch.cat([cls, tokens], dim=1) + self.pos_embed
            return self.classifier(self.encoder(x)[:, 0])

    return PatchTransformer()


def build_pipeline(encoder, layers: list[int], combine: str, mean, scale, classifier):
    """Waveform -> logits in one torch module (what gets exported to ONNX)."""
    import torch  # lazy: torch

    class PooledPipeline(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.classifier = encoder, classifier
            self.layers, self.combine = list(layers), combine
            self.register_buffer("mean", torch.as_tensor(mean))
            self.register_buffer("scale", torch.as_tensor(scale))

        def pooled(self, input_values):
            hidden = self.encoder(input_values, output_hidden_states=True).hidden_states
            pooled = [hidden[i].mean(dim=1) for i in self.layers]
            return (
                torch.cat(pooled, -1) if self.combine == "concat" else torch.stack(pooled).mean(0)
            )

        def forward(self, input_values):
            return self.classifier((self.pooled(input_values) - self.mean) / self.scale)

    return PooledPipeline()


class PooledClassifier(GroupedAdapter):
    """wav2vec2 layer means -> scaler -> patch transformer -> class probabilities."""

    has_valence_arousal = False

    def __init__(
        self, pipeline, labels: Sequence[str], location: str, device: str, do_normalize: bool
    ):
        self.pipeline = pipeline
        self.labels = tuple(labels)
        self.location = location
        self.device = device
        self.do_normalize = do_normalize
        self.name = f"pooled:{Path(location).name}"

    def _input(self, batch: list[np.ndarray]) -> np.ndarray:
        x = np.stack(batch).astype(np.float32)
        return zero_mean_unit_var(x) if self.do_normalize else x

    def _run(self, batch: list[np.ndarray]) -> list[Prediction]:
        import torch  # lazy: torch

        with torch.inference_mode():
            logits = self.pipeline(torch.from_numpy(self._input(batch)).to(self.device))
        return class_predictions(logits.float().cpu().numpy(), self.labels)

    def describe(self) -> dict:
        """Name, labels and what the model outputs."""
        d = super().describe()
        d.update(
            kind="pooled",
            outputs=f"probabilities over {', '.join(self.labels)}; no valence/arousal",
            layers=self.pipeline.layers,
            combine=self.pipeline.combine,
        )
        return d

    def export_plan(self) -> ExportPlan:
        """The whole pipeline (wav2vec2, pooling, scaler, transformer) as one graph."""
        module = self.pipeline.to("cpu").eval()
        meta = {
            "kind": "pooled",
            "labels": list(self.labels),
            "outputs": "logits",
            "name": self.name,
        }
        return ExportPlan.waveform(module, meta, self.do_normalize)


def load_pooled_classifier(location: str, device: str = "auto") -> PooledClassifier:
    """Load ``DIR/pooled_config.json``, its wav2vec2 checkpoint, scaler and safetensors weights."""
    from safetensors.torch import load_file  # lazy: torch (safetensors.torch)
    from transformers import Wav2Vec2Model  # lazy: transformers

    root = Path(location)
    cfg = read_json(root / "pooled_config.json")
    missing = [
        k
        for k in (
            "wav2vec2",
            "layers",
            "scaler",
            "patch_size",
            "d_model",
            "num_heads",
            "num_layers",
            "labels",
        )
        if k not in cfg
    ]
    if missing:
        raise ModelError(f"{root / 'pooled_config.json'}: missing keys {missing}")
    combine = cfg.get("combine", "concat")
    if combine not in ("concat", "mean"):
        raise ModelError(f"{root / 'pooled_config.json'}: combine must be concat or mean")
    mean, scale = load_scaler(root / cfg["scaler"])

    w2v_dir = root / cfg["wav2vec2"]
    if not w2v_dir.is_dir():  # else transformers would take the name for a hub id
        raise ModelError(
            f"{root / 'pooled_config.json'}: its wav2vec2 checkpoint directory {w2v_dir} is missing"
        )
    encoder = from_pretrained_checked(Wav2Vec2Model, w2v_dir, "wav2vec2")
    layers = [int(i) for i in cfg["layers"]]
    n_states = encoder.config.num_hidden_layers + 1
    if not layers or any(not -n_states <= i < n_states for i in layers):
        raise ModelError(f"layers {layers} out of range for {n_states} hidden states")
    dim = encoder.config.hidden_size * (len(layers) if combine == "concat" else 1)
    if mean.shape[0] != dim:
        raise ModelError(f"scaler has {mean.shape[0]} features, pooled vector has {dim}")
    do_normalize = (
        bool(read_json(w2v_dir / "preprocessor_config.json").get("do_normalize", True))
        if (w2v_dir / "preprocessor_config.json").exists()
        else True
    )

    classifier = build_classifier(cfg, dim)
    weights = root / cfg.get("weights", "model.safetensors")
    try:
        state = load_file(str(weights))
    except Exception as exc:  # missing file or corrupt header
        raise ModelError(f"{weights}: cannot read safetensors weights ({exc})") from exc
    try:
        classifier.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{weights}: does not match pooled_config.json ({exc})") from exc
    dev = resolve_device(device)
    pipeline = build_pipeline(encoder, layers, combine, mean, scale, classifier)
    pipeline = pipeline.to(dev).eval()
    return PooledClassifier(
        pipeline, [str(x) for x in cfg["labels"]], str(location), dev, do_normalize
    )
