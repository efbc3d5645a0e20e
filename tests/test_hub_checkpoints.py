"""Hub ids (``hf:org/name``, the wav2vec2 encoder) resolved through the Hugging Face cache.

No hub is reachable here or in CI, so a tiny random checkpoint is placed in a temporary cache in
the hub's own layout (``models--org--name/refs/main`` -> ``snapshots/<commit>/``), and "the hub"
is an address where nothing listens, which refuses at once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from emotion_monitor.models import ModelError, load_model
from emotion_monitor.models.encoders.wav2vec2 import Wav2Vec2Embedder
from emotion_monitor.models.hub import resolve_checkpoint
from huggingface_hub import constants
from published_fixtures import make_wav2vec2_classifier, make_wav2vec2_encoder

NOWHERE = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def put_in_cache(cache: Path, repo_id: str, checkpoint: Path, commit: str = COMMIT) -> None:
    """Lay ``checkpoint`` out as huggingface_hub caches a download of ``repo_id`` at ``main``."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(checkpoint, repo / "snapshots" / commit)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny classifier and a tiny encoder, each saved as a plain directory."""
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        "classifier": make_wav2vec2_classifier(root / "classifier"),
        "encoder": Path(make_wav2vec2_encoder(root / "encoder")),
    }


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty temporary cache, offline; huggingface_hub reads its environment at import, so its
    constants are patched (a subprocess test below checks the environment variables themselves)."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "ENDPOINT", NOWHERE)  # never the real hub, whatever happens
    return cache


def windows() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 16000, 24000)]


def test_offline_and_not_cached_says_so_with_the_environment_variables(tmp_path):
    code = (
        "from emotion_monitor.models import ModelError, load_model\n"
        "from emotion_monitor.models.encoders.wav2vec2 import Wav2Vec2Embedder\n"
        "for load in (lambda: load_model('hf:some-org/some-model', device='cpu'),\n"
        "             lambda: Wav2Vec2Embedder('some-org/some-encoder')):\n"
        "    try:\n"
        "        load()\n"
        "    except ModelError as exc:\n"
        "        print(exc)\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(tmp_path),
        "HF_ENDPOINT": NOWHERE,
    }
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    lines = out.stdout.splitlines()
    assert len(lines) == 2, out.stdout + out.stderr
    for line, repo_id in zip(lines, ["some-org/some-model", "some-org/some-encoder"], strict=True):
        assert line.startswith(f"{repo_id}: not in the local Hugging Face cache ({tmp_path})")
        assert "HF_HUB_OFFLINE is set" in line
        assert "run once where the hub is reachable" in line and "local directory" in line


def test_cached_hub_ids_load_offline_like_their_directories(hub, checkpoints):
    put_in_cache(hub, "org/emotion-classifier", checkpoints["classifier"])
    put_in_cache(hub, "org/tiny-encoder", checkpoints["encoder"])
    snapshot = hub / "models--org--emotion-classifier" / "snapshots" / COMMIT
    assert resolve_checkpoint("org/emotion-classifier") == snapshot
    assert resolve_checkpoint(f"org/emotion-classifier@{COMMIT}") == snapshot

    by_id = load_model("hf:org/emotion-classifier", device="cpu").predict(windows())
    by_dir = load_model("hf:" + str(checkpoints["classifier"]), device="cpu").predict(windows())
    for a, b in zip(by_id, by_dir, strict=True):
        assert a.classes.keys() == b.classes.keys()
        np.testing.assert_allclose(list(a.classes.values()), list(b.classes.values()), atol=1e-6)

    by_id = Wav2Vec2Embedder("org/tiny-encoder", layers=[0, 2]).embed(windows())
    by_dir = Wav2Vec2Embedder(str(checkpoints["encoder"]), layers=[0, 2]).embed(windows())
    np.testing.assert_allclose(by_id, by_dir, atol=1e-6)


def test_offline_error_names_id_cache_and_flag(hub):
    for load in (
        lambda: load_model("hf:some-org/some-model", device="cpu"),
        lambda: Wav2Vec2Embedder("some-org/some-model"),
    ):
        with pytest.raises(ModelError) as caught:
            load()
        message = str(caught.value)
        assert message.startswith(
            f"some-org/some-model: not in the local Hugging Face cache ({hub})"
        )
        assert "HF_HUB_OFFLINE is set" in message


def test_unreachable_hub_fails_fast_unless_cached(hub, checkpoints, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(ModelError, match=r"the hub could not be reached \(.*refused") as caught:
        load_model("hf:some-org/some-model", device="cpu")
    assert f"not in the local Hugging Face cache ({hub})" in str(caught.value)
    # A cached snapshot is used when the hub cannot be reached, as transformers does.
    put_in_cache(hub, "org/emotion-classifier", checkpoints["classifier"])
    assert load_model("hf:org/emotion-classifier", device="cpu").labels


def test_pytorch_bin_only_checkpoints_resolve(hub, tmp_path):
    bin_only = tmp_path / "bin-only"
    bin_only.mkdir()
    (bin_only / "config.json").write_text(json.dumps({"model_type": "wav2vec2"}))
    (bin_only / "pytorch_model.bin").write_bytes(b"")
    put_in_cache(hub, "org/old", bin_only)
    assert (resolve_checkpoint("org/old") / "pytorch_model.bin").exists()


def test_paths_and_malformed_ids_are_not_looked_up(hub, tmp_path):
    with pytest.raises(ModelError, match="no such checkpoint folder"):
        resolve_checkpoint(str(tmp_path / "absent"), "checkpoint folder")
    with pytest.raises(ModelError, match="not a local directory and not a Hugging Face hub id"):
        resolve_checkpoint("not a valid/hub id!")
    assert resolve_checkpoint(str(tmp_path)) == tmp_path
