#!/usr/bin/env bash
# Sets up, then runs the whole test suite (real nats-server, bwrap, cgroups, the real CLI).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash deploy/local/setup.sh
exec .venv/bin/python -m pytest "$@"
