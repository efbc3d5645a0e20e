"""The one interface every emotion model in the project implements.

A model takes windows of 16 kHz mono float32 audio and returns one :class:`Prediction` per window.
The streaming engine, the server, ``analyze`` and ``evaluate`` only ever talk to this interface, so
the shipped default, Hugging Face classifiers, the ViT valence/arousal regressor and the pooled
embedding classifier are interchangeable.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only annotations need it: importing the interface stays cheap for the CLI
    import numpy as np

#: The emotion vocabulary used everywhere in the project (the default model predicts the first 8).
EMOTIONS: tuple[str, ...] = (
    "angry",
    "calm",
    "disgust",
    "fear",
    "happy",
    "neutral",
    "sad",
    "surprise",
    "boredom",
)

#: The one internal audio currency: 16 kHz mono float32; every model takes windows at this rate.
SAMPLE_RATE = 16_000


class ModelError(RuntimeError):
    """A model could not be loaded or run; the message names the file or package and the problem."""


def refuse_missing_folder(location: str, noun: str = "model directory") -> None:
    """ModelError ``"LOCATION: no such NOUN"`` when ``location`` is written as a path (it starts
    with ``/``, ``.`` or ``~``; a hub id is ``org/name``) but is not a folder: it would otherwise
    be looked up on the hub, and the error would blame the hub or its cache."""
    if location.startswith(("/", ".", "~")) and not Path(location).expanduser().is_dir():
        raise ModelError(f"{location}: no such {noun}")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (library errors can run to pages)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_json(path: str | Path) -> dict:
    """Read a JSON object (a model's config, an export's metadata), raising ModelError naming the
    file when it is missing, unreadable, not JSON or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ModelError(f"{path}: missing") from exc
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return data


@dataclass(frozen=True)
class Prediction:
    """What a model says about one window.

    ``classes`` maps label -> probability (summing to 1) or is ``None`` for a pure regressor;
    ``valence`` and ``arousal`` lie in [-1, 1] or are ``None`` when the model has no such output.
    """

    classes: dict[str, float] | None = None
    valence: float | None = None
    arousal: float | None = None


class EmotionModel(ABC):
    """Base class of every model: ``predict`` maps a batch of windows to predictions."""

    #: Short human-readable name shown in hello messages and reports.
    name: str = "model"
    #: Class labels in output order; empty for a model without a classifier.
    labels: tuple[str, ...] = ()
    #: Whether predictions carry valence and arousal.
    has_valence_arousal: bool = False
    #: The execution provider / device actually in use (e.g. "CPUExecutionProvider", "cuda").
    device: str = "cpu"

    @abstractmethod
    def predict(self, windows: Sequence[np.ndarray]) -> list[Prediction]:
        """Predict for a batch of 1-D float32 16 kHz windows (lengths may differ)."""

    def describe(self) -> dict:
        """A JSON-able summary for hello messages, ``/healthz`` and reports."""
        return {
            "name": self.name,
            "labels": list(self.labels),
            "valence_arousal": self.has_valence_arousal,
            "device": self.device,
        }
