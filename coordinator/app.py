"""The coordinator's composition root: builds every long-lived object and serves HTTP.

    store -> NATS connection -> JetStream layout -> runner directory -> recorder -> reaper -> HTTP

They are entered on one AsyncExitStack and closed in reverse order on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator

import nats
from aiohttp import web

from coordinator import auth
from coordinator.api.common import SERVICES, Services, error_middleware
from coordinator.api.routes import add_routes
from coordinator.bus import RunnerBus
from coordinator.config import CoordinatorConfig
from coordinator.credentials import Sealer, Vault, load_key
from coordinator.directory import RunnerDirectory
from coordinator.lifetimes import Policy
from coordinator.metrics import METRICS, CoordinatorMetrics, observe_middleware
from coordinator.placement import Policy as PlacementPolicy
from coordinator.placer import Placer
from coordinator.ratelimit import Limiter
from coordinator.reaper import EventLog, Reaper
from coordinator.recorder import Recorder
from coordinator.store import open_store
from coordinator.store.base import Store
from protocol.config import ConfigError
from protocol import access, subjects
from protocol.config import redact_url
from protocol.jetstream import ensure_layout

logger = logging.getLogger(__name__)

VERSION = "0.1.0"


def build_app(svc: Services, metrics: CoordinatorMetrics | None = None) -> web.Application:
    """The aiohttp application for a set of services (tests build it the same way)."""
    keys = auth.CachedKeys(svc.store)
    app = web.Application(
        middlewares=[observe_middleware, error_middleware,
                     auth.middleware(keys, required=svc.config.auth == "required")],
        client_max_size=svc.config.max_bundle_mb * 1024 * 1024,
    )
    app[SERVICES] = svc
    app[auth.KEY_CACHE] = keys
    app[METRICS] = metrics if metrics is not None else CoordinatorMetrics()
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
        await bootstrap_admin_key(store, config.bootstrap_admin_key)
        if config.auth != "required":
            logger.warning("ASH_AUTH=off: every caller is an admin of the default tenant; "
                           "for development only")
        limiter = await stack.enter_async_context(Limiter(
            config.rate_session_creates_per_min, config.rate_session_creates_burst,
            config.max_concurrent_turns_per_key))
        metrics = CoordinatorMetrics()
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
            ), config.create_timeout_s, observe=metrics.observe_placement),
            credentials=Vault(store, _sealer(config), layout.bundles),
            limiter=limiter,
        )
        runner = web.AppRunner(build_app(svc, metrics), handler_cancellation=True, access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, config.host, config.port, shutdown_timeout=5.0)
        await site.start()
        url = f"http://{config.host}:{config.port}"
        logger.info("coordinator listening on %s (nats %s, store %s)", url, redact_url(config.nats_url),
                    config.store_url.split("://")[0])
        yield svc, url
        logger.info("coordinator stopping")


async def bootstrap_admin_key(store: Store, token: str) -> None:
    """Store ASH_BOOTSTRAP_ADMIN_KEY as an admin key of the default tenant, if its id is new
    (a key revoked since stays revoked)."""
    if not token:
        return
    parsed = auth.parse_key(token)
    if parsed is None:
        raise ConfigError("ASH_BOOTSTRAP_ADMIN_KEY is not an Ash key (ash_<12 hex>_<secret>)")
    key_id, secret = parsed
    if await store.get_key(key_id) is None:
        with contextlib.suppress(Exception):  # another coordinator stored it meanwhile
            await store.create_key(key_id, auth.DEFAULT_TENANT, "bootstrap admin", [auth.ADMIN],
                                   auth.hash_secret(secret), time.time())
        logger.info("stored the bootstrap admin key %s", key_id)


def _sealer(config: CoordinatorConfig) -> Sealer | None:
    """The credentials sealer from the configured key (a bad key stops the start)."""
    key = load_key(config.credentials_key, config.credentials_key_file)
    if key is None:
        logger.info("no ASH_CREDENTIALS_KEY(_FILE): storing credentials is off")
        return None
    return Sealer(key)


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
