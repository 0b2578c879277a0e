"""The path rules of the files API, as a table; and the new wire messages' round trips."""

from __future__ import annotations

import msgspec
import pytest

from protocol import codec, subjects
from protocol.api import ExecRequest
from protocol.commands import ListFiles, StartExec, StreamOpened, UploadChunk
from protocol.files import PathError, split_path
from protocol.streams import Chunk, End

ACCEPTED = [
    ("notes.txt", False, ("notes.txt",)),
    ("src/app.py", False, ("src", "app.py")),
    ("./src//app.py", False, ("src", "app.py")),
    ("dir/", False, ("dir",)),
    ("a/./b/.", False, ("a", "b")),
    (".hidden", False, (".hidden",)),
    ("...", False, ("...",)),  # a name, not a parent reference
    ("..foo/bar..", False, ("..foo", "bar..")),
    ("with space/ünï©ødé", False, ("with space", "ünï©ødé")),
    ("back\\slash", False, ("back\\slash",)),  # an ordinary character on Linux
    ("", True, ()),
    (".", True, ()),
    ("./", True, ()),
    ("x" * 255, False, ("x" * 255,)),
]

REFUSED = [
    ("", False, "workspace itself"),
    (".", False, "workspace itself"),
    ("/etc/passwd", False, "absolute"),
    ("/", True, "absolute"),
    ("//etc", True, "absolute"),
    ("..", True, "'..'"),
    ("../x", False, "'..'"),
    ("a/../../x", False, "'..'"),
    ("a/..", False, "'..'"),
    ("a/b/../c", False, "'..'"),  # even when it would stay inside
    ("a\0b", False, "NUL"),
    ("\0", True, "NUL"),
    ("x" * 256, False, "component"),
    ("é" * 128, False, "component"),  # 256 bytes in UTF-8
    ("a/" * 2048 + "b", False, "4096 bytes"),
]


@pytest.mark.parametrize(("path", "allow_root", "parts"), ACCEPTED)
def test_plain_relative_paths_split_into_components(
    path: str, allow_root: bool, parts: tuple[str, ...]
) -> None:
    assert split_path(path, allow_root=allow_root) == parts


@pytest.mark.parametrize(("path", "allow_root", "why"), REFUSED)
def test_paths_that_could_leave_the_workspace_are_refused(
    path: str, allow_root: bool, why: str
) -> None:
    with pytest.raises(PathError, match=why):
        split_path(path, allow_root=allow_root)


def test_exec_and_files_messages_round_trip() -> None:
    start = StartExec(session_id="s", exec_id="e", command=["ls", "-l"], env={"A": "b"})
    assert codec.decode_command(codec.encode(start)) == start
    shell = StartExec(session_id="s", exec_id="e", command="echo hi")
    assert codec.decode_command(codec.encode(shell)) == shell
    chunk = UploadChunk(session_id="s", upload_id="u", seq=1, data=b"\x00\xffbinary")
    assert codec.decode_command(codec.encode(chunk)) == chunk
    assert codec.decode_command(codec.encode(ListFiles(session_id="s"))) == ListFiles(session_id="s")
    opened = StreamOpened(runner_id="r", size=3, mtime=1.5)
    assert codec.decode_reply(codec.encode(opened)) == opened
    data = Chunk(stream_id="x", seq=1, channel="stderr", data=b"\xff\xfe")
    assert codec.decode_stream(codec.encode(data)) == data
    end = End(stream_id="x", seq=2, exit_code=3)
    assert codec.decode_stream(codec.encode(end)) == end
    assert subjects.stream("abc") == "ash.v1.stream.abc"


def test_exec_requests_are_validated() -> None:
    ok = codec.decode_as(b'{"command": ["ls", "-l"], "env": {"_A1": "x y"}}', ExecRequest)
    assert ok.command == ["ls", "-l"] and ok.timeout_s == 60 and ok.encoding == "utf-8"
    for bad in (
        b'{"command": ""}',
        b'{"command": []}',
        b'{"command": "a\\u0000b"}',
        b'{"command": ["a\\u0000"]}',
        b'{"command": "x", "env": {"1A": "x"}}',
        b'{"command": "x", "env": {"A-B": "x"}}',
        b'{"command": "x", "env": {"A": "x\\u0000"}}',
        b'{"command": "x", "timeout_s": 3601}',
        b'{"command": "x", "timeout_s": 0}',
        b'{"command": "x", "encoding": "latin-1"}',
        b'{"command": "x", "cwd": "/"}',
    ):
        with pytest.raises(msgspec.ValidationError):
            codec.decode_as(bad, ExecRequest)
