"""Valence/arousal targets derived from categorical labels (Russell's circumplex).

RAVDESS and most acted corpora carry class labels, not valence/arousal ratings. The default
model's valence/arousal head is therefore trained on *derived* targets: each class is placed at a
fixed point of the circumplex (coordinates in [-1, 1], after the placements in Russell (1980) and
Scherer's (2005) affect grid, rounded), scaled by the recorded intensity (RAVDESS "normal" 0.75,
"strong" 1.0, unknown 0.85). These are not human valence/arousal ratings; scores against them
say how well the model orders classes on the two axes, nothing more.
"""

from __future__ import annotations

#: label -> (valence, arousal) at full intensity.
CIRCUMPLEX: dict[str, tuple[float, float]] = {
    "angry": (-0.6, 0.8),
    "calm": (0.4, -0.6),
    "disgust": (-0.7, 0.2),
    "fear": (-0.6, 0.6),
    "happy": (0.8, 0.5),
    "neutral": (0.0, 0.0),
    "sad": (-0.7, -0.4),
    "surprise": (0.3, 0.8),
    "boredom": (-0.3, -0.7),
}

INTENSITY_SCALE: dict[str, float] = {"normal": 0.75, "strong": 1.0}
UNKNOWN_INTENSITY_SCALE = 0.85


def valence_arousal(label: str, intensity: str | None = None) -> tuple[float, float]:
    """Derived (valence, arousal) target of a labelled clip; KeyError for an unknown label."""
    v, a = CIRCUMPLEX[label]
    scale = INTENSITY_SCALE.get((intensity or "").strip().lower(), UNKNOWN_INTENSITY_SCALE)
    return v * scale, a * scale


def sign(label: str, axis: str) -> int:
    """+1 / -1 / 0 for the label's side of the ``"valence"`` or ``"arousal"`` axis.

    Binary valence/arousal accuracy is scored only on labels with a non-zero side (neutral has
    none on either axis).
    """
    v, a = CIRCUMPLEX[label]
    x = v if axis == "valence" else a
    return (x > 0) - (x < 0)
