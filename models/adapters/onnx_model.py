"""Serve an exported adapter (``emotion-monitor export --model SPEC``) through ONNX Runtime.

Spec: ``onnx:DIR`` or a directory holding ``onnx_model.json`` + ``model.onnx``. The JSON names the
preprocessing, which runs in numpy exactly as in the torch adapter:

- ``waveform``: raw 16 kHz audio, zero-mean/unit-variance per window when ``do_normalize``
  (wav2vec2 / HuBERT classifiers, the pooled classifier);
- ``vit_mel``: the mel-spectrogram image of :func:`.vit_va.mel_image` with the stored
  parameters;
- ``hf_feature_extractor``: the checkpoint's own transformers feature extractor saved next to the
  model (AST's Kaldi-style filterbank; numpy code when torchaudio is not installed).

``outputs`` is ``logits`` (softmaxed over ``labels``) or ``valence_arousal`` (batch, 2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from emotion_monitor.models.adapters.common import (
    GroupedAdapter,
    class_predictions,
    va_predictions,
    zero_mean_unit_var,
)
from emotion_monitor.models.adapters.vit_va import mel_image
from emotion_monitor.models.base import SAMPLE_RATE, ModelError, Prediction, read_json
from emotion_monitor.models.runtime import create_session

FORMAT_VERSION = 1
PREPROCESS_KINDS = ("waveform", "vit_mel", "hf_feature_extractor")


class OnnxAdapterModel(GroupedAdapter):
    """An exported adapter: numpy preprocessing + one ONNX Runtime session."""

    def __init__(self, session, meta: dict, location: str, provider: str, extractor=None):
        self.session = session
        self.meta = meta
        self.location = location
        self.device = provider
        self.extractor = extractor
        self.labels = tuple(meta.get("labels", ()))
        self.has_valence_arousal = meta["outputs"] == "valence_arousal"
        self.preprocess = meta["preprocess"]
        self.input_name = meta.get("input", session.get_inputs()[0].name)
        self.name = f"onnx:{meta.get('name', Path(location).name)}"

    def _inputs(self, batch: list[np.ndarray]) -> np.ndarray:
        kind = self.preprocess["kind"]
        if kind == "waveform":
            x = np.stack(batch).astype(np.float32)
            return zero_mean_unit_var(x) if self.preprocess.get("do_normalize") else x
        if kind == "vit_mel":
            return np.stack([mel_image(w, self.preprocess) for w in batch])
        feats = self.extractor(batch, sampling_rate=SAMPLE_RATE, return_tensors="np")
        return np.asarray(feats["input_values"], dtype=np.float32)

    def _run(self, batch: list[np.ndarray]) -> list[Prediction]:
        out = self.session.run(None, {self.input_name: self._inputs(batch)})[0]
        if self.has_valence_arousal:
            return va_predictions(out)
        return class_predictions(out, self.labels)

    def describe(self) -> dict:
        """Name, labels, provider and what the exported model outputs."""
        d = super().describe()
        what = (
            "valence and arousal in [-1, 1]; no classes"
            if self.has_valence_arousal
            else f"probabilities over {len(self.labels)} classes; no valence/arousal"
        )
        d.update(kind="onnx", source=self.meta.get("kind"), outputs=what, runtime="onnxruntime")
        return d


def load_onnx_model(location: str, device: str = "auto") -> OnnxAdapterModel:
    """Load ``DIR/onnx_model.json`` and ``DIR/model.onnx`` (and a saved feature extractor)."""
    root = Path(location)
    if not (root / "onnx_model.json").exists() and (root / "heads.onnx").exists():
        # `emotion-monitor export` of the default model writes a heads folder, not an adapter
        raise ModelError(
            f"{root} holds encoder + heads ONNX files (config.json, heads.onnx), which already run "
            f"in ONNX Runtime: load it with --model {root} (no 'onnx:' prefix)"
        )
    meta = read_json(root / "onnx_model.json")
    if meta.get("format") != FORMAT_VERSION:
        raise ModelError(f"{root / 'onnx_model.json'}: unsupported format {meta.get('format')!r}")
    if meta.get("outputs") not in ("logits", "valence_arousal"):
        raise ModelError(f"{root / 'onnx_model.json'}: unknown outputs {meta.get('outputs')!r}")
    kind = meta.get("preprocess", {}).get("kind")
    if kind not in PREPROCESS_KINDS:
        raise ModelError(f"{root / 'onnx_model.json'}: unknown preprocessing {kind!r}")
    if meta["outputs"] == "logits" and not meta.get("labels"):
        raise ModelError(f"{root / 'onnx_model.json'}: a classifier needs labels")
    extractor = None
    if kind == "hf_feature_extractor":
        from transformers import AutoFeatureExtractor  # lazy: transformers

        try:
            extractor = AutoFeatureExtractor.from_pretrained(str(root), local_files_only=True)
        except OSError as exc:
            raise ModelError(f"{root}: missing the saved feature extractor ({exc})") from exc
    # Explicit providers, checked after creation (ORT falls back to the CPU silently).
    session, provider = create_session(root / meta.get("file", "model.onnx"), device)
    _check_signature(session, meta, root / "onnx_model.json")
    return OnnxAdapterModel(session, meta, str(root), provider, extractor)


def _check_signature(session, meta: dict, meta_path: Path) -> None:
    """Refuse at load, not at the first window, an onnx_model.json that does not fit the graph."""
    inputs = {i.name: i.shape for i in session.get_inputs()}
    name = meta.get("input", next(iter(inputs)))
    if name not in inputs:
        raise ModelError(f"{meta_path}: input {name!r} is not in the graph (it has {list(inputs)})")
    out = session.get_outputs()[0].shape
    width = 2 if meta["outputs"] == "valence_arousal" else len(meta.get("labels", ()))
    if out and isinstance(out[-1], int) and out[-1] != width:
        wanted = "2 (valence, arousal)" if meta["outputs"] == "valence_arousal" else width
        raise ModelError(
            f"{meta_path}: the graph outputs {out[-1]} values per window; its outputs/labels "
            f"need {wanted}"
        )
    size = meta["preprocess"].get("image_size")
    shape = inputs[name]
    if meta["preprocess"]["kind"] == "vit_mel" and len(shape) == 4 and shape[2:] != [size, size]:
        raise ModelError(f"{meta_path}: image_size {size} but the graph takes {shape[2:]} images")
