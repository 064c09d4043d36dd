#!/usr/bin/env bash
# Set up ./.venv, generate a small synthetic dataset, train FANet B4 with feedback masks, then refine at test time.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup_env.sh
python -m fanet_monai demo --out_dir "${1:-demo}"
