#!/usr/bin/env bash
# Sets up, starts Ash with its embedded defaults (nats-server, a coordinator, a runner, SQLite
# under ~/.ash), deploys examples/hello and streams a reply from it.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash deploy/local/setup.sh
ash=.venv/bin/ash
$ash start
$ash deploy examples/hello --name hello
$ash chat hello "Hello! What can you do?"
echo
echo "Ash keeps running at ${ASH_URL:-http://127.0.0.1:4100}. Try:"
echo "  .venv/bin/ash chat hello \"Remember the word pelican\""
echo "  .venv/bin/ash send <session id> \"What was the word?\""
echo "  .venv/bin/ash stop"
