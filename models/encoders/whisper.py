"""The project's own Whisper encoder: short inputs, every layer's hidden states.

transformers' ``WhisperEncoder`` insists on 3000 mel frames (30 s). Attention cost and most of the
matmul cost scale with the frame count, so a 2 s window is ~15x cheaper when it is encoded on its
own, using the first T positional embeddings. The weights come from the pinned CTranslate2 data
packages (see :mod:`emotion_monitor.models.encoders.ct2`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from emotion_monitor.models.base import ModelError
from emotion_monitor.models.encoders.ct2 import load_whisper_weights
from emotion_monitor.models.encoders.pooling import pool_states
from emotion_monitor.models.features import log_mel
from torch import nn

#: Longest input the positional table allows: 1500 positions x 2 mel frames x 160 samples.
MAX_SAMPLES = 1500 * 2 * 160


class _Block(nn.Module):
    """Pre-norm transformer block, as in Whisper (fused qkv like the CTranslate2 layout)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.attn_ln = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.mlp_ln = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        qkv = self.qkv(self.attn_ln(x)).view(b, t, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v)
        x = x + self.out(a.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.mlp_ln(x))))


class WhisperEncoder(nn.Module):
    """Whisper audio encoder taking log-mel frames of any even length up to 3000.

    ``forward(mel)`` with mel (batch, 80, frames) returns a list of ``layers + 1`` tensors
    (batch, frames // 2, dim): the embeddings and each block's output, the last one after the
    final layer norm (the same convention as transformers' ``hidden_states``).
    """

    def __init__(self, dim: int, layers: int, heads: int, n_mels: int = 80, n_pos: int = 1500):
        super().__init__()
        self.dim, self.heads = dim, heads
        self.conv1 = nn.Conv1d(n_mels, dim, 3, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, 3, stride=2, padding=1)
        self.register_buffer("positions", torch.zeros(n_pos, dim))
        self.blocks = nn.ModuleList(_Block(dim, heads) for _ in range(layers))
        self.ln_post = nn.LayerNorm(dim)

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def forward(self, mel: torch.Tensor, max_layer: int | None = None) -> list[torch.Tensor]:
        """Hidden states of layers 0..max_layer (all by default); see the class docstring."""
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        x = x + self.positions[: x.shape[1]]
        states = [x]
        last = self.num_layers if max_layer is None else max_layer
        for i, block in enumerate(self.blocks[:last]):
            x = block(x)
            states.append(self.ln_post(x) if i == self.num_layers - 1 else x)
        return states

    @torch.no_grad()
    def encode_audio(self, audio: np.ndarray | torch.Tensor) -> list[torch.Tensor]:
        """Hidden states for a batch (batch, samples) of equal-length 16 kHz windows."""
        x = torch.as_tensor(audio, dtype=torch.float32)
        if x.shape[-1] > MAX_SAMPLES:
            raise ModelError(f"window of {x.shape[-1]} samples exceeds Whisper's 30 s limit")
        dev = self.positions.device
        return self(log_mel(x.to(dev)))

    @classmethod
    def from_ct2(cls, variables: dict[str, np.ndarray]) -> WhisperEncoder:
        """Build from the ``encoder/...`` variables of a CTranslate2 Whisper model."""
        w = {
            k.removeprefix("encoder/"): torch.from_numpy(np.asarray(v, np.float32))
            for k, v in variables.items()
        }
        dim = w["conv1/weight"].shape[0]
        layers = sum(1 for k in w if k.endswith("self_attention/linear_0/weight"))
        heads = (
            int(variables["encoder/num_heads"]) if "encoder/num_heads" in variables else dim // 64
        )
        n_pos = w["position_encodings/encodings"].shape[0]
        model = cls(dim, layers, heads, n_mels=w["conv1/weight"].shape[1], n_pos=n_pos)
        state = {
            "conv1.weight": w["conv1/weight"],
            "conv1.bias": w["conv1/bias"],
            "conv2.weight": w["conv2/weight"],
            "conv2.bias": w["conv2/bias"],
            "positions": w["position_encodings/encodings"],
            "ln_post.weight": w["layer_norm/gamma"],
            "ln_post.bias": w["layer_norm/beta"],
        }
        names = {
            "attn_ln": "self_attention/layer_norm",
            "qkv": "self_attention/linear_0",
            "out": "self_attention/linear_1",
            "mlp_ln": "ffn/layer_norm",
            "fc1": "ffn/linear_0",
            "fc2": "ffn/linear_1",
        }
        for i in range(layers):
            for mine, theirs in names.items():
                src = f"layer_{i}/{theirs}"
                if mine.endswith("ln"):
                    state[f"blocks.{i}.{mine}.weight"] = w[f"{src}/gamma"]
                    state[f"blocks.{i}.{mine}.bias"] = w[f"{src}/beta"]
                else:
                    state[f"blocks.{i}.{mine}.weight"] = w[f"{src}/weight"]
                    state[f"blocks.{i}.{mine}.bias"] = w[f"{src}/bias"]
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ModelError(f"Whisper weights do not fit the encoder: {exc}") from exc
        return model.eval()


def load_whisper_encoder(name: str = "whisper-base", device: str = "cpu") -> WhisperEncoder:
    """The pinned Whisper encoder (``whisper-base`` / ``whisper-tiny``) in eval mode."""
    return WhisperEncoder.from_ct2(load_whisper_weights(name)).to(device)


def encoder_parts(encoder: str, layers) -> list[tuple[str, list[int]]]:
    """Pair each Whisper encoder of a ``+``-joined spec with the hidden states it pools.

    ``"whisper-base"`` with ``[2, 3, 4]`` -> one part; ``"whisper-base+whisper-tiny"`` with
    ``[[2, 3, 4], [1, 2, 3]]`` -> two parts, whose features are concatenated in that order.
    """
    names = encoder.split("+")
    groups = [layers] if layers and not isinstance(layers[0], list | tuple) else list(layers)
    if len(groups) != len(names):
        raise ModelError(
            f"encoder {encoder!r} has {len(names)} part(s) but {len(groups)} layer group(s) "
            f"were given ({layers!r}); use one comma list per encoder, joined by '+'"
        )
    return [(n, [int(i) for i in g]) for n, g in zip(names, groups, strict=True)]


class PooledWhisper(nn.Module):
    """One or more Whisper encoders run on the same log-mel frames, each pooled (mean and std
    over frames) over its chosen hidden states, concatenated: (batch, 80, frames) -> (batch, F).

    This is the whole encoder side of the default model, in torch and, exported, in ONNX.
    """

    def __init__(self, parts: list[tuple[WhisperEncoder, list[int]]]):
        super().__init__()
        self.encoders = nn.ModuleList(e for e, _ in parts)
        self.layers = [list(ls) for _, ls in parts]
        self.feature_dim = sum(2 * e.dim * len(ls) for e, ls in parts)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        pooled = [
            pool_states(enc(mel, max_layer=max(ls)), ls)
            for enc, ls in zip(self.encoders, self.layers, strict=True)
        ]
        return pooled[0] if len(pooled) == 1 else torch.cat(pooled, dim=-1)


def load_pooled_whisper(encoder: str, layers, device: str = "cpu") -> PooledWhisper:
    """:class:`PooledWhisper` for an encoder spec and its layers (see :func:`encoder_parts`)."""
    parts = [(load_whisper_encoder(n), ls) for n, ls in encoder_parts(encoder, layers)]
    return PooledWhisper(parts).to(device).eval()
