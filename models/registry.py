"""Turn a ``--model SPEC`` string into an :class:`EmotionModel`.

Accepted specs:

- ``None`` / ``"default"``: the shipped default (Whisper base + tiny.en encoders, trained heads).
- ``"hf:ID_OR_DIR"`` or a directory whose ``config.json`` names a ``*ForSequenceClassification`` /
  ``*ForAudioClassification`` architecture: a Hugging Face audio classifier.
- ``"vit-va:DIR"`` or a directory holding a ``.pth`` state dict and a ViT config: the ViT
  valence/arousal regressor on mel-spectrogram images.
- ``"pooled:DIR"`` or a directory holding ``model.safetensors`` + ``pooled_config.json``: the
  pooled-embedding transformer classifier.
- ``"onnx:DIR"``: any of the above after ``emotion-monitor export``, served by ONNX Runtime.
- ``"heads:DIR"`` or a directory holding ``config.json`` + ``heads.onnx``: heads written by
  ``emotion-monitor train`` (served like the default model, on their own encoder).
"""

from __future__ import annotations

from pathlib import Path

from emotion_monitor.models.adapters.hf import load_hf_classifier
from emotion_monitor.models.adapters.onnx_model import load_onnx_model
from emotion_monitor.models.adapters.pooled import load_pooled_classifier
from emotion_monitor.models.adapters.vit_va import load_vit_va
from emotion_monitor.models.base import EmotionModel, ModelError, read_json, refuse_missing_folder
from emotion_monitor.models.heads_model import load_default, load_model_dir

KINDS = ("default", "hf", "vit-va", "pooled", "onnx", "heads")


def _detect_kind(path: Path) -> str:
    """Guess the adapter for a local directory from the files it holds."""
    # An export directory may sit next to (or be copied from) a checkpoint: its marker wins.
    if (path / "onnx_model.json").exists():
        return "onnx"
    if (path / "pooled_config.json").exists():
        return "pooled"
    if any(path.glob("*.pth")):
        return "vit-va"
    config = path / "config.json"
    if config.exists() and (path / "heads.onnx").exists():
        return "heads"
    if config.exists():
        fields = read_json(config)
        if "heads" in fields:
            return "heads"  # its loader names the missing heads file
        archs = fields.get("architectures") or []
        if any(a.endswith(("ForSequenceClassification", "ForAudioClassification")) for a in archs):
            return "hf"
    raise ModelError(
        f"{path}: cannot tell which kind of model this directory holds; "
        f"prefix the spec with one of {', '.join(k + ':' for k in KINDS)}"
    )


def parse_spec(spec: str | None) -> tuple[str, str | None]:
    """Split a spec into (kind, location)."""
    if spec is None or spec == "default":
        return "default", None
    kind, sep, rest = spec.partition(":")
    if kind == "default" and sep:
        raise ModelError(
            f"'default' takes no location (got {spec!r}); load a trained folder with heads:DIR"
        )
    if sep and kind in KINDS:
        if not rest.strip():
            raise ModelError(f"{spec!r}: give the model directory after {kind + ':'!r}")
        return kind, rest
    path = Path(spec)
    if path.is_dir():
        return _detect_kind(path), spec
    if sep and "/" not in kind:  # hub ids hold no ':', so this was meant as a prefix
        raise ModelError(
            f"unknown model prefix {kind + ':'!r} in {spec!r}; use one of "
            f"{', '.join(k + ':' for k in KINDS[1:])}, a model directory or a Hugging Face id"
        )
    if path.exists():
        raise ModelError(f"{spec}: a file, not a model directory")
    refuse_missing_folder(spec)
    # Anything else is a Hugging Face hub id: downloaded, or read from the cache (models/hub.py).
    return "hf", spec


def load_model(spec: str | None = None, device: str = "auto") -> EmotionModel:
    """Load the model a spec names; ``device`` is "auto", "cpu" or "cuda"."""
    kind, location = parse_spec(spec)
    if kind == "default":
        return load_default(device=device)
    if kind == "heads":
        return load_model_dir(location, device=device)
    if kind == "hf":
        return load_hf_classifier(location, device=device)
    if kind == "vit-va":
        return load_vit_va(location, device=device)
    if kind == "pooled":
        return load_pooled_classifier(location, device=device)

    return load_onnx_model(location, device=device)
