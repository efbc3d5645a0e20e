"""The adapters for published checkpoints, on tiny random checkpoints in the real file formats."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from emotion_monitor.models import ModelError, load_model
from emotion_monitor.models.adapters.common import normalise_labels
from emotion_monitor.models.registry import parse_spec
from published_fixtures import EXPECTED_LABELS, make_pooled, make_vit_va

#: The session fixtures ``published`` and ``speech`` live in published_fixtures.py.
pytest_plugins = ["published_fixtures"]

KINDS = list(EXPECTED_LABELS)


def windows_of(x: np.ndarray) -> list[np.ndarray]:
    """Two equal 2 s windows and a shorter 1.5 s one, as the engine's tail window would be."""
    return [x[:32000], x[6000:38000], x[-24000:]]


def test_label_normalisation():
    assert normalise_labels(["ANG", "hap", "Neu", "sad", "exc", "Fearful"]) == (
        "angry",
        "happy",
        "neutral",
        "sad",
        "exc",
        "fear",
    )
    # A mapping that would collide is applied to neither label.
    assert normalise_labels(["hap", "Happy", "sur"]) == ("hap", "happy", "surprise")
    with pytest.raises(ModelError):
        normalise_labels(["A", "a"])


@pytest.mark.parametrize("kind", KINDS)
def test_load_and_predict(kind, published, speech):
    model = load_model(str(published(kind)), device="cpu")  # kind detected from the files
    assert model.labels == EXPECTED_LABELS[kind]
    assert "outputs" in model.describe()
    wins = windows_of(speech)
    preds = model.predict(wins)
    assert len(preds) == len(wins)
    for p in preds:
        if kind == "vit-va":
            assert p.classes is None
            assert -1 <= p.valence <= 1 and -1 <= p.arousal <= 1
        else:
            assert p.valence is None and p.arousal is None
            assert list(p.classes) == list(EXPECTED_LABELS[kind])
            assert sum(p.classes.values()) == pytest.approx(1.0, abs=1e-6)
            assert all(0 <= v <= 1 for v in p.classes.values())
    # The model looks at the audio: different windows give different outputs.
    assert preds[0] != preds[1]
    # Batching (mixed lengths included) does not change any window's prediction.
    for w, p in zip(wins, preds, strict=True):
        (alone,) = model.predict([w])
        if p.classes:
            for k in p.classes:
                assert alone.classes[k] == pytest.approx(p.classes[k], abs=1e-5)
        else:
            assert alone.valence == pytest.approx(p.valence, abs=1e-5)
            assert alone.arousal == pytest.approx(p.arousal, abs=1e-5)
    assert model.predict([]) == []


def test_spec_prefixes(published):
    assert parse_spec("hf:" + str(published("hubert")))[0] == "hf"
    assert parse_spec(str(published("vit-va")))[0] == "vit-va"
    assert parse_spec(str(published("pooled")))[0] == "pooled"
    assert parse_spec(str(published("ast")))[0] == "hf"


@pytest.mark.parametrize("suffix", ["pkl", "joblib"])
def test_pooled_refuses_pickled_scaler(tmp_path, suffix):
    make_pooled(tmp_path / "m", scaler_format=suffix)
    with pytest.raises(ModelError, match=r"pickled scalers are refused.*json\.dump.*scaler\.json"):
        load_model(str(tmp_path / "m"), device="cpu")


def test_pooled_scaler_formats_agree(tmp_path, published, speech):
    make_pooled(tmp_path / "st", scaler_format="safetensors")
    a = load_model(str(published("pooled")), device="cpu").predict([speech[:32000]])[0]
    b = load_model(str(tmp_path / "st"), device="cpu").predict([speech[:32000]])[0]
    for k in a.classes:
        assert b.classes[k] == pytest.approx(a.classes[k], abs=1e-6)


def test_pooled_config_mismatch(tmp_path):
    root = make_pooled(tmp_path / "m")
    cfg = json.loads((root / "pooled_config.json").read_text())
    cfg["layers"] = [0, 1]  # 64 features, but the scaler has 96
    (root / "pooled_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="scaler has 96 features"):
        load_model(str(root), device="cpu")


def test_vit_state_dict_variants(tmp_path, published, speech):
    plain = load_model(str(published("vit-va")), device="cpu").predict([speech[:32000]])[0]
    wrapped = make_vit_va(tmp_path / "dp", prefix="module.")  # saved from DataParallel
    p = load_model(str(wrapped), device="cpu").predict([speech[:32000]])[0]
    assert (p.valence, p.arousal) == pytest.approx((plain.valence, plain.arousal), abs=1e-6)

    import torch

    broken = tmp_path / "broken"
    make_vit_va(broken)
    state = torch.load(broken / "vit_va.pth", weights_only=True)
    del state["head.8.weight"]
    torch.save(state, broken / "vit_va.pth")
    with pytest.raises(ModelError, match="head.8.weight"):
        load_model("vit-va:" + str(broken), device="cpu")


def test_mel_filterbank_matches_slaney_reference():
    from emotion_monitor.models.adapters.vit_va import mel_filterbank
    from transformers.audio_utils import mel_filter_bank

    ours = mel_filterbank(22050, 2048, 128)
    ref = mel_filter_bank(
        num_frequency_bins=1025,
        num_mel_filters=128,
        min_frequency=0.0,
        max_frequency=11025.0,
        sampling_rate=22050,
        norm="slaney",
        mel_scale="slaney",
    )
    assert ours.shape == (128, 1025)
    np.testing.assert_allclose(ours, ref.T, rtol=1e-6, atol=1e-10)


def test_mel_image(speech):
    from emotion_monitor.models.adapters.vit_va import MEL_PARAMS, mel_image

    img = mel_image(speech[:32000])
    assert img.shape == (3, 224, 224) and img.dtype == np.float32
    mean = np.asarray(MEL_PARAMS["mean"])[:, None, None]
    std = np.asarray(MEL_PARAMS["std"])[:, None, None]
    grey = img * std + mean  # undo ImageNet normalisation: back to [0, 1], same in each channel
    np.testing.assert_allclose(grey[0], grey[1], atol=1e-5)
    np.testing.assert_allclose(grey[0], grey[2], atol=1e-5)
    assert grey.min() >= -1e-5 and grey.max() <= 1 + 1e-5
    assert grey.min() < 0.05 and grey.max() > 0.9  # min-max scaling spans the range
    # Speech has more energy in low than in the top mel bands (row 0 = lowest band).
    assert grey[0, :40].mean() > grey[0, -40:].mean()


def _truncate(path, keep: int = 5000) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _drop_tensors(path, prefix: str) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    save_file({k: v for k, v in state.items() if prefix not in k}, str(path), {"format": "pt"})


def _set_labels(root, labels) -> None:
    cfg = json.loads((root / "config.json").read_text())
    cfg["id2label"] = {str(i): lab for i, lab in enumerate(labels)}
    cfg["label2id"] = {lab: i for i, lab in enumerate(labels)}
    (root / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: _truncate(d / "model.safetensors"), r"model\.safetensors.*cannot load"),
        # transformers would initialise the missing head at random and serve noise
        (lambda d: _drop_tensors(d / "model.safetensors", "classifier."), "lack 2 param"),
        (
            lambda d: _set_labels(d, ["ang", "hap", "neu", "sad", "fru"]),
            r"classifier.*\[4\].*\[5\]",
        ),
        (lambda d: _set_labels(d, ["Happy", "happy", "neu", "sad"]), r"config\.json: duplicate"),
    ],
    ids=["truncated", "missing-head", "five-labels", "duplicate-labels"],
)
def test_hf_refuses_damaged_checkpoint(tmp_path, published, damage, message):
    root = shutil.copytree(published("wav2vec2"), tmp_path / "m")
    damage(root)
    with pytest.raises(ModelError, match=message):
        load_model("hf:" + str(root), device="cpu")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda d: shutil.rmtree(d / "w2v"),
            r"checkpoint directory .*w2v is missing",
        ),
        (lambda d: (d / "w2v" / "config.json").unlink(), r"w2v/config\.json: missing"),
        (lambda d: _truncate(d / "w2v" / "model.safetensors"), r"w2v.*cannot load the wav2vec2"),
        (
            lambda d: _drop_tensors(d / "w2v" / "model.safetensors", "encoder.layers.1."),
            "lack 16 param",
        ),
        (
            lambda d: (d / "scaler.json").write_text('{"mean": [1, 2], "scale": "x"}'),
            r"scaler\.json: 'mean' and 'scale' must be lists of numbers",
        ),
    ],
    ids=["no-wav2vec2", "no-wav2vec2-config", "truncated-wav2vec2", "partial-wav2vec2", "scaler"],
)
def test_pooled_refuses_damaged_checkpoint(tmp_path, damage, message):
    root = make_pooled(tmp_path / "m")
    damage(root)
    with pytest.raises(ModelError, match=message):
        load_model(str(root), device="cpu")


def test_vit_refuses_config_that_does_not_fit(tmp_path):
    root = make_vit_va(tmp_path / "m")
    _truncate(root / "vit_va.pth")
    with pytest.raises(ModelError, match=r"vit_va\.pth: cannot be read .*truncated"):
        load_model(str(root), device="cpu")

    root = make_vit_va(tmp_path / "n")
    cfg = json.loads((root / "config.json").read_text())
    (root / "config.json").write_text(json.dumps({**cfg, "hidden_size": 64}))
    with pytest.raises(
        ModelError, match=r"vit_va\.pth: does not fit .*config\.json.*size mismatch"
    ):
        load_model(str(root), device="cpu")
    # Without its config, ViTConfig would silently describe ViT-base.
    (root / "config.json").unlink()
    with pytest.raises(ModelError, match=r"config\.json: missing"):
        load_model("vit-va:" + str(root), device="cpu")


def test_spec_errors_name_the_problem(tmp_path, published):
    with pytest.raises(ModelError, match="give the model directory after 'vit-va:'"):
        load_model("vit-va:", device="cpu")
    # Written as a path: not offered as a hub id to download elsewhere.
    with pytest.raises(ModelError, match="no such model directory"):
        load_model("hf:" + str(tmp_path / "absent"), device="cpu")
    # A directory that is not an HF checkpoint (pooled_config.json, no model_type).
    with pytest.raises(ModelError, match="not a Hugging Face checkpoint directory"):
        load_model("hf:" + str(published("pooled")), device="cpu")
