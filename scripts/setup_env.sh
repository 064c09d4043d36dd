#!/usr/bin/env bash
# Create (or reuse) ./.venv with the CPU build of torch 2.13.0 and fanet-monai installed (editable, with test extras).
# Source it (`. scripts/setup_env.sh`) to keep the environment active in your shell.
set -eo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
[ -x "$root/.venv/bin/python" ] || "$python" -m venv "$root/.venv"
# shellcheck disable=SC1091
. "$root/.venv/bin/activate"
# torch first, pinned: an open-ended torch requirement would pull a multi-GB CUDA build.
python -m pip install -q --disable-pip-version-check "torch==2.13.0"
python -m pip install -q --disable-pip-version-check -e "$root[test]"
