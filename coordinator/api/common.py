"""Shared pieces of the HTTP layer: typed app state, body decoding, JSON answers, errors."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from aiohttp import web
from nats.aio.client import Client as NatsClient

from coordinator.bus import RunnerBus
from coordinator.config import CoordinatorConfig
from coordinator.credentials import Vault
from coordinator.directory import RunnerDirectory
from coordinator.errors import ApiError
from coordinator.placer import Placer
from coordinator.ratelimit import Limiter
from coordinator.recorder import Recorder
from coordinator.store.base import Store
from protocol import codec
from protocol.api import ErrorBody
from protocol.errors import ErrorCode, ErrorInfo
from protocol.jetstream import Layout

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(slots=True)
class Services:
    """Everything a handler may use, built by the composition root."""

    config: CoordinatorConfig
    store: Store
    nc: NatsClient
    layout: Layout
    directory: RunnerDirectory
    recorder: Recorder
    bus: RunnerBus
    version: str
    placer: Placer
    credentials: Vault | None = None  # stored credentials (coordinator/credentials.py)
    limiter: Limiter | None = None  # per-key rate limits (coordinator/ratelimit.py)


SERVICES = web.AppKey("services", Services)


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


async def read_body(request: web.Request, type_: type[T]) -> T:
    """Decode a JSON body into `type_`: 400 if it is not JSON, 422 if it does not fit."""
    data = await request.read()
    try:
        return codec.decode_as(data, type_)
    except msgspec.ValidationError as e:
        # The typed decoder may stop at the first wrong type before it reaches a syntax
        # error further on; malformed JSON must still be a 400.
        try:
            msgspec.json.decode(data)
        except msgspec.DecodeError as syntax:
            raise ApiError(400, ErrorCode.invalid_json, f"the body is not valid JSON: {syntax}") from e
        raise ApiError(422, ErrorCode.validation_failed, f"invalid request body: {e}") from e
    except msgspec.DecodeError as e:
        raise ApiError(400, ErrorCode.invalid_json, f"the body is not valid JSON: {e}") from e


def json_response(value: Any, status: int = 200) -> web.Response:
    return web.Response(body=codec.encode(value), status=status, content_type="application/json")


def error_response(status: int, info: ErrorInfo) -> web.Response:
    return json_response(ErrorBody(error=info), status)


_HTTP_CODES = {
    400: ErrorCode.bad_request,
    404: ErrorCode.not_found,
    405: ErrorCode.method_not_allowed,
    413: ErrorCode.payload_too_large,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every error, whatever raised it, with the one JSON error shape."""
    try:
        return await handler(request)
    except ApiError as e:
        resp = error_response(e.status, e.info)
        resp.headers.update(e.headers)
        return resp
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = _HTTP_CODES.get(e.status, ErrorCode.bad_request)
        message = {
            404: f"no route for {request.method} {request.path}",
            405: f"{request.method} is not allowed on {request.path}",
            413: "the request body is too large",
        }.get(e.status, e.reason)
        resp = error_response(e.status, ErrorInfo(code=code, message=message))
        if e.status == 405 and "Allow" in e.headers:
            resp.headers["Allow"] = e.headers["Allow"]
        return resp
    except Exception:
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(
            500, ErrorInfo(code=ErrorCode.internal, message="internal error", retryable=True)
        )
