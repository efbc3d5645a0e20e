"""``emotion-monitor export`` of the default model: files, parity with torch, delegation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from emotion_monitor.models.default_model import DEFAULT_DIR, load_model_dir
from emotion_monitor.streamer.cli import main as cli


def test_export_default_fp32_parity(tmp_path):
    out = tmp_path / "export"
    assert cli(["export", "--out", str(out), "--no-int8"]) == 0
    report = json.loads((out / "export_report.json").read_text())
    assert report["encoder_fp32.onnx"]["max_abs_diff_vs_torch"] < 1e-3
    for name in ("encoder_fp32.onnx", "heads.onnx", "config.json"):
        assert (out / name).exists()
    # the exported folder serves predictions equal to the torch encoder's, within tolerance
    rng = np.random.default_rng(3)
    windows = [(0.1 * rng.standard_normal(32000)).astype(np.float32)]
    onnx = load_model_dir(out, device="cpu", backend="ort-fp32").predict(windows)[0]
    torch_ = load_model_dir(DEFAULT_DIR, device="cpu", backend="torch").predict(windows)[0]
    assert abs(onnx.arousal - torch_.arousal) < 1e-3
    assert max(abs(onnx.classes[k] - torch_.classes[k]) for k in onnx.classes) < 1e-3


def test_export_other_specs_are_delegated(tmp_path, monkeypatch):
    import emotion_monitor.models.adapter_export as adapter_export

    seen = {}
    monkeypatch.setattr(
        adapter_export, "export_adapter", lambda spec, out: seen.update(spec=spec, out=out)
    )
    assert cli(["export", "--model", "hf:some/dir", "--out", str(tmp_path)]) == 0
    assert seen == {"spec": "hf:some/dir", "out": tmp_path}


@pytest.mark.parametrize("backend", ["nope"])
def test_unknown_backend(backend):
    from emotion_monitor.models.base import ModelError

    with pytest.raises(ModelError, match="unknown encoder backend"):
        load_model_dir(DEFAULT_DIR, device="cpu", backend=backend)
