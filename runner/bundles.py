"""Agent bundles on the runner: fetched from the object store by digest, unpacked once, cached.

    <runner_dir>/bundles/<digest>/      the agent folder, read-only for sessions to copy from
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import shutil
import tarfile
import tempfile

from nats.js.object_store import ObjectStore


class BundleError(Exception):
    """A bundle could not be fetched or does not match its digest."""


class BundleCache:
    """Fetches and unpacks bundles, one download per digest even under concurrency."""

    def __init__(self, store: ObjectStore, root: str) -> None:
        self._store = store
        self._root = root
        self._locks: dict[str, asyncio.Lock] = {}
        os.makedirs(root, exist_ok=True)

    async def folder(self, digest: str) -> str:
        """The unpacked agent folder of `digest`, fetching it if this runner has not yet."""
        if not digest.isalnum():
            raise BundleError(f"bad digest {digest!r}")
        path = os.path.join(self._root, digest)
        if os.path.isdir(path):
            return path
        lock = self._locks.setdefault(digest, asyncio.Lock())
        async with lock:
            if not os.path.isdir(path):
                try:
                    result = await self._store.get(digest)
                except Exception as e:
                    raise BundleError(f"cannot fetch bundle {digest[:12]}: {e}") from e
                data = result.data or b""
                if hashlib.sha256(data).hexdigest() != digest:
                    raise BundleError(f"bundle {digest[:12]} does not match its digest")
                await asyncio.to_thread(_unpack, data, self._root, path)
        return path


def _unpack(data: bytes, root: str, path: str) -> None:
    tmp = tempfile.mkdtemp(dir=root, prefix=".unpack-")
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            # The `data` filter refuses absolute paths, escapes, devices and links outside.
            tar.extractall(tmp, filter="data")
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
