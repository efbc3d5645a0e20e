"""ONNX Runtime sessions with an explicit, verified execution provider.

ORT silently falls back to the CPU when a requested provider cannot start, so the providers a
session actually got are read back from ``session.get_providers()`` and reported.
"""

from __future__ import annotations

from pathlib import Path

from emotion_monitor.models.base import ModelError, first_line


def wanted_providers(device: str) -> list[str]:
    """Providers to ask for: ``"cuda"`` / ``"auto"`` try CUDA first when this ORT build has it."""
    import onnxruntime as ort  # lazy: onnxruntime

    available = ort.get_available_providers()
    if device not in ("auto", "cpu", "cuda"):
        raise ModelError(f"unknown device {device!r}; use auto, cpu or cuda")
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise ModelError(
            "device 'cuda' requested but this onnxruntime has no CUDAExecutionProvider "
            f"(available: {', '.join(available)}); install onnxruntime-gpu instead of onnxruntime"
        )
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def create_session(path: str | Path, device: str = "auto", threads: int | None = None):
    """Open an ONNX model; returns ``(session, provider_actually_used)``.

    Raises :class:`ModelError` naming the file when it is missing or not a loadable ONNX model,
    and when ``device="cuda"`` was asked for but the session fell back to the CPU.
    """
    import onnxruntime as ort  # lazy: onnxruntime

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: ONNX file not found")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    providers = wanted_providers(device)
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as exc:  # ORT raises several exception types for bad files
        raise ModelError(f"{path}: not a valid ONNX model ({first_line(exc)})") from exc
    got = session.get_providers()
    used = got[0] if got else "unknown"
    if device == "cuda" and used != "CUDAExecutionProvider":
        raise ModelError(f"{path}: CUDAExecutionProvider requested but ORT fell back to {used}")
    return session, used


def check_input_size(session, expected: int, path: str | Path) -> None:
    """Fail clearly when an ONNX head's feature input does not fit the encoder's feature size."""
    shape = session.get_inputs()[0].shape
    size = shape[-1] if shape else None
    if isinstance(size, int) and size != expected:
        raise ModelError(
            f"{path}: head expects {size} input features but the encoder produces {expected} "
            "(were the heads trained with a different encoder or layer selection?)"
        )


def check_device(device: str) -> None:
    """ModelError unless ``device`` is one the loaders take: auto, cpu, cuda (or cuda:N)."""
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise ModelError(f"unknown device {device!r}; use auto, cpu or cuda")


def resolve_device(device: str) -> str:
    """The torch device for an inference-device name: ``"auto"`` -> ``"cuda"`` when torch sees a
    GPU, else ``"cpu"``; ``"cpu"`` without importing torch; ``"cuda"`` (or ``"cuda:N"``) checked."""
    check_device(device)
    if device == "cpu":
        return "cpu"
    import torch  # lazy: torch (only a GPU question needs it)

    if torch.cuda.is_available():
        return "cuda" if device == "auto" else device
    if device != "auto":
        raise ModelError(f"device {device!r} requested but torch sees no CUDA device")
    return "cpu"
