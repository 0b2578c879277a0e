"""protocol.access: the permission blocks and connect options, as data."""

from __future__ import annotations

import ssl

import pytest

from deploy import nats_auth
from protocol import access, subjects


def test_a_runners_subscriptions_are_its_commands_and_its_inbox_only() -> None:
    perms = access.runner_permissions("r1")
    assert perms["subscribe"]["allow"] == ["ash.v1.runner.r1.cmd", "_INBOX.ash.runner.r1.>"]
    publish = perms["publish"]["allow"]
    assert "$KV.ash_runners.r1" in publish and "$KV.ash_runners.>" not in publish
    assert not [s for s in publish if s.startswith(("ash.v1.runner", "$O.ash_bundles", "_INBOX"))]
    assert perms["allow_responses"] is True


@pytest.mark.parametrize("bad", ["a.b", "*", ">", "", "r 1"])
def test_a_runner_id_that_is_not_one_subject_token_is_refused(bad: str) -> None:
    with pytest.raises(subjects.SubjectError):
        access.runner_permissions(bad)
    with pytest.raises(ValueError):
        nats_auth.runner_user(bad)


def test_connect_options_and_servers() -> None:
    plain = access.connect_options(inbox_prefix=subjects.coordinator_inbox())
    assert plain == {"inbox_prefix": "_INBOX.ash.coordinator"}
    login = access.connect_options(inbox_prefix="_INBOX.x", user="u", password="p",
                                   tls_ca=ssl.get_default_verify_paths().cafile or "")
    assert login["user"] == "u" and login["password"] == "p"
    if ssl.get_default_verify_paths().cafile:
        assert isinstance(login["tls"], ssl.SSLContext)
    assert access.servers("nats://a:1, nats://b:2,") == ["nats://a:1", "nats://b:2"]
