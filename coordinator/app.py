"""The coordinator's composition root: builds every long-lived object and serves HTTP.

    store -> NATS connection -> JetStream layout -> runner directory -> recorder -> reaper -> HTTP

They are entered on one AsyncExitStack and closed in reverse order on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator

import nats
from aiohttp import web

from coordinator.api.common import SERVICES, Services, error_middleware
from coordinator.api.routes import add_routes
from coordinator.bus import RunnerBus
from coordinator.config import CoordinatorConfig
from coordinator.directory import RunnerDirectory
from coordinator.lifetimes import Policy
from coordinator.placement import Policy as PlacementPolicy
from coordinator.placer import Placer
from coordinator.reaper import EventLog, Reaper
from coordinator.recorder import Recorder
from coordinator.store import open_store
from protocol import access, subjects
from protocol.config import redact_url
from protocol.jetstream import ensure_layout

logger = logging.getLogger(__name__)

VERSION = "0.1.0"


def build_app(svc: Services) -> web.Application:
    """The aiohttp application for a set of services (tests build it the same way)."""
    app = web.Application(
        middlewares=[error_middleware],
        client_max_size=svc.config.max_bundle_mb * 1024 * 1024,
    )
    app[SERVICES] = svc
    add_routes(app)
    return app


@contextlib.asynccontextmanager
async def running(config: CoordinatorConfig) -> AsyncIterator[tuple[Services, str]]:
    """Open everything, serve HTTP, and yield (services, base url) until the caller leaves."""
    async with contextlib.AsyncExitStack() as stack:
        store = await stack.enter_async_context(
            open_store(config.store_url, pool_size=config.database_pool_size))
        nc = await nats.connect(
            access.servers(config.nats_url),
            name="ash-coordinator",
            reconnect_time_wait=0.5,
            max_reconnect_attempts=-1,
            connect_timeout=5,
            **access.connect_options(
                inbox_prefix=subjects.coordinator_inbox(), user=config.nats_user,
                password=config.nats_password, tls_ca=config.nats_tls_ca,
                tls_cert=config.nats_tls_cert, tls_key=config.nats_tls_key,
            ),
        )
        stack.push_async_callback(_close_nats, nc)
        layout = await ensure_layout(nc.jetstream(), runner_ttl_s=max(30.0, config.runner_ttl_s))
        directory = await stack.enter_async_context(RunnerDirectory(layout.runners, config.runner_ttl_s))
        recorder = await stack.enter_async_context(Recorder(layout.js, store))
        bus = RunnerBus(nc)
        policy = Policy(
            session_ttl_s=config.session_ttl_s, idle_pause_s=config.idle_pause_s,
            settle_s=config.runner_ttl_s, create_timeout_s=config.create_timeout_s,
        )
        await stack.enter_async_context(Reaper(
            store, directory, bus, EventLog(layout.js), policy, interval_s=config.reap_interval_s,
            link=lambda: int(nc.stats["reconnects"]) if nc.is_connected else None,
        ))
        svc = Services(
            config=config, store=store, nc=nc, layout=layout, directory=directory,
            recorder=recorder, bus=bus, version=VERSION,
            placer=Placer(directory, bus, layout.bundles, PlacementPolicy(
                mode=config.placement, memory_overcommit=config.overcommit_memory,
                cpu_overcommit=config.overcommit_cpu, choices=config.placement_choices,
                ttl_s=config.runner_ttl_s,
            ), config.create_timeout_s),
        )
        runner = web.AppRunner(build_app(svc), handler_cancellation=True, access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, config.host, config.port, shutdown_timeout=5.0)
        await site.start()
        url = f"http://{config.host}:{config.port}"
        logger.info("coordinator listening on %s (nats %s, store %s)", url, redact_url(config.nats_url),
                    config.store_url.split("://")[0])
        yield svc, url
        logger.info("coordinator stopping")


async def _close_nats(nc: nats.NATS) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.drain(), 5)
    if not nc.is_closed:
        await nc.close()


async def serve(config: CoordinatorConfig) -> None:
    """Run until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running(config):
        await stop.wait()
