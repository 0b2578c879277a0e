"""What the client and the CLI decide on their own for exec and files, before any request.

(The requests themselves run against the real stack in tests/e2e/test_exec_files.py.)
"""

from __future__ import annotations

import io

import pytest

from ash.cli import main
from ash.client import AsyncClient, Client
from ash.errors import AshError
from ash.sandbox_cli import split_exec
from protocol.files import MAX_FILE_BYTES
from tests.ash.fake_server import FakeAsh


@pytest.mark.parametrize(
    ("argv", "head", "tail"),
    [
        (["exec", "S", "--", "echo hi"], ["exec", "S"], ["echo hi"]),
        (["exec", "S", "--env", "A=1", "--", "ls", "-la"], ["exec", "S", "--env", "A=1"], ["ls", "-la"]),
        (["exec", "S", "--", "ls", "--", "-x"], ["exec", "S"], ["ls", "--", "-x"]),  # kept as is
        (["exec", "S", "--", "--help"], ["exec", "S"], ["--help"]),
        (["--url", "exec", "exec", "S", "--", "x"], ["--url", "exec", "exec", "S"], ["x"]),
        (["send", "S", "--", "exec"], ["send", "S", "--", "exec"], None),  # not exec
        (["exec", "S", "ls"], ["exec", "S", "ls"], None),
    ],
)
def test_exec_takes_everything_after_the_first_double_dash_verbatim(
    argv: list[str], head: list[str], tail: list[str] | None
) -> None:
    assert split_exec(argv) == (head, tail)


async def test_bad_paths_and_oversize_bodies_never_reach_the_server(fake_ash: FakeAsh) -> None:
    async with AsyncClient(fake_ash.url) as ash:
        for call in (
            ash.files_read("s", "../etc/passwd"),
            ash.files_read("s", "/etc/passwd"),
            ash.files_write("s", "a\0b", b"x"),
            ash.files_delete("s", ""),
            ash.files_list("s", ".."),
        ):
            with pytest.raises(AshError) as e:
                await call
            assert e.value.code == "validation_failed" and e.value.status is None

        class Huge(io.RawIOBase):
            """Claims to be one byte too big for the API (seekable, so its size is known)."""

            def seekable(self) -> bool:
                return True

            def tell(self) -> int:
                return 0

            def seek(self, offset: int, whence: int = 0) -> int:
                return MAX_FILE_BYTES + 1 if whence == io.SEEK_END else offset

        with pytest.raises(AshError) as e:
            await ash.files_write("s", "big.bin", Huge())
        assert e.value.code == "payload_too_large"
    assert fake_ash.requests == []


def test_cli_exec_needs_a_command_and_reports_refusals(
    fake_ash: FakeAsh, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--url", fake_ash.url, "exec", "S", "--"]) == 1
    assert "give the command after `--`" in capsys.readouterr().err
    assert main(["--url", fake_ash.url, "files", "get", "S", "../x"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: '../x' climbs out") and "hint:" in err
    assert fake_ash.requests == []


def test_blocking_client_refuses_the_same(fake_ash: FakeAsh) -> None:
    with Client(fake_ash.url) as ash, pytest.raises(AshError) as e:
        ash.files_read("s", "/abs")
    assert e.value.code == "validation_failed"
