"""Small helpers shared by the adapters for published checkpoints (HF, ViT, pooled, ONNX): label
names, softmax (the project's one numpy softmax, which training uses too), predictions from
outputs, equal-length batching, and the export plan.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from emotion_monitor.models.base import SAMPLE_RATE, EmotionModel, ModelError, Prediction
from emotion_monitor.models.encoders.pooling import groups_by_length

#: Abbreviations and synonyms seen in published checkpoints' id2label -> project vocabulary.
#: Only unambiguous ones: IEMOCAP's "exc" (excited) or "fru" (frustrated) have no vocabulary entry
#: and stay as they are.
LABEL_ALIASES: dict[str, str] = {
    "ang": "angry",
    "anger": "angry",
    "hap": "happy",
    "happiness": "happy",
    "neu": "neutral",
    "sad": "sad",
    "sadness": "sad",
    "fea": "fear",
    "fearful": "fear",
    "dis": "disgust",
    "disgusted": "disgust",
    "sur": "surprise",
    "surprised": "surprise",
    "cal": "calm",
    "bor": "boredom",
    "bored": "boredom",
}


def normalise_labels(raw: Sequence[str]) -> tuple[str, ...]:
    """Lower-case labels and map common abbreviations to the project vocabulary.

    A mapping that would make two outputs share a name (say "hap" and "happy") is not applied to
    either of them, so every output keeps a distinct label.
    """
    lowered = [str(r).strip().lower() for r in raw]
    mapped = [LABEL_ALIASES.get(x, x) for x in lowered]
    counts: dict[str, int] = {}
    for m in mapped:
        counts[m] = counts.get(m, 0) + 1
    out = [m if counts[m] == 1 else low for m, low in zip(mapped, lowered, strict=True)]
    if len(set(out)) != len(out):
        raise ModelError(f"duplicate class labels after lower-casing: {list(raw)}")
    return tuple(out)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis, float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def class_predictions(logits: np.ndarray, labels: Sequence[str]) -> list[Prediction]:
    """Logits of shape (batch, classes) -> one Prediction with class probabilities per row."""
    probs = softmax(logits)
    return [
        Prediction(classes={lab: float(p) for lab, p in zip(labels, row, strict=True)})
        for row in probs
    ]


def va_predictions(values: np.ndarray) -> list[Prediction]:
    """(batch, 2) valence/arousal in [-1, 1] -> Predictions without classes."""
    v = np.clip(np.asarray(values, dtype=np.float64), -1.0, 1.0)
    return [Prediction(valence=float(a), arousal=float(b)) for a, b in v]


def predict_grouped(
    windows: Sequence[np.ndarray], run: Callable[[list[np.ndarray]], list[Prediction]]
) -> list[Prediction]:
    """Run ``run`` on groups of equal-length windows and return predictions in input order.

    Why groups instead of padding: wav2vec2-base-style checkpoints (group-norm feature encoder,
    ``return_attention_mask=False``) were trained without masks, so zero padding would shift their
    outputs. Batching equal lengths is exact for every architecture, and the engine's windows are
    almost always of one length, so batches stay full.
    """
    out: list[Prediction | None] = [None] * len(windows)
    for idx in groups_by_length(windows).values():
        for i, p in zip(
            idx, run([np.asarray(windows[i], dtype=np.float32) for i in idx]), strict=True
        ):
            out[i] = p
    return out  # type: ignore[return-value]


def zero_mean_unit_var(batch: np.ndarray) -> np.ndarray:
    """Per-row normalisation of raw audio, as the wav2vec2 feature extractor does it."""
    batch = np.asarray(batch, dtype=np.float32)
    mean = batch.mean(axis=-1, keepdims=True)
    var = batch.var(axis=-1, keepdims=True)
    return ((batch - mean) / np.sqrt(var + 1e-7)).astype(np.float32)


@dataclass
class ExportPlan:
    """What :mod:`adapter_export` needs to write an adapter to ONNX.

    ``module`` maps one float32 tensor (named ``input_name``) to one output tensor; ``example`` is a
    batch for tracing; ``meta`` goes into ``onnx_model.json`` (preprocessing, labels, outputs).
    """

    module: object
    example: np.ndarray
    input_name: str
    dynamic_axes: dict[str, dict[int, str]]
    meta: dict
    save_extractor: object | None = None

    @classmethod
    def waveform(cls, module: object, meta: dict, do_normalize: bool) -> ExportPlan:
        """A plan for a graph that takes raw 16 kHz waveforms (batch, samples) of any length."""
        example = np.random.default_rng(0).standard_normal((2, SAMPLE_RATE)).astype(np.float32)
        meta = {**meta, "preprocess": {"kind": "waveform", "do_normalize": do_normalize}}
        axes = {"input_values": {0: "batch", 1: "samples"}, "output": {0: "batch"}}
        return cls(module, example, "input_values", axes, meta)


class GroupedAdapter(EmotionModel):
    """Base of the published-model adapters: ``_run`` sees equal-length windows only."""

    def _run(self, batch: list[np.ndarray]) -> list[Prediction]:
        raise NotImplementedError

    def predict(self, windows: Sequence[np.ndarray]) -> list[Prediction]:
        """Predictions in input order; equal-length windows share one ``_run`` call."""
        return predict_grouped(windows, self._run) if len(windows) else []
