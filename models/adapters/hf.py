"""Hugging Face audio-classification checkpoints (wav2vec2, HuBERT, AST) as an EmotionModel.

Spec: ``hf:ID_OR_DIR`` or a directory whose ``config.json`` names a ``*ForSequenceClassification``
or ``*ForAudioClassification`` architecture. Audio goes through the checkpoint's own feature
extractor (``AutoFeatureExtractor``) at 16 kHz; labels come from ``config.id2label``.
A hub id is downloaded when the hub is reachable and read from the local Hugging Face cache
otherwise (``models/hub.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from emotion_monitor.models.adapters.common import (
    ExportPlan,
    GroupedAdapter,
    class_predictions,
    normalise_labels,
)
from emotion_monitor.models.base import SAMPLE_RATE, ModelError, Prediction, first_line
from emotion_monitor.models.encoders.wav2vec2 import from_pretrained_checked
from emotion_monitor.models.hub import resolve_checkpoint
from emotion_monitor.models.runtime import resolve_device

#: Architectures exercised by the tests; others loadable by AutoModelForAudioClassification work
#: through the same code but are untested.
TESTED_ARCHITECTURES = (
    "Wav2Vec2ForSequenceClassification",
    "HubertForSequenceClassification",
    "ASTForAudioClassification",
)


class HFAudioClassifier(GroupedAdapter):
    """A transformers audio classifier plus its feature extractor."""

    has_valence_arousal = False

    def __init__(self, model, extractor, location: str, device: str):
        self.model = model
        self.extractor = extractor
        self.location = location
        self.device = device
        self.architecture = type(model).__name__
        id2label = model.config.id2label or {}
        raw = [
            id2label.get(i, id2label.get(str(i), f"label_{i}"))
            for i in range(model.config.num_labels)
        ]
        self.labels = normalise_labels(raw)
        self.name = f"hf:{Path(location).name or location}"
        # Extractors of layer-norm wav2vec2 models ask for a mask; group-norm ones must not get one.
        self._wants_mask = bool(getattr(extractor, "return_attention_mask", False))

    def _features(self, batch: list[np.ndarray]) -> dict:
        kwargs = {"sampling_rate": SAMPLE_RATE, "return_tensors": "np"}
        if self.architecture.startswith("AST"):
            return dict(self.extractor(batch, **kwargs))  # pads/truncates to its max_length itself
        return dict(
            self.extractor(batch, padding=True, return_attention_mask=self._wants_mask, **kwargs)
        )

    def _run(self, batch: list[np.ndarray]) -> list[Prediction]:
        import torch  # lazy: torch

        feats = {
            k: torch.from_numpy(np.asarray(v)).to(self.device)
            for k, v in self._features(batch).items()
        }
        with torch.inference_mode():
            logits = self.model(**feats).logits.float().cpu().numpy()
        return class_predictions(logits, self.labels)

    def describe(self) -> dict:
        """Name, labels and what the model outputs."""
        d = super().describe()
        d.update(
            kind="hf",
            architecture=self.architecture,
            outputs=f"probabilities over {len(self.labels)} classes; no valence/arousal",
        )
        return d

    def export_plan(self) -> ExportPlan:
        """Describe the ONNX export: the classifier on extractor features, extraction outside."""
        import torch  # lazy: torch

        class Logits(torch.nn.Module):
            def __init__(self, model):
                super().__init__()
                self.model = model

            def forward(self, x):
                return self.model(x).logits

        module = Logits(self.model.to("cpu")).eval()
        meta = {
            "kind": "hf",
            "architecture": self.architecture,
            "labels": list(self.labels),
            "outputs": "logits",
            "name": self.name,
        }
        if self.architecture.startswith("AST"):
            # The AST extractor (Kaldi-style fbank) is reused as saved, so ORT sees the same input.
            example = self._features([np.zeros(SAMPLE_RATE, np.float32)] * 2)["input_values"]
            meta["preprocess"] = {"kind": "hf_feature_extractor"}
            return ExportPlan(
                module,
                example.astype(np.float32),
                "input_values",
                {"input_values": {0: "batch"}, "output": {0: "batch"}},
                meta,
                save_extractor=self.extractor,
            )
        # Batches hold equal lengths (predict_grouped), so a mask would be all ones: export without.
        do_normalize = bool(getattr(self.extractor, "do_normalize", False))
        return ExportPlan.waveform(module, meta, do_normalize)


def load_hf_classifier(location: str, device: str = "auto") -> HFAudioClassifier:
    """Load a local directory or a hub id (downloaded or from the cache: ``resolve_checkpoint``)."""
    from transformers import (  # lazy: transformers
        AutoConfig,
        AutoFeatureExtractor,
        AutoModelForAudioClassification,
    )

    folder = resolve_checkpoint(location)
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:  # ValueError: a config.json without model_type
        raise ModelError(
            f"{folder}: not a Hugging Face checkpoint directory ({first_line(exc)})"
        ) from exc
    archs = config.architectures or []
    if not any(a.endswith(("ForSequenceClassification", "ForAudioClassification")) for a in archs):
        raise ModelError(
            f"{location}: config names {archs or 'no architecture'}, "
            "not an audio classification model"
        )
    try:
        extractor = AutoFeatureExtractor.from_pretrained(folder, local_files_only=True)
    except OSError as exc:
        raise ModelError(
            f"{location}: no feature extractor (preprocessor_config.json): {exc}"
        ) from exc
    if getattr(extractor, "sampling_rate", SAMPLE_RATE) != SAMPLE_RATE:
        raise ModelError(
            f"{location}: feature extractor expects {extractor.sampling_rate} Hz, "
            f"only {SAMPLE_RATE} Hz checkpoints are supported"
        )
    dev = resolve_device(device)
    model = from_pretrained_checked(AutoModelForAudioClassification, folder, "model")
    try:
        return HFAudioClassifier(model.to(dev).eval(), extractor, str(location), dev)
    except ModelError as exc:  # labels from id2label
        raise ModelError(f"{folder / 'config.json'}: {exc}") from exc
