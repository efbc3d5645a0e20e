"""wav2vec2-family encoders (wav2vec2, XLS-R, HuBERT, WavLM...) through transformers.

Any Hugging Face checkpoint given as a hub id (downloaded when the hub is reachable, else taken
from the local cache: see ``models/hub.py``) or a local directory. Exposes every layer's hidden
states and the same pooled multi-layer mean+std features as the Whisper encoder, so the heads and
``train`` work unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from emotion_monitor.models.base import ModelError, first_line
from emotion_monitor.models.encoders.pooling import groups_by_length, pool_states, prepare
from emotion_monitor.models.hub import resolve_checkpoint

#: Parameters a checkpoint may lack without changing inference: wav2vec2's mask embedding is used
#: only for training-time masking, and older checkpoints were saved without it.
UNUSED_AT_INFERENCE = ("masked_spec_embed",)


def weight_files(path: str | Path) -> str:
    """``DIR (its weight files)`` for error messages; just the name for a hub id."""
    if not Path(path).is_dir():
        return str(path)
    files = sorted(p.name for p in Path(path).iterdir() if p.suffix in (".safetensors", ".bin"))
    return f"{path} ({', '.join(files) or 'no weights file'})"


def from_pretrained_checked(cls, location: str | Path, what: str):
    """``cls.from_pretrained(location)`` from a local directory (see ``resolve_checkpoint``),
    refusing weights that do not fit the config.

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


def load_wav2vec2(spec: str, device: str = "cpu"):
    """Load (model, normalise_input) for a hub id or local directory (``resolve_checkpoint``).

    For ``*ForSequenceClassification`` / ``*ForCTC`` checkpoints the base encoder inside is used.
    ``normalise_input`` says whether the checkpoint expects zero-mean unit-variance input (read
    from its feature-extractor config; wav2vec2-base does not, XLS-R does). Weights that lack
    tensors of the encoder or hold tensors of other shapes are a ModelError naming the files.
    """
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel  # lazy: transformers

    folder = resolve_checkpoint(spec, "checkpoint folder")
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"{spec}: cannot load a transformers config from {folder}: {first_line(exc)}"
        ) from exc
    # transformers fills missing or mis-shaped tensors with random values and only logs it: the
    # encoder would then embed noise, and heads trained or served on it would be silently wrong
    model = from_pretrained_checked(AutoModel, folder, "wav2vec2 encoder")
    try:
        fe = AutoFeatureExtractor.from_pretrained(folder, local_files_only=True)
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
        import torch  # lazy: torch

        x = torch.as_tensor(batch, dtype=torch.float32, device=self.device)
        if self.normalise:
            x = (x - x.mean(1, keepdim=True)) / torch.sqrt(x.var(1, keepdim=True) + 1e-7)
        with torch.inference_mode():
            return list(self.model(x, output_hidden_states=True).hidden_states)

    def __call__(self, batch: np.ndarray) -> np.ndarray:

        states = self.hidden_states(batch)
        return pool_states(states, self.layers).float().cpu().numpy()

    def embed(self, windows: Sequence[np.ndarray]) -> np.ndarray:
        """(batch, feature_dim) features for windows of any lengths."""

        windows = prepare(windows, self.input_norm)
        out = np.zeros((len(windows), self.feature_dim), np.float32)
        for _, idx in groups_by_length(windows).items():
            out[idx] = self(np.stack([windows[i] for i in idx]))
        return out


def weighted_layer_sum(states: Sequence, weights: Sequence[float]):
    """Softmax-weighted sum of hidden states (the SUPERB recipe), (batch, frames, dim)."""
    import torch  # lazy: torch

    w = torch.softmax(torch.as_tensor(list(weights), dtype=torch.float32), 0)
    return sum(wi * h for wi, h in zip(w, states, strict=True))
