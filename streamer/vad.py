"""Voice activity gate: silero-vad's ONNX model (from its PyPI package) run through ONNX Runtime.

The model is recurrent: it sees 512-sample frames (32 ms at 16 kHz) preceded by the last 64
samples of the previous frame, and carries a state tensor. One state row per track, and frames of
many tracks are batched together, so one call serves every stream.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from emotion_monitor.models.base import SAMPLE_RATE

FRAME = 512  # samples per VAD frame at 16 kHz
CONTEXT = 64  # samples of the previous frame the model expects in front of each frame
STATE_SHAPE = (2, 128)


def silero_model_path() -> Path:
    """Locate silero_vad.onnx inside the installed ``silero-vad`` package without importing it."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the voice activity gate needs the 'silero-vad' package: pip install silero-vad==6.2.3 "
            "(or run with --no-vad)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "silero_vad.onnx"
    if not path.exists():
        raise RuntimeError(f"{path}: missing from the silero-vad package; reinstall it")
    return path


class SileroVAD:
    """Batched, stateful speech probability per 32 ms frame."""

    def __init__(self, path: str | Path | None = None):
        import onnxruntime as ort  # lazy: a heavy import, only when the gate is built

        options = ort.SessionOptions()
        # The gate is tiny; one thread keeps it from competing with the encoder for cores.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(path or silero_model_path()), options, providers=["CPUExecutionProvider"]
        )
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)

    @staticmethod
    def initial_state() -> tuple[np.ndarray, np.ndarray]:
        """(recurrent state, context) for a new track."""
        return np.zeros(STATE_SHAPE, np.float32), np.zeros(CONTEXT, np.float32)

    def __call__(
        self, frames: np.ndarray, states: np.ndarray, contexts: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One frame per track: frames (B, 512), states (B, 2, 128), contexts (B, 64).

        Returns (speech probabilities (B,), new states, new contexts).
        """
        x = np.concatenate([contexts, frames], axis=1).astype(np.float32)
        state = np.ascontiguousarray(states.transpose(1, 0, 2))
        prob, new_state = self._session.run(None, {"input": x, "state": state, "sr": self._sr})
        return prob[:, 0], new_state.transpose(1, 0, 2), frames[:, -CONTEXT:].copy()
