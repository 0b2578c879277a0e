"""Every encoder and decoder of the wire, built once.

JSON everywhere: on NATS (so an operator can read the bus with `nats sub`), in SSE `data:` and
in HTTP bodies. Decoders are typed; a message of an unknown tag raises `msgspec.ValidationError`.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from protocol.commands import Command, CommandReply
from protocol.events import Event, ExecEvent
from protocol.runners import RunnerAdvert
from protocol.streams import Ack, StreamMessage

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_command_decoder = msgspec.json.Decoder(Command)
_reply_decoder = msgspec.json.Decoder(CommandReply)
_event_decoder = msgspec.json.Decoder(Event)
_advert_decoder = msgspec.json.Decoder(RunnerAdvert)
_exec_event_decoder = msgspec.json.Decoder(ExecEvent)
_stream_decoder = msgspec.json.Decoder(StreamMessage)
_ack_decoder = msgspec.json.Decoder(Ack)
_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}

DecodeError = msgspec.DecodeError
ValidationError = msgspec.ValidationError


def encode(value: Any) -> bytes:
    """Encode any Struct (or plain JSON value) to JSON bytes."""
    return _encoder.encode(value)


def decode_command(data: bytes) -> Command:
    return _command_decoder.decode(data)


def decode_reply(data: bytes) -> CommandReply:
    return _reply_decoder.decode(data)


def decode_event(data: bytes) -> Event:
    return _event_decoder.decode(data)


def decode_advert(data: bytes) -> RunnerAdvert:
    return _advert_decoder.decode(data)


def decode_exec_event(data: bytes) -> ExecEvent:
    return _exec_event_decoder.decode(data)


def decode_stream(data: bytes) -> StreamMessage:
    return _stream_decoder.decode(data)


def decode_ack(data: bytes) -> Ack:
    return _ack_decoder.decode(data)


def decode_as(data: bytes, type_: type[T]) -> T:
    """Decode JSON into `type_` with a decoder cached per type (HTTP bodies, API views)."""
    decoder = _decoders.get(type_)
    if decoder is None:
        decoder = _decoders[type_] = msgspec.json.Decoder(type_)
    result: T = decoder.decode(data)
    return result


def to_builtins(value: Any) -> Any:
    """A Struct as plain dicts and lists (for passing SDK-shaped data through)."""
    return msgspec.to_builtins(value)
