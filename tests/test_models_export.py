"""``emotion-monitor export`` of the default model: files, parity with torch (``--model SPEC``
exports: tests/test_adapter_export.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from emotion_monitor.models.heads_model import DEFAULT_DIR, load_model_dir
from emotion_monitor.streamer.cli import main as cli


def test_export_default_fp32_parity(tmp_path, capsys):
    out = tmp_path / "export"
    assert cli(["export", "--out", str(out), "--no-int8"]) == 0
    report = json.loads((out / "export_report.json").read_text())
    diff = report["encoder_fp32.onnx"]["max_abs_diff_vs_torch"]
    assert diff < 1e-3
    for name in ("encoder_fp32.onnx", "heads.onnx", "config.json"):
        assert (out / name).exists()
    assert not (out / "encoder_int8.onnx").exists()  # --no-int8
    # it says what it wrote, with sizes, and the parity it measured
    printed = capsys.readouterr().out.splitlines()
    assert (
        f"{out / 'encoder_fp32.onnx'}: max |ORT - torch| = {diff:.2e} (tolerance 0.001)" in printed
    )
    wrote = [line for line in printed if line.startswith("wrote ")]
    names = ["encoder_fp32.onnx", "heads.onnx", "config.json", "MODEL_CARD.md"]
    names.append("export_report.json")
    assert [line.split(" (")[0] for line in wrote] == [f"wrote {out / n}" for n in names]
    assert wrote[0].endswith(f"({(out / 'encoder_fp32.onnx').stat().st_size / 1e6:.1f} MB)")
    # the exported folder serves predictions equal to the torch encoder's, within tolerance
    rng = np.random.default_rng(3)
    windows = [(0.1 * rng.standard_normal(32000)).astype(np.float32)]
    onnx = load_model_dir(out, device="cpu", backend="ort-fp32").predict(windows)[0]
    torch_ = load_model_dir(DEFAULT_DIR, device="cpu", backend="torch").predict(windows)[0]
    assert abs(onnx.arousal - torch_.arousal) < 1e-3
    assert max(abs(onnx.classes[k] - torch_.classes[k]) for k in onnx.classes) < 1e-3


@pytest.mark.parametrize("backend", ["nope"])
def test_unknown_backend(backend):
    from emotion_monitor.models.base import ModelError

    with pytest.raises(ModelError, match="unknown encoder backend"):
        load_model_dir(DEFAULT_DIR, device="cpu", backend=backend)
