"""The Whisper encoder as an ONNX graph: export (log-mel -> pooled features), int8 quantisation,
the torch-vs-ORT parity check, and the user cache where encoders built at first use live.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from emotion_monitor.models.features import log_mel
from emotion_monitor.models.runtime import create_session


def export_encoder(pooled, path: str | Path) -> Path:
    """Export a :class:`PooledWhisper` (log-mel -> pooled features) to ONNX."""
    import torch  # lazy: torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript exporter is deprecated but is the one that honours dynamic_axes
        warnings.simplefilter("ignore")
        torch.onnx.export(
            pooled.eval(),
            (torch.zeros(1, 80, 200),),
            str(path),
            dynamo=False,
            input_names=["mel"],
            output_names=["features"],
            dynamic_axes={"mel": {0: "batch", 2: "frames"}, "features": {0: "batch"}},
            opset_version=17,
        )
    return path


def cache_dir() -> Path:
    """Where encoders built at first use live: $XDG_CACHE_HOME/emotion-monitor (~/.cache/...)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "emotion-monitor"


def cached_encoder_onnx(encoder: str, layers, backend: str) -> Path:
    """Export (and for "ort-int8" quantise) the Whisper encoder spec ``encoder`` pooled over
    ``layers`` (see ``encoder_parts``) into the user cache once; later calls return the file."""
    from emotion_monitor.models.encoders.whisper import (  # lazy: torch
        encoder_parts,
        load_pooled_whisper,
    )

    tag = "+".join(f"{n}_L{'-'.join(map(str, ls))}" for n, ls in encoder_parts(encoder, layers))
    folder = cache_dir() / tag
    target = folder / ("encoder_int8.onnx" if backend == "ort-int8" else "encoder_fp32.onnx")
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    fp32 = folder / "encoder_fp32.onnx"
    if not fp32.exists():
        # write under a temporary name so a crash never leaves a half-written model behind
        tmp = folder / "encoder_fp32.tmp.onnx"
        export_encoder(load_pooled_whisper(encoder, layers), tmp)
        tmp.replace(fp32)
    if backend == "ort-int8":
        tmp = folder / "encoder_int8.tmp.onnx"
        quantize_int8(fp32, tmp)
        tmp.replace(target)
    return target


def quantize_int8(src: str | Path, dst: str | Path) -> Path:
    """Dynamic int8 quantisation of the MatMul/Gemm weights (activations stay float)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic  # lazy: onnxruntime

    quantize_dynamic(
        str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"]
    )
    return Path(dst)


def encoder_parity(pooled, onnx_path: str | Path, audio: np.ndarray) -> float:
    """Max absolute difference between a :class:`PooledWhisper` in torch and its ONNX Runtime
    export on ``audio`` (batch, samples)."""
    import torch  # lazy: torch

    mel = log_mel(audio)
    with torch.no_grad():
        ref = pooled(mel).numpy()
    sess, _ = create_session(onnx_path, "cpu")
    got = sess.run(None, {"mel": mel.numpy()})[0]
    return float(np.abs(got - ref).max())
