"""Export an adapter for a published checkpoint to ONNX (``emotion-monitor export --model SPEC``).

Writes ``model.onnx`` (opset 17, dynamic batch and, for waveform models, dynamic length) and
``onnx_model.json`` (preprocessing, labels, outputs, the torch-vs-ORT difference measured at
export) so :mod:`emotion_monitor.models.adapters.onnx_model` serves it with identical preprocessing.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
from emotion_monitor.models.adapters.onnx_model import FORMAT_VERSION
from emotion_monitor.models.base import ModelError
from emotion_monitor.models.registry import load_model
from emotion_monitor.models.runtime import create_session

OPSET = 17


def export_adapter(spec: str, out_dir: str | Path) -> Path:
    """Export the adapter ``spec`` names into ``out_dir``; returns the directory.

    Raises ModelError for specs without an ONNX path (the default model has its own exporter).
    """
    import torch  # lazy: torch

    model = load_model(spec, device="cpu")
    if not hasattr(model, "export_plan"):
        raise ModelError(
            f"{spec}: {model.name} is not a torch adapter, so there is nothing to export here "
            "(an onnx: directory is already exported, a heads folder already holds ONNX heads; "
            "the default model is exported by `emotion-monitor export` without --model)"
        )
    plan = model.export_plan()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    example = torch.from_numpy(plan.example)
    with warnings.catch_warnings():
        # The TorchScript exporter warns about traced Python conditionals on shapes that are
        # constant for a given model; the parity check below is what guards correctness.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            plan.module,
            (example,),
            str(out / "model.onnx"),
            input_names=[plan.input_name],
            output_names=["output"],
            dynamic_axes=plan.dynamic_axes,
            opset_version=OPSET,
            dynamo=False,
        )
    if plan.save_extractor is not None:
        plan.save_extractor.save_pretrained(str(out))
    with torch.inference_mode():
        expected = plan.module(example).float().numpy()

    session, _ = create_session(out / "model.onnx", "cpu")
    got = session.run(None, {plan.input_name: plan.example})[0]
    meta = {
        "format": FORMAT_VERSION,
        **plan.meta,
        "source_spec": spec,
        "file": "model.onnx",
        "input": plan.input_name,
        "opset": OPSET,
        "export_max_abs_diff": float(np.max(np.abs(got - expected))),
    }
    (out / "onnx_model.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out
