#!/usr/bin/env bash
# The headline command, from a fresh clone: installs, checks every fastrnn backend
# against torch.nn on every benchmarked shape, then times them against torch.nn.
# Arguments go to `fastrnn bench` (see --help), e.g. --threads 2, --full, --cells lstm.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash .ci/install
"$PY" -m fastrnn bench "$@"
