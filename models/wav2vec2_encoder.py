"""wav2vec2-family encoders (wav2vec2, XLS-R, HuBERT, WavLM...) through transformers, offline.

Any Hugging Face checkpoint given as a hub id (must already be in the local HF cache: nothing is
downloaded) or a local directory. Exposes every layer's hidden states and the same pooled
multi-layer mean+std features as the Whisper encoder, so the heads and ``train`` work unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from emotion_monitor.models.base import ModelError, refuse_missing_folder


def load_wav2vec2(spec: str, device: str = "cpu"):
    """Load (model, normalise_input) for a hub id or local directory with ``local_files_only``.

    For ``*ForSequenceClassification`` / ``*ForCTC`` checkpoints the base encoder inside is used.
    ``normalise_input`` says whether the checkpoint expects zero-mean unit-variance input (read
    from its feature-extractor config; wav2vec2-base does not, XLS-R does). Weights that lack
    tensors of the encoder or hold tensors of other shapes are a ModelError naming the files.
    """
    from emotion_monitor.models.adapter_common import from_pretrained_checked
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

    refuse_missing_folder(spec, "checkpoint folder")
    try:
        config = AutoConfig.from_pretrained(spec, local_files_only=True)
    except (OSError, ValueError) as exc:
        where = "directory" if Path(spec).exists() else "hub id (not in the local HF cache)"
        raise ModelError(
            f"{spec}: cannot load a transformers config from this {where}: {exc}"
        ) from exc
    # transformers fills missing or mis-shaped tensors with random values and only logs it: the
    # encoder would then embed noise, and heads trained or served on it would be silently wrong
    model = from_pretrained_checked(AutoModel, spec, "wav2vec2 encoder")
    try:
        fe = AutoFeatureExtractor.from_pretrained(spec, local_files_only=True)
        normalise = bool(getattr(fe, "do_normalize", True))
    except (OSError, ValueError):
        normalise = bool(getattr(config, "feat_extract_norm", "group") == "layer")
    return model.eval().to(device), normalise


class Wav2Vec2Embedder:
    """Pooled mean+std features of selected hidden layers of a wav2vec2-family model.

    ``layers`` indexes ``hidden_states`` (0 = the CNN feature projection, i = transformer layer
    i); ``None`` takes all of them.
    """

    def __init__(
        self,
        spec: str,
        layers: Sequence[int] | None = None,
        device: str = "cpu",
        input_norm: str = "none",
    ):
        self.model, self.normalise = load_wav2vec2(spec, device)
        n_states = self.model.config.num_hidden_layers + 1
        self.layers = list(range(n_states)) if layers is None else list(layers)
        bad = [i for i in self.layers if not 0 <= i < n_states]
        if bad:
            raise ModelError(f"{spec}: layer(s) {bad} out of range 0..{n_states - 1}")
        self.name = spec
        self.device = device
        self.input_norm = input_norm
        self.provider = device
        self.dim = self.model.config.hidden_size
        self.feature_dim = 2 * self.dim * len(self.layers)

    def hidden_states(self, batch: np.ndarray) -> list:
        """All hidden states for an equal-length batch (batch, samples)."""
        import torch

        x = torch.as_tensor(batch, dtype=torch.float32, device=self.device)
        if self.normalise:
            x = (x - x.mean(1, keepdim=True)) / torch.sqrt(x.var(1, keepdim=True) + 1e-7)
        with torch.inference_mode():
            return list(self.model(x, output_hidden_states=True).hidden_states)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        from emotion_monitor.models.embedding import pool_states

        states = self.hidden_states(batch)
        return pool_states(states, self.layers).float().cpu().numpy()

    def embed(self, windows: Sequence[np.ndarray]) -> np.ndarray:
        """(batch, feature_dim) features for windows of any lengths."""
        from emotion_monitor.models.embedding import groups_by_length, prepare

        windows = prepare(windows, self.input_norm)
        out = np.zeros((len(windows), self.feature_dim), np.float32)
        for _, idx in groups_by_length(windows).items():
            out[idx] = self(np.stack([windows[i] for i in idx]))
        return out


def weighted_layer_sum(states: Sequence, weights: Sequence[float]):
    """Softmax-weighted sum of hidden states (the SUPERB recipe), (batch, frames, dim)."""
    import torch

    w = torch.softmax(torch.as_tensor(list(weights), dtype=torch.float32), 0)
    return sum(wi * h for wi, h in zip(w, states, strict=True))
