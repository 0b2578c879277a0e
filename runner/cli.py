"""`python -m runner` / `ash-runner`: run one runner, configured by ASH_* env."""

from __future__ import annotations

import argparse
import os
import sys

import uvloop

from protocol import logs
from protocol.config import ConfigError, describe
from runner import daemon
from runner.config import from_env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ash-runner", description=__doc__)
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "check-config"])
    args = parser.parse_args(argv)
    try:
        config = from_env(os.environ)
    except ConfigError as e:
        print(f"ash-runner: {e}", file=sys.stderr)
        return 2
    logs.setup(config.log_level, config.log_format)
    if args.command == "check-config":
        print(describe(config))
        return 0
    uvloop.run(daemon.serve(config))
    return 0
