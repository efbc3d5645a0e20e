"""Emotion models: encoders, heads and adapters for published checkpoints.

Everything heavy (torch, transformers, onnxruntime) is imported lazily inside the functions that
need it, so importing this package is cheap.
"""

from emotion_monitor.models.base import (
    EMOTIONS,
    EmotionModel,
    ModelError,
    Prediction,
)

__all__ = ["EMOTIONS", "EmotionModel", "ModelError", "Prediction", "load_model"]


def load_model(spec: str | None = None, device: str = "auto") -> EmotionModel:
    """Build the model named by ``spec`` (``None`` or ``"default"`` is the shipped default).

    See :func:`emotion_monitor.models.registry.load_model` for the accepted specs.
    """
    from emotion_monitor.models.registry import load_model as _load

    return _load(spec, device=device)
