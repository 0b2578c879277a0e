"""Ash's offline scripted model: the only thing the tests fake.

`brain` decides replies; `wire` shapes them as Messages API responses; `model_api` serves them
to the real Claude Code CLI; `standin_cli` (with `transcript`) replaces the CLI itself for fast
tests and load tests. `brain`, `wire`, `transcript` and `standin_cli` are standard library only.
"""
