#!/usr/bin/env bash
# Installs what Ash needs on this machine, idempotently: bubblewrap, iproute2 and nftables from
# the system's packages, and a Python virtualenv at .venv with Ash and its dependencies.
set -euo pipefail
cd "$(dirname "$0")/../.."

need=()
command -v bwrap >/dev/null 2>&1 || need+=(bubblewrap)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
# Network slots: nft sets each slot's firewall, nsenter (util-linux) starts sandboxes in them.
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || need+=(nftables)
command -v nsenter >/dev/null 2>&1 || need+=(util-linux)
# The network escape tests: a TLS test host (openssl) reached with curl from inside a sandbox.
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
if ((${#need[@]})); then
    echo "==> installing system packages: ${need[*]}"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv with $($python --version)"
    $python -m venv .venv
fi

stamp=.venv/.ash-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "==> installing Ash and its dependencies into .venv (the first time takes a minute)"
    log=.venv/pip.log
    if ! { .venv/bin/python -m pip install --disable-pip-version-check --upgrade pip &&
           .venv/bin/python -m pip install --disable-pip-version-check -e '.[dev]'; } >"$log" 2>&1; then
        tail -n 30 "$log"
        echo "setup: pip install failed; the full log is in $log" >&2
        exit 1
    fi
    .venv/bin/python -c "import coordinator, runner, ash, claude_agent_sdk"
    echo "$want" > "$stamp"
fi
