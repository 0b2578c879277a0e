"""The benchmark harness: `python -m loadtest.bench` prints Ash's performance table.

    report.py    rows, percentiles, the original Ash's published figures, the table
    stack.py     the benchmark's own stacks (nats-server, coordinator, runners as processes)
    probe.py     raw aiohttp + SSE timing, commands to a runner over NATS, /proc readings
    floors.py    NATS request/reply, HTTP round trip and bwrap spawn floors
    direct.py    the stand-in CLI in a sandbox driven through the SDK in-process (no platform)
    latency.py   create, resume, per-message, time to interactive (one request at a time)
    load.py      a burst of creates, events per second, the concurrency sweep
"""
