"""wav2vec2-family encoders loaded from tiny random checkpoints through the real loading code."""

from __future__ import annotations

import numpy as np
import pytest
from emotion_monitor.models.base import ModelError
from emotion_monitor.models.encoders.pooling import pool_states
from emotion_monitor.models.encoders.wav2vec2 import Wav2Vec2Embedder, weighted_layer_sum
from published_fixtures import make_wav2vec2_encoder as make_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("w2v") / "base")


def test_loads_and_pools_selected_layers(checkpoint):
    emb = Wav2Vec2Embedder(checkpoint, layers=[0, 2, 3])
    assert emb.normalise and emb.dim == 32 and emb.feature_dim == 2 * 32 * 3
    rng = np.random.default_rng(0)
    windows = [
        rng.standard_normal(16000).astype(np.float32),
        rng.standard_normal(24000).astype(np.float32),
    ]
    feats = emb.embed(windows)
    assert feats.shape == (2, 192) and np.isfinite(feats).all()
    # the pooled block of layer 2 is the mean/std of hidden_states[2]
    states = emb.hidden_states(windows[0][None])
    assert len(states) == 4
    expect = pool_states(states, [2]).numpy()[0]
    assert np.allclose(feats[0, 64:128], expect, atol=1e-5)
    # lengths are grouped, not padded: the second window alone gives the same features
    assert np.allclose(emb.embed(windows[1:])[0], feats[1], atol=1e-5)
    mix = weighted_layer_sum(states, [0.0, 0.0, 1.0, 0.0])
    assert mix.shape == states[0].shape


def test_classifier_checkpoint_gives_its_encoder(tmp_path):
    path = make_checkpoint(tmp_path / "cls", classifier=True, normalize=False)
    emb = Wav2Vec2Embedder(path)
    assert not emb.normalise
    assert emb.layers == [0, 1, 2, 3]
    assert emb.embed([np.zeros(8000, np.float32)]).shape == (1, 2 * 32 * 4)


def test_errors_name_the_problem(checkpoint, tmp_path):
    with pytest.raises(ModelError, match=r"layer\(s\) \[7\] out of range"):
        Wav2Vec2Embedder(checkpoint, layers=[7])
    with pytest.raises(ModelError, match="not-a-real/checkpoint"):
        Wav2Vec2Embedder("not-a-real/checkpoint")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match=str(empty)):
        Wav2Vec2Embedder(str(empty))


@pytest.mark.parametrize("classifier", [False, True], ids=["encoder", "classifier"])
@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("drop", r"weights lack 1 parameters .*encoder\.layers\.1\.attention\.k_proj\.weight"),
        ("reshape", r"k_proj\.weight: file \[32, 16\], config \[32, 32\]"),
    ],
)
def test_damaged_checkpoint_is_refused(tmp_path, classifier, damage, message):
    """transformers used to fill a missing tensor with random values and only log it (and raise
    a bare RuntimeError on a wrongly shaped one): the encoder would embed noise."""
    from safetensors.torch import load_file, save_file

    path = make_checkpoint(tmp_path / "w2v", classifier=classifier)
    weights = tmp_path / "w2v" / "model.safetensors"
    tensors = load_file(weights)
    key = next(k for k in tensors if k.endswith("encoder.layers.1.attention.k_proj.weight"))
    if damage == "drop":
        del tensors[key]
    else:
        tensors[key] = tensors[key][:, :16].contiguous()
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(ModelError, match=message) as info:
        Wav2Vec2Embedder(path)
    assert str(info.value).startswith(f"{path} (model.safetensors): the wav2vec2 encoder weights")


def test_train_on_a_wav2vec2_checkpoint_and_serve(checkpoint, tmp_path):
    import csv

    from conftest import RAVDESS, ravdess_rows
    from emotion_monitor.models.heads_model import load_model_dir
    from emotion_monitor.streamer.cli import main as cli

    rows = [r for r in ravdess_rows("train") if r["speaker"] == "Actor_03"][::4]
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "speaker", "emotion", "intensity"])
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in w.fieldnames})
    out = tmp_path / "heads"
    argv = [
        "train",
        "--manifest",
        str(manifest),
        "--root",
        str(RAVDESS),
        "--encoder",
        checkpoint,
        "--augment",
        "clean",
        "--layers",
        "1,3",
        "--classifier",
        "logistic",
        "--C",
        "1",
        "--alpha",
        "1",
        "--out",
        str(out),
        "--no-cache",
    ]
    assert cli(argv) == 0
    model = load_model_dir(out, device="cpu")
    assert model.describe()["encoder"] == checkpoint
    pred = model.predict([np.zeros(16000, np.float32), np.ones(20000, np.float32) * 0.1])
    assert len(pred) == 2 and abs(sum(pred[0].classes.values()) - 1) < 1e-4
