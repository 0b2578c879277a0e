"""Ash's client: deploy Claude agents and talk to them over HTTP, and run the local stack.

    from ash import Client
    with Client("http://127.0.0.1:4100") as ash:
        ash.deploy("examples/hello", "hello")
        session = ash.create_session("hello")
        for event in ash.send(session.id, "hi"):
            print(event)

Imports only `protocol` of ours; everything else is the standard library, aiohttp and msgspec.
"""

from ash.bundle import pack
from ash.client import DEFAULT_URL, AsyncClient, Client
from ash.errors import (
    AshConnectionError,
    AshError,
    AshTimeoutError,
    BundleError,
    StackError,
)

__all__ = [
    "DEFAULT_URL",
    "AshConnectionError",
    "AshError",
    "AshTimeoutError",
    "AsyncClient",
    "BundleError",
    "Client",
    "StackError",
    "pack",
]
