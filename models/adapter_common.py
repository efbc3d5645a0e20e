"""Small helpers shared by the adapters for published checkpoints (HF, ViT, pooled, ONNX).

Kept free of torch at import time: the torch-using helpers import it inside the function.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from emotion_monitor.models.base import SAMPLE_RATE, EmotionModel, ModelError, Prediction

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
    groups: dict[int, list[int]] = {}
    for i, w in enumerate(windows):
        groups.setdefault(len(w), []).append(i)
    for idx in groups.values():
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


def resolve_torch_device(device: str) -> str:
    """ "auto" -> "cuda" when torch sees a GPU, else "cpu"; explicit names are checked."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but torch sees no CUDA GPU")
    if device != "cpu" and not device.startswith("cuda"):
        raise ModelError(f"unknown device {device!r}; use auto, cpu or cuda")
    return device


def read_json(path: Path) -> dict:
    """Read a JSON object, raising ModelError naming the file on any problem."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ModelError(f"{path}: missing") from exc
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return data


#: Parameters a checkpoint may lack without changing inference: wav2vec2's mask embedding is used
#: only for training-time masking, and older checkpoints were saved without it.
UNUSED_AT_INFERENCE = ("masked_spec_embed",)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (library errors can run to pages)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def weight_files(path: str | Path) -> str:
    """``DIR (its weight files)`` for error messages; just the name for a hub id."""
    if not Path(path).is_dir():
        return str(path)
    files = sorted(p.name for p in Path(path).iterdir() if p.suffix in (".safetensors", ".bin"))
    return f"{path} ({', '.join(files) or 'no weights file'})"


def from_pretrained_checked(cls, location: str | Path, what: str):
    """``cls.from_pretrained(location)`` offline, refusing weights that do not fit the config.

    transformers initialises missing or wrongly shaped parameters at random and only logs it,
    which would serve a model that outputs noise; here any such tensor is a ModelError naming the
    files. Corrupt or truncated files are a ModelError too (safetensors raises its own type).
    """
    where = weight_files(location)
    config = Path(location) / "config.json"
    if Path(location).is_dir() and not config.is_file():  # transformers would use defaults
        raise ModelError(f"{config}: missing (the {what} checkpoint's architecture)")
    try:
        model, info = cls.from_pretrained(
            str(location),
            local_files_only=True,
            output_loading_info=True,
            ignore_mismatched_sizes=True,  # reported below, with the shapes
        )
    except Exception as exc:  # OSError, ValueError, SafetensorError, torch's unpickling errors
        raise ModelError(f"{where}: cannot load the {what} weights ({first_line(exc)})") from exc
    mismatched = sorted(info.get("mismatched_keys") or [], key=lambda m: m[0])
    if mismatched:
        shapes = "; ".join(f"{k}: file {list(a)}, config {list(b)}" for k, a, b in mismatched[:4])
        raise ModelError(
            f"{where}: the {what} weights do not fit {config} ({shapes}); does that config "
            "(its layer sizes, and for a classifier its id2label) belong to these weights?"
        )
    missing = sorted(
        k for k in info.get("missing_keys") or [] if not k.endswith(UNUSED_AT_INFERENCE)
    )
    if missing:
        raise ModelError(
            f"{where}: the {what} weights lack {len(missing)} parameters of the model its "
            f"config.json describes (e.g. {', '.join(missing[:4])}); the file is incomplete or "
            "from another model"
        )
    return model


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
