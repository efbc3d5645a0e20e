"""Each adapter exported to ONNX and served by ONNX Runtime matches its torch version.

Tolerance: 1e-4 absolute on class probabilities and on valence/arousal (float32 kernels differ
between torch and ORT; measured differences on these checkpoints are below 1e-6).
"""

from __future__ import annotations

import json

import pytest
from emotion_monitor.models import ModelError, load_model
from emotion_monitor.models.adapters.export import export_adapter
from emotion_monitor.models.adapters.onnx_model import OnnxAdapterModel
from emotion_monitor.streamer import cli
from published_fixtures import EXPECTED_LABELS, SPEECH_CLIP, make_wav2vec2_classifier

#: The session fixtures ``published`` and ``speech`` live in published_fixtures.py.
pytest_plugins = ["published_fixtures"]

TOL = 1e-4


@pytest.fixture(scope="module")
def exported(published, tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    cache = {}

    def get(kind):
        if kind not in cache:
            cache[kind] = export_adapter(str(published(kind)), root / kind)
        return cache[kind]

    return get


@pytest.mark.parametrize("kind", list(EXPECTED_LABELS))
def test_onnx_parity(kind, published, exported, speech):
    out = exported(kind)
    meta = json.loads((out / "onnx_model.json").read_text())
    assert meta["format"] == 1 and meta["export_max_abs_diff"] < TOL
    assert meta["labels"] == list(EXPECTED_LABELS[kind])
    onnx_model = load_model(str(out), device="cpu")  # detected from onnx_model.json
    assert isinstance(onnx_model, OnnxAdapterModel)
    assert onnx_model.device == "CPUExecutionProvider"
    assert onnx_model.labels == EXPECTED_LABELS[kind]
    torch_model = load_model(str(published(kind)), device="cpu")
    # Other lengths than the export example: dynamic axes really are dynamic.
    wins = [speech[:32000], speech[6000:38000], speech[-20000:], speech[:8000]]
    for p, q in zip(torch_model.predict(wins), onnx_model.predict(wins), strict=True):
        if kind == "vit-va":
            assert q.classes is None
            assert abs(p.valence - q.valence) < TOL and abs(p.arousal - q.arousal) < TOL
        else:
            assert list(q.classes) == list(p.classes)
            assert max(abs(p.classes[k] - q.classes[k]) for k in p.classes) < TOL


def test_analyze_through_onnx(exported, tmp_path):
    out = tmp_path / "r.json"
    rc = cli.main(
        [
            "analyze",
            str(SPEECH_CLIP),
            "--model",
            "onnx:" + str(exported("vit-va")),
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    report = json.loads(out.read_text())
    assert (
        report["model"]["runtime"] == "onnxruntime"
        and report["summary"]["mean_valence"] is not None
    )


def test_bad_onnx_dir(tmp_path):
    (tmp_path / "onnx_model.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(ModelError, match="unsupported format 99"):
        load_model(str(tmp_path), device="cpu")


@pytest.mark.parametrize(
    ("kind", "edit", "message"),
    [
        ("wav2vec2", {"labels": ["angry", "happy", "neutral"]}, "outputs 4 values.*need 3"),
        ("wav2vec2", {"input": "pixel_values"}, "input 'pixel_values' is not in the graph"),
        ("vit-va", {"image_size": 96}, r"image_size 96 but the graph takes \[224, 224\]"),
    ],
    ids=["label-count", "input-name", "image-size"],
)
def test_onnx_meta_must_fit_graph(tmp_path, exported, kind, edit, message):
    """A hand-edited onnx_model.json is refused at load, not by ORT at the first window."""
    import shutil

    root = shutil.copytree(exported(kind), tmp_path / "m")
    meta = json.loads((root / "onnx_model.json").read_text())
    if "image_size" in edit:
        meta["preprocess"].update(edit)
    else:
        meta.update(edit)
    (root / "onnx_model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=message):
        load_model("onnx:" + str(root), device="cpu")


def test_export_of_an_export_says_so(exported, tmp_path):
    with pytest.raises(ModelError, match="already exported"):
        export_adapter(str(exported("wav2vec2")), tmp_path / "again")


def test_export_cli_says_what_it_wrote(published, tmp_path, capsys):
    out = tmp_path / "ast-onnx"
    # --no-int8 changes nothing here: a published model is exported in fp32 only
    assert cli.main(["export", "--model", str(published("ast")), "--out", str(out)]) == 0
    diff = json.loads((out / "onnx_model.json").read_text())["export_max_abs_diff"]
    printed = capsys.readouterr().out.splitlines()
    names = ["model.onnx", "onnx_model.json", "preprocessor_config.json"]
    assert [line.split(" (")[0] for line in printed[:3]] == [f"wrote {out / n}" for n in names]
    assert printed[1].endswith(f"({(out / 'onnx_model.json').stat().st_size / 1e3:.1f} kB)")
    assert printed[3:] == [
        f"{out / 'model.onnx'}: fp32, max |ORT - torch| = {diff:.2e} on the model's outputs "
        "(tolerance 0.0001)"
    ]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)  # no int8 variant
    assert load_model(str(out), device="cpu").labels == EXPECTED_LABELS["ast"]


def test_export_cli_fails_beyond_the_tolerance(tmp_path, capsys):
    """Parity was recorded in onnx_model.json but never enforced: a bad export passed."""
    import torch
    from transformers import Wav2Vec2ForSequenceClassification

    source = make_wav2vec2_classifier(tmp_path / "w2v")
    model = Wav2Vec2ForSequenceClassification.from_pretrained(source)
    with torch.no_grad():
        model.classifier.weight.mul_(1e6)
    model.save_pretrained(source)
    capsys.readouterr()  # transformers' progress bars
    # logits of this size: float32 rounding alone makes torch and ORT differ by far more than 1e-4
    out = tmp_path / "onnx"
    assert cli.main(["export", "--model", str(source), "--out", str(out)]) == 1
    err = capsys.readouterr().err.splitlines()[-1]  # after the loader's progress bar
    assert err.startswith(f"error: {out / 'model.onnx'}: max |ORT - torch| = ")
    assert "exceeds the tolerance 0.0001; the export is not usable" in err
    assert not (out / "onnx_model.json").exists()
    with pytest.raises(ModelError, match="onnx_model.json"):
        load_model("onnx:" + str(out), device="cpu")
