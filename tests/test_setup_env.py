"""Issue 11, case 9: sourcing scripts/setup_env.sh leaves the user's shell options alone, also when a step fails."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "setup_env.sh"


@pytest.mark.parametrize("pip_status", [0, 1])
def test_sourcing_setup_env_keeps_the_shell_options_and_reports_failure(tmp_path, pip_status):
    (tmp_path / "scripts").mkdir()
    shutil.copy(SCRIPT, tmp_path / "scripts" / "setup_env.sh")
    venv = tmp_path / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text("#!/bin/sh\nexit 0\n")
    (venv / "python").chmod(0o755)
    log = tmp_path / "calls.log"
    # a stand-in venv: its `python` records the pip calls instead of installing anything
    (venv / "activate").write_text(f'python() {{ echo "$*" >> "{log}"; return {pip_status}; }}\n')
    shell = (
        f'set +e; . "{tmp_path}/scripts/setup_env.sh"; echo "status=$?"; echo "options=$-"; '
        'set -o | grep pipefail; false | true; false; echo "still alive"'
    )
    result = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=30)
    out = result.stdout
    assert "still alive" in out and result.returncode == 0
    assert f"status={pip_status}" in out
    options = out.split("options=")[1].split()[0]
    assert "e" not in options and "u" not in options
    assert "pipefail      \toff" in out or "pipefail\toff" in out.replace(" ", "")
    calls = log.read_text().splitlines()
    assert calls[0].startswith("-m pip install") and "torch==2.13.0" in calls[0]
    assert len(calls) == (2 if pip_status == 0 else 1)
    if pip_status:
        assert "installing torch==2.13.0 failed" in result.stderr
