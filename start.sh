#!/usr/bin/env bash
# Install everything emotion-monitor needs (Debian packages included) into ./.venv and start the
# monitor with its dashboard: the microphone when there is one, otherwise a demo stream of
# synthesized speech. Extra arguments go to `emotion-monitor serve`.
# GPU machines: EMOTION_MONITOR_EXTRA=gpu ./start.sh   (onnxruntime-gpu instead of onnxruntime)
set -euo pipefail
cd "$(dirname "$0")"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends libportaudio2 espeak-ng sox ffmpeg
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[${EMOTION_MONITOR_EXTRA:-cpu}]"
exec .venv/bin/emotion-monitor serve --source auto "$@"
