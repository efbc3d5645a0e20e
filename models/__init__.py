"""Emotion models: encoders, heads and adapters for published checkpoints.

Layout: ``base`` (the interface), ``registry`` (spec -> model), ``runtime`` (ONNX Runtime sessions,
the inference device), ``features`` (the log-mel front end serving and training share),
``heads_model`` (encoder features -> ONNX heads: the shipped default and ``train``'s output);
``encoders/`` (Whisper, wav2vec2, pooling, backends), ``adapters/`` (published model formats),
``training/`` (the train / evaluate / export commands; serving never imports it).

Everything heavy (torch, transformers, onnxruntime) is imported lazily inside the functions that
need it, so importing this package is cheap.
"""

from emotion_monitor.models.base import (
    EMOTIONS,
    EmotionModel,
    ModelError,
    Prediction,
)
from emotion_monitor.models.registry import load_model

__all__ = ["EMOTIONS", "EmotionModel", "ModelError", "Prediction", "load_model"]
