"""The flags ``run``, ``serve`` and ``analyze`` share, and the one place that builds
:class:`Settings` from flags and an optional TOML file (flags win)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from emotion_monitor.models import load_model
from emotion_monitor.models.base import EmotionModel, ModelError
from emotion_monitor.streamer.audio import SAMPLE_FORMATS, SAMPLE_RATE
from emotion_monitor.streamer.protocol import (
    MAX_CHANNELS,
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    SourceError,
)
from emotion_monitor.streamer.settings import DEVICES, Settings


def add_source_arguments(p: argparse.ArgumentParser, default_help: str) -> None:
    """``--source``, ``--device`` (the audio input device) and the raw-PCM flags of stdin."""
    p.add_argument(
        "--source", metavar="SRC", help=f"mic | file:PATH | stdin | demo | auto; {default_help}"
    )
    p.add_argument(
        "--device",
        metavar="D",
        help="audio input device index or name for --source mic (see `emotion-monitor devices`)",
    )
    add_stdin_arguments(p)


def add_stdin_arguments(p: argparse.ArgumentParser) -> None:
    """``--rate``, ``--channels``, ``--format``: raw PCM on stdin (``run`` and ``serve``).

    They default to ``None`` so that :func:`make_source` can refuse them with any other source,
    where they would silently do nothing.
    """
    p.add_argument(
        "--rate",
        type=int,
        metavar="HZ",
        help=f"stdin sample rate, {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} (default {SAMPLE_RATE}); "
        "--source stdin only",
    )
    p.add_argument(
        "--channels",
        type=int,
        metavar="N",
        help=f"stdin interleaved channels, 1..{MAX_CHANNELS} (default 1); --source stdin only",
    )
    p.add_argument(
        "--format",
        dest="sample_format",
        choices=SAMPLE_FORMATS,
        help="stdin sample format (default s16le); --source stdin only",
    )


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """``--model`` and ``--model-device`` (where inference runs)."""
    p.add_argument(
        "--model",
        metavar="SPEC",
        help="model spec (default: the shipped model; hf:..., vit-va:..., pooled:..., onnx:..., "
        "heads:DIR from `emotion-monitor train`, or a directory; see docs/published-models.md)",
    )
    # default None: a --config file's `device` holds unless the flag is given
    p.add_argument(
        "--model-device",
        choices=DEVICES,
        default=None,
        help="where the model runs: auto (default: CUDA when torch sees a GPU), cpu or cuda",
    )
    p.add_argument(
        "--inference",
        metavar="WHERE",
        default="local",
        help="local (default: the model runs in this process) or ray[:ADDRESS]: the Ray Serve "
        "tier that `emotion-monitor ray-serve --model SPEC` runs for the same --model "
        "(ADDRESS: a Ray cluster, default the one on this machine; needs emotion-monitor[ray])",
    )


def add_analysis_arguments(p: argparse.ArgumentParser) -> None:
    """``--window``, ``--hop``, ``--no-vad`` and ``--config``."""
    p.add_argument("--window", type=float, metavar="S", help="analysis window, seconds (default 2)")
    p.add_argument("--hop", type=float, metavar="S", help="hop between windows, seconds (0.5)")
    p.add_argument(
        "--no-vad",
        dest="vad",
        action="store_false",
        default=None,
        help="analyse every window, speech or not",
    )
    p.add_argument("--config", metavar="FILE.toml", help="settings TOML file (flags win)")


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the TOML file of ``--config`` (if any) with the flags given on top.

    Raises ``ValueError`` naming the file or flag and the problem.
    """
    parse_inference(getattr(args, "inference", "local"))  # a bad --inference fails with the flags
    max_streams = getattr(args, "max_streams", None)  # a serve flag
    flags = dict(
        window=args.window,
        hop=args.hop,
        vad=args.vad,
        model=args.model,
        device=args.model_device,
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        max_streams=max_streams if max_streams != "auto" else None,  # auto: measured later
    )
    if args.config:
        return Settings.from_toml(args.config, **flags)
    return Settings().replace(**flags)


#: The ``stream`` of the ``source_error`` that says the inference tier is unreachable.
INFERENCE_STREAM = "inference"


def parse_inference(text: str) -> tuple[str, str | None]:
    """``--inference`` as (where, address): ``local`` or ``ray`` with an optional Ray address
    (``ray:HOST:PORT``, ``ray:ray://HOST:PORT``). Raises ``ValueError`` for anything else."""
    where, sep, address = text.partition(":")
    if where == "local" and not sep:
        return "local", None
    if where == "ray" and (not sep or address):
        return "ray", address or None
    raise ValueError(f"--inference {text!r}: use local, ray or ray:ADDRESS")


def load_inference_model(settings: Settings, inference: str = "local") -> EmotionModel:
    """The model ``settings.model`` names, in this process or, with ``--inference ray``, the
    Ray Serve application that serves it (a stand-in with the same interface).

    Raises ``ValueError`` for a bad ``--inference`` and ModelError when the model or the tier
    cannot be had."""
    where, address = parse_inference(inference)
    if where == "local":
        return load_model(settings.model, device=settings.device)
    try:
        # lazy: Ray is an optional extra and takes seconds to import
        from emotion_monitor.models.ray_client import RayModel
    except ImportError as exc:
        raise ModelError(
            f"--inference {inference} needs Ray Serve: pip install 'emotion-monitor[ray]' ({exc})"
        ) from exc
    return RayModel.connect_app(settings.model, address)


def report_outages(model: EmotionModel, emit: Callable[[SourceError], None]) -> None:
    """Have a remote model's tier outages emitted as a ``source_error`` of the stream
    :data:`INFERENCE_STREAM` (an in-process model has none; then this does nothing)."""
    if hasattr(model, "on_outage"):
        model.on_outage = lambda message, retry_in: emit(
            SourceError(INFERENCE_STREAM, message, retry_in)
        )
