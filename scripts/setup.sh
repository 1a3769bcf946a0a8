#!/usr/bin/env bash
# Sets up everything on a fresh Debian/Ubuntu machine: system packages (when run as root),
# a virtual environment in .venv with a CPU build of torch, and this project in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(espeak-ng sox libportaudio2 libgl1 libglib2.0-0 pulseaudio pulseaudio-utils libasound2-plugins nginx libnginx-mod-rtmp chromium iproute2)
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    missing=()
    for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
elif ! command -v espeak-ng >/dev/null 2>&1; then
    echo "note: install ${APT_PACKAGES[*]} with your package manager (the tests need them)" >&2
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
# A plain `pip install torch` on Linux pulls a multi-GB CUDA build. Pin the +cpu build, which
# only matches CPU wheels: first from the indexes pip is configured with (a local wheel
# directory, a mirror), else from PyTorch's CPU index.
TORCH="torch==2.13.0+cpu"
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    "${PIP[@]}" "$TORCH" 2>/dev/null \
        || "${PIP[@]}" "$TORCH" --extra-index-url https://download.pytorch.org/whl/cpu
fi
"${PIP[@]}" -e ".[cpu,openvino,torch,web,test,bench,livekit,pipecat,ray]"
echo "setup done: .venv is ready" >&2
