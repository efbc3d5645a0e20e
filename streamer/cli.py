"""The ``emotion-monitor`` command line.

Each subcommand lives in the module that owns its concern; a module contributes
``add_arguments(parser)`` and ``main(args) -> int``. Modules are imported only for the chosen
subcommand so ``emotion-monitor --help`` and ``import emotion_monitor`` stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from emotion_monitor.models.base import ModelError

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("emotion_monitor.streamer.commands.run", "analyse a microphone, file or stdin live"),
    "devices": ("emotion_monitor.streamer.commands.devices", "list audio input devices"),
    "serve": (
        "emotion_monitor.streamer.commands.serve",
        "run the engine with the websocket server",
    ),
    "analyze": ("emotion_monitor.streamer.commands.analyze", "timeline and summary of a recording"),
    "report": (
        "emotion_monitor.streamer.commands.report",
        "per-call summary of a recorded SQLite file",
    ),
    "replay": (
        "emotion_monitor.streamer.commands.replay",
        "serve a recording of 'serve --record' again, as live calls",
    ),
    "train": ("emotion_monitor.models.training.train", "train the emotion heads on a manifest"),
    "evaluate": (
        "emotion_monitor.models.training.evaluate",
        "score a model on a labelled manifest",
    ),
    "export": ("emotion_monitor.models.training.export", "export encoder and heads to ONNX"),
    "ray-serve": (
        "emotion_monitor.streamer.commands.ray_serve",
        "deploy the inference tier on Ray Serve (front ends: --inference ray)",
    ),
}


def _command_module(name: str):
    return importlib.import_module(COMMANDS[name][0])


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with ``only``, subcommand arguments are added for that command alone."""
    parser = argparse.ArgumentParser(
        prog="emotion-monitor", description="Real-time speech emotion monitor."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only == name:
            _command_module(name).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if a in COMMANDS), None)
    args = build_parser(only=chosen).parse_args(argv)
    try:
        return int(_command_module(args.command).main(args) or 0)
    except ModelError as exc:
        # a missing or corrupt model, a bad manifest: the message names the file and the problem
        print(f"emotion-monitor {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
