"""A real Postgres for the store tests: a fresh database per test on the local server.

`postgres_url` creates a database with a random name (dropped afterwards), so tests are
isolated from each other and from anything else on the server, and may run in parallel.
The server is the one on 127.0.0.1:5432; when none answers there, `postgres_server` starts
the local cluster (`pg_ctlcluster`) and waits for it instead of skipping.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

PG_HOST, PG_PORT = "127.0.0.1", 5432
ADMIN_URL = f"postgres://postgres@{PG_HOST}:{PG_PORT}/postgres"


def _answers() -> bool:
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=1):
            return True
    except OSError:
        return False


def _start_local_cluster() -> None:
    """Start the Debian/Ubuntu cluster that listens on PG_PORT (`pg_lsclusters` says which)."""
    if shutil.which("pg_lsclusters") is None or shutil.which("pg_ctlcluster") is None:
        raise RuntimeError(
            f"no Postgres on {PG_HOST}:{PG_PORT} and no pg_ctlcluster to start one: "
            "install postgresql (the store tests need a real server)"
        )
    listing = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True,
                             check=True).stdout
    for line in listing.splitlines():
        version, cluster, port, status, *_ = line.split()
        if int(port) == PG_PORT:
            if status != "online":
                subprocess.run(["pg_ctlcluster", version, cluster, "start"], check=True)
            return
    raise RuntimeError(f"no local Postgres cluster on port {PG_PORT}:\n{listing}")


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The admin URL of a Postgres that accepts connections; started if it was down."""
    if not _answers():
        _start_local_cluster()
        deadline = time.monotonic() + 60
        while not _answers():
            if time.monotonic() > deadline:
                raise TimeoutError(f"Postgres did not start listening on {PG_HOST}:{PG_PORT}")
            time.sleep(0.1)  # poll interval of the readiness check above
    return ADMIN_URL


async def _admin(sql: str, admin_url: str) -> None:
    # Accepting TCP is not yet accepting sessions ("the database system is starting up").
    deadline = time.monotonic() + 60
    while True:
        try:
            conn = await asyncpg.connect(admin_url, timeout=10)
            break
        except asyncpg.CannotConnectNowError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)  # poll interval while the server finishes starting
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
async def postgres_url(postgres_server: str) -> AsyncIterator[str]:
    """The URL of a new, empty database of its own, dropped after the test.

    It is created with an ICU English locale, the kind of collation production databases
    often have (it sorts "B" after "ab"): the store must order text as SQLite does anyway.
    """
    name = f"ash_test_{uuid.uuid4().hex[:16]}"
    try:
        await _admin(f"CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu "
                     "ICU_LOCALE 'en' LOCALE 'C.UTF-8'", postgres_server)
    except asyncpg.PostgresError:  # a server built without ICU: its default locale then
        await _admin(f"CREATE DATABASE {name} TEMPLATE template0", postgres_server)
    try:
        yield f"postgres://postgres@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        await _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", postgres_server)
