"""The shipped default model, the ONNX runtime helpers and their error paths."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_clip, ravdess_clip
from emotion_monitor.models.base import EMOTIONS, ModelError
from emotion_monitor.models.heads_model import DEFAULT_DIR, read_config
from emotion_monitor.models.runtime import check_input_size, create_session


def test_default_model_interface(default_model):
    assert default_model.labels == EMOTIONS[:8]
    assert default_model.has_valence_arousal
    assert default_model.device == "CPUExecutionProvider"
    assert default_model.predict([]) == []


def test_default_model_real_clips(default_model):
    angry = load_clip(ravdess_clip("angry", "strong"))
    sad = load_clip(ravdess_clip("sad", "normal"))
    calm = load_clip(ravdess_clip("calm", "normal"))
    preds = default_model.predict([angry, sad, calm, angry[:32000]])
    for p in preds:
        assert set(p.classes) == set(EMOTIONS[:8])
        assert abs(sum(p.classes.values()) - 1) < 1e-4
        assert -1 <= p.valence <= 1 and -1 <= p.arousal <= 1
    a, s, c, a2 = preds
    assert a.arousal > s.arousal and a.arousal > c.arousal
    assert a.classes["angry"] > a.classes["sad"]
    # stateless and batch-independent: a window alone gets the same answer as inside a batch of
    # equal-length windows (dynamic int8 quantisation would break this if windows shared a run)
    batch = [angry[:32000], sad[:32000], calm[:32000]]
    together = default_model.predict(batch)
    for w, p in zip(batch, together, strict=True):
        alone = default_model.predict([w])[0]
        assert abs(alone.arousal - p.arousal) < 1e-5
        assert max(abs(alone.classes[k] - p.classes[k]) for k in p.classes) < 1e-5
    assert abs(together[0].arousal - a2.arousal) < 1e-5


def test_default_model_odd_inputs(default_model):
    tiny = default_model.predict([np.zeros(100, np.float32), np.full(8000, np.nan, np.float32)])
    assert len(tiny) == 2 and all(p.classes for p in tiny)
    with pytest.raises(ModelError, match="1-D"):
        default_model.predict([np.zeros((2, 16000), np.float32)])
    with pytest.raises(ModelError, match="longer than the encoder's 30 s"):
        default_model.predict([np.zeros(31 * 16000, np.float32)])


def test_corrupt_onnx_names_file(tmp_path):
    bad = tmp_path / "heads.onnx"
    bad.write_bytes(b"this is not a protobuf")
    with pytest.raises(ModelError, match="heads.onnx.*not a valid ONNX"):
        create_session(bad, "cpu")
    with pytest.raises(ModelError, match="not found"):
        create_session(tmp_path / "missing.onnx", "cpu")


def test_head_size_mismatch_is_explained():
    config = read_config(DEFAULT_DIR)
    session, provider = create_session(DEFAULT_DIR / config["heads"], "cpu")
    assert provider == "CPUExecutionProvider"
    check_input_size(session, config["feature_dim"], "heads.onnx")
    with pytest.raises(ModelError, match="expects .* input features but the encoder produces 10"):
        check_input_size(session, 10, "heads.onnx")


def test_cuda_request_without_cuda_is_an_error():
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelError, match="CUDAExecutionProvider"):
        create_session(DEFAULT_DIR / "heads.onnx", "cuda")


def _copy_of_default(folder, **config_changes):
    """The shipped model folder with its config changed (the large encoder file is linked)."""
    import json

    folder.mkdir()
    config = {**read_config(DEFAULT_DIR), **config_changes}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "heads.onnx").write_bytes((DEFAULT_DIR / "heads.onnx").read_bytes())
    (folder / "encoder_int8.onnx").symlink_to(DEFAULT_DIR / "encoder_int8.onnx")
    return folder


def test_model_folder_is_checked_when_it_loads(tmp_path):
    from emotion_monitor.models.heads_model import load_model_dir
    from emotion_monitor.models.registry import load_model

    labels = list(read_config(DEFAULT_DIR)["labels"])
    short = _copy_of_default(tmp_path / "short", labels=labels[:7])
    with pytest.raises(ModelError, match="sizes \\[8, 2\\].*lists 7 labels"):
        load_model(str(short), device="cpu")
    no_heads = _copy_of_default(tmp_path / "no_heads")
    (no_heads / "heads.onnx").unlink()
    with pytest.raises(ModelError, match="heads file .*heads.onnx: missing"):
        load_model(str(no_heads), device="cpu")
    stringly = _copy_of_default(tmp_path / "stringly", labels="angry")
    with pytest.raises(ModelError, match="labels must be a non-empty list of strings"):
        load_model(str(stringly), device="cpu")
    wrong_dim = _copy_of_default(tmp_path / "wrong_dim", feature_dim=999)
    with pytest.raises(ModelError, match="feature_dim is 999 but encoder .* produces 5376"):
        load_model(str(wrong_dim), device="cpu")
    # layers that do not give the config's feature size fail at load, not on the first window
    fewer = _copy_of_default(tmp_path / "fewer", layers=[[2, 3], [1, 2, 3]])
    with pytest.raises(ModelError, match="feature_dim is 5376 but .* produces 4352"):
        load_model_dir(fewer, device="cpu", backend="torch")


def test_model_spec_mistakes_are_explained(tmp_path):
    from emotion_monitor.models.registry import load_model

    with pytest.raises(ModelError, match="unknown model prefix 'nope:'.*heads:"):
        load_model("nope:x", device="cpu")
    # `export` of the default model writes a heads folder; 'onnx:' is for exported adapters
    exported = _copy_of_default(tmp_path / "exported")
    with pytest.raises(ModelError, match="no 'onnx:' prefix"):
        load_model(f"onnx:{exported}", device="cpu")
    # a trained folder loads by path or heads:, named by its path (not "default")
    assert load_model(f"heads:{exported}", device="cpu").name.startswith(f"heads:{exported} (")
    with pytest.raises(ModelError, match="'default' takes no location"):
        load_model(f"default:{exported}", device="cpu")
    with pytest.raises(ModelError, match="no such model directory"):
        load_model(str(tmp_path / "not-there"), device="cpu")
    with pytest.raises(ModelError, match="a file, not a model directory"):
        load_model(str(exported / "config.json"), device="cpu")
