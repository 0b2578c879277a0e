"""`python -m coordinator` / `ash-coordinator`: run one coordinator, configured by ASH_* env."""

from __future__ import annotations

import argparse
import os
import sys

import uvloop

from coordinator import app
from coordinator.config import from_env
from protocol import logs
from protocol.config import ConfigError, describe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ash-coordinator", description=__doc__)
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "check-config"])
    args = parser.parse_args(argv)
    try:
        config = from_env(os.environ)
    except ConfigError as e:
        print(f"ash-coordinator: {e}", file=sys.stderr)
        return 2
    logs.setup(config.log_level, config.log_format)
    if args.command == "check-config":
        print(describe(config))
        return 0
    os.makedirs(config.home_dir, exist_ok=True)
    uvloop.run(app.serve(config))
    return 0
