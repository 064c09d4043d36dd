#!/usr/bin/env bash
# Create (or reuse) ./.venv with the CPU build of torch 2.13.0 and fanet-monai installed (editable, with test extras).
# Source it (`. scripts/setup_env.sh`) to keep the environment active in your shell, or run it.
# Safe to source: no `set -e`/`pipefail` (they would stay in your shell and close it at the next failing command);
# each step checks its own status and a failure returns 1 with a message.
_fanet_setup_env() {
    local root python
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)" || return 1
    python="${PYTHON:-python3}"
    if [ ! -x "$root/.venv/bin/python" ]; then
        "$python" -m venv "$root/.venv" || { echo "setup_env: could not create $root/.venv with $python" >&2; return 1; }
    fi
    # shellcheck disable=SC1091
    . "$root/.venv/bin/activate" || { echo "setup_env: could not activate $root/.venv" >&2; return 1; }
    # torch first, pinned: an open-ended torch requirement would pull a multi-GB CUDA build.
    python -m pip install -q --disable-pip-version-check "torch==2.13.0" ||
        { echo "setup_env: installing torch==2.13.0 failed (see pip's message above)" >&2; return 1; }
    python -m pip install -q --disable-pip-version-check -e "$root[test]" ||
        { echo "setup_env: installing fanet-monai failed (see pip's message above)" >&2; return 1; }
}
_fanet_setup_env
_fanet_status=$?
unset -f _fanet_setup_env
if (return 0 2>/dev/null); then  # sourced: hand the status back without touching the caller's shell options
    eval "unset _fanet_status; return $_fanet_status"
fi
exit "$_fanet_status"
