"""Commands to runners over core NATS request/reply, with their failures mapped to ErrorInfo."""

from __future__ import annotations

import logging

import nats.errors
from nats.aio.client import Client as NatsClient

from protocol import codec, subjects
from protocol.commands import Command, CommandReply, Rejected
from protocol.errors import ErrorCode, ErrorInfo

logger = logging.getLogger(__name__)


class RunnerBus:
    """Sends a command to one runner and returns its reply; never raises for bus failures."""

    def __init__(self, nc: NatsClient) -> None:
        self._nc = nc

    async def request(self, runner_id: str, command: Command, timeout_s: float) -> CommandReply:
        subject = subjects.runner_commands(runner_id)
        try:
            msg = await self._nc.request(subject, codec.encode(command), timeout=timeout_s)
        except nats.errors.NoRespondersError:
            return _unreachable(runner_id, "is not listening (gone or restarting)")
        except nats.errors.TimeoutError:
            return _unreachable(runner_id, f"did not answer within {timeout_s:g} s")
        try:
            return codec.decode_reply(msg.data)
        except (codec.DecodeError, codec.ValidationError) as e:
            logger.error("runner %s sent an undecodable reply: %s", runner_id, e)
            return _unreachable(runner_id, "sent a reply this coordinator cannot read")


def _unreachable(runner_id: str, why: str) -> Rejected:
    return Rejected(
        runner_id=runner_id,
        error=ErrorInfo(
            code=ErrorCode.runner_unreachable, message=f"runner {runner_id} {why}", retryable=True
        ),
    )
