"""Tiny random checkpoints in the exact on-disk formats of the published models.

No hub is reachable, so each builder writes what ``save_pretrained`` / ``torch.save`` /
``safetensors`` would write for the real model, only with a few small layers, and returns the dir.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
RAVDESS = SHARED / "datasets" / "ravdess_speech_16k"
#: A real speech clip (test split, angry, 2.39 s, 16 kHz FLAC).
SPEECH_CLIP = RAVDESS / "Actor_19" / "03-01-05-01-01-01-19.flac"

_CONV = dict(
    conv_dim=(16, 16),
    conv_kernel=(10, 3),
    conv_stride=(5, 2),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
)
_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


TINY_WAV2VEC2 = dict(
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(32, 32),
    conv_stride=(5, 4),
    conv_kernel=(10, 4),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
)


def make_wav2vec2_encoder(out, classifier: bool = False, normalize: bool = True, seed: int = 0):
    """A tiny random wav2vec2 encoder (or sequence classifier) saved to ``out``."""
    import torch  # lazy: torch loads in seconds
    from transformers import (  # lazy: as in the other builders
        Wav2Vec2Config,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForSequenceClassification,
        Wav2Vec2Model,
    )

    torch.manual_seed(seed)
    cfg = Wav2Vec2Config(**TINY_WAV2VEC2, num_labels=4)
    model = Wav2Vec2ForSequenceClassification(cfg) if classifier else Wav2Vec2Model(cfg)
    model.save_pretrained(out)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=normalize).save_pretrained(out)
    return str(out)


def _seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def _sharpen(model, factor: float = 200.0):
    """Scale the output layer: tiny random models are otherwise uniform to 3 decimals, and a
    test could not tell one window (or one batch position) from another."""
    import torch

    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(factor)
    return model


def make_wav2vec2_classifier(out: Path, layer_norm: bool = True) -> Path:
    """Wav2Vec2ForSequenceClassification with IEMOCAP-style abbreviated labels."""
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForSequenceClassification,
    )

    _seed(1)
    labels = ["ang", "hap", "neu", "sad"]
    cfg = Wav2Vec2Config(
        **_TINY,
        **_CONV,
        classifier_proj_size=16,
        num_labels=4,
        id2label=dict(enumerate(labels)),
        label2id={v: k for k, v in enumerate(labels)},
        feat_extract_norm="layer" if layer_norm else "group",
        do_stable_layer_norm=layer_norm,
    )
    _sharpen(Wav2Vec2ForSequenceClassification(cfg)).save_pretrained(out)
    Wav2Vec2FeatureExtractor(
        sampling_rate=16000, do_normalize=True, return_attention_mask=layer_norm
    ).save_pretrained(out)
    return out


def make_hubert_classifier(out: Path) -> Path:
    """HubertForSequenceClassification with full-word, mixed-case labels."""
    from transformers import HubertConfig, HubertForSequenceClassification, Wav2Vec2FeatureExtractor

    _seed(2)
    labels = ["Angry", "Calm", "Fearful", "exc"]
    cfg = HubertConfig(
        **_TINY,
        **_CONV,
        classifier_proj_size=16,
        num_labels=4,
        id2label=dict(enumerate(labels)),
        label2id={v: k for k, v in enumerate(labels)},
    )
    _sharpen(HubertForSequenceClassification(cfg)).save_pretrained(out)
    Wav2Vec2FeatureExtractor(
        sampling_rate=16000, do_normalize=False, return_attention_mask=False
    ).save_pretrained(out)
    return out


def make_ast_classifier(out: Path) -> Path:
    """ASTForAudioClassification with a matching ASTFeatureExtractor (64 mel bins, 1.28 s)."""
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    _seed(3)
    labels = ["negative", "neutral", "positive"]
    cfg = ASTConfig(
        **_TINY,
        patch_size=16,
        frequency_stride=16,
        time_stride=16,
        max_length=128,
        num_mel_bins=64,
        num_labels=3,
        id2label=dict(enumerate(labels)),
        label2id={v: k for k, v in enumerate(labels)},
    )
    _sharpen(ASTForAudioClassification(cfg), 20.0).save_pretrained(out)
    ASTFeatureExtractor(num_mel_bins=64, max_length=128, sampling_rate=16000).save_pretrained(out)
    return out


def make_vit_va(out: Path, prefix: str = "") -> Path:
    """ViT config.json + a .pth state dict of ViTModel + regression head."""
    import torch
    from emotion_monitor.models.adapters.vit_va import build_module
    from transformers import ViTConfig

    _seed(4)
    cfg = ViTConfig(**_TINY, image_size=224, patch_size=32, num_channels=3)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(out)
    module = build_module(cfg)
    # Random heads saturate tanh rarely; scale the last layer so outputs spread over (-1, 1).
    with torch.no_grad():
        module.head[8].weight.mul_(20)
    state = {prefix + k: v for k, v in module.state_dict().items()}
    torch.save(state, out / "vit_va.pth")
    return out


def make_pooled(out: Path, scaler_format: str = "json") -> Path:
    """pooled_config.json + model.safetensors + scaler + a tiny wav2vec2 checkpoint dir."""
    import torch
    from emotion_monitor.models.adapters.pooled import build_classifier
    from safetensors.torch import save_file
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    _seed(5)
    out.mkdir(parents=True, exist_ok=True)
    Wav2Vec2Model(Wav2Vec2Config(**_TINY, **_CONV)).save_pretrained(out / "w2v")
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True).save_pretrained(out / "w2v")
    cfg = {
        "wav2vec2": "w2v",
        "layers": [0, 1, 2],
        "combine": "concat",
        "scaler": f"scaler.{scaler_format}",
        "patch_size": 16,
        "d_model": 32,
        "num_heads": 2,
        "num_layers": 2,
        "dim_feedforward": 64,
        "dropout": 0.1,
        "activation": "gelu",
        "labels": ["negative", "neutral", "positive"],
    }
    dim = 32 * 3
    clf = build_classifier(cfg, dim)
    with torch.no_grad():  # zeros by default; random values make the test see them
        clf.cls_token.normal_()
        clf.pos_embed.normal_()
    save_file({k: v.contiguous() for k, v in clf.state_dict().items()}, out / "model.safetensors")
    rng = np.random.default_rng(5)
    mean = rng.normal(size=dim).astype(np.float32) * 0.1
    scale = rng.uniform(0.5, 2.0, size=dim).astype(np.float32)
    if scaler_format == "json":
        (out / "scaler.json").write_text(
            json.dumps({"mean": mean.tolist(), "scale": scale.tolist()})
        )
    elif scaler_format == "safetensors":
        from safetensors.numpy import save_file as save_np

        save_np({"mean": mean, "scale": scale}, str(out / "scaler.safetensors"))
    else:  # a pickle-format file we must refuse without reading it
        (out / f"scaler.{scaler_format}").write_bytes(b"\x80\x04not really a pickle")
    (out / "pooled_config.json").write_text(json.dumps(cfg, indent=2))
    return out


BUILDERS = {
    "wav2vec2": make_wav2vec2_classifier,
    "wav2vec2-group": lambda out: make_wav2vec2_classifier(out, layer_norm=False),
    "hubert": make_hubert_classifier,
    "ast": make_ast_classifier,
    "vit-va": make_vit_va,
    "pooled": make_pooled,
}

#: Labels each builder's checkpoint must come out with (after normalisation).
EXPECTED_LABELS = {
    "wav2vec2": ("angry", "happy", "neutral", "sad"),
    "wav2vec2-group": ("angry", "happy", "neutral", "sad"),
    "hubert": ("angry", "calm", "fear", "exc"),
    "ast": ("negative", "neutral", "positive"),
    "vit-va": (),
    "pooled": ("negative", "neutral", "positive"),
}


@pytest.fixture(scope="session")
def published(tmp_path_factory):
    """``published(kind) -> Path``: build each tiny checkpoint once per test session."""
    root = tmp_path_factory.mktemp("published")
    cache: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in cache:
            cache[kind] = BUILDERS[kind](root / kind)
        return cache[kind]

    return get


@pytest.fixture(scope="session")
def speech() -> np.ndarray:
    """The real speech clip as 16 kHz float32."""
    import soundfile as sf

    if not SPEECH_CLIP.exists():
        pytest.skip(f"shared dataset missing: {SPEECH_CLIP}")
    x, rate = sf.read(str(SPEECH_CLIP), dtype="float32")
    assert rate == 16000
    return x
