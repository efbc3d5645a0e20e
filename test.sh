#!/usr/bin/env bash
# Install what the test suite needs (Debian packages for the virtual microphone, speech fixtures
# and the real browser; the package with its test extra) and run the whole suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends \
    libportaudio2 pulseaudio pulseaudio-utils espeak-ng sox ffmpeg chromium
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[cpu,test,ray]"
.venv/bin/ruff check .
.venv/bin/python -m pytest -ra "$@"
