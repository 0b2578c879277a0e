#!/usr/bin/python3
"""A stand-in for the Claude Code CLI that speaks its stream-json protocol and answers from `brain`.

Standard library only and quick to start (no asyncio: threads cost about 100 ms less to import).
`claude_agent_sdk` runs it exactly like the real CLI (`cli_path=`): NDJSON on stdin and stdout,
`initialize` first, then `user` lines, each answered by one turn. It runs as `/opt/ash/bin/cli`
inside a sandbox with `runner/scripted/` bound read-only at `/opt/ash/scripted`; `ASH_SCRIPTED_DIR`
says where `brain.py`, `wire.py` and `transcript.py` are (default: this file's own directory).

Two threads. The reader answers control requests at once (so `interrupt` lands mid-turn), hands
`control_response`s to the turn that waits for them, and queues `user` lines for the main thread,
which runs turns one at a time:

    idle --user--> running --reply done--------------------> idle   (result success)
                      |  \\--interrupt--> idle                       (result error_during_execution)
                      |   \\--brain asks for a tool--> can_use_tool round trip (with
                      |        --permission-prompt-tool stdio), synthetic tool_result, back to running
                      \\--stdin EOF--> exit 0 (any turn is abandoned)

Tools are never run: the tool_result says so. The conversation (Messages API shape) is kept in
`$HOME/.claude-standin/<session_id>.jsonl` after every turn, so `--resume <id>` in a new process
continues it, the way cold resume does with the real CLI.

Scripted prompts (first word): `sleep:<seconds>` streams the reply over that many seconds and can
be interrupted; `error` ends the turn with an `is_error` result; `crash` exits 3 mid-turn;
`eat:<MB>` allocates (and touches) that much memory mid-turn, then answers, which under a
sandbox memory limit smaller than that gets the CLI OOM-killed, like a real CLI that blows up.
"""

import json
import os
import queue
import sys
import threading
import time

sys.path.insert(0, os.environ.get("ASH_SCRIPTED_DIR") or os.path.dirname(os.path.abspath(__file__)))
import brain  # found through the sys.path entry above
import wire
from transcript import Transcript

VERSION = "2.1.330"  # the bundled CLI this stands in for; the SDK warns about older versions
DEFAULT_TOOLS = ["Bash", "Edit", "Glob", "Grep", "Read", "Write"]
MAX_MODEL_CALLS = 8
INTERRUPTED = "[Request interrupted by user]"
_BOOLEAN_FLAGS = {
    "--verbose",
    "--continue",
    "--fork-session",
    "--include-partial-messages",
    "--include-hook-events",
    "--strict-mcp-config",
    "--session-mirror",
    "--replay-user-messages",
}


def parse_args(argv):
    """The flags the stand-in uses; every other flag is skipped with its value, if it has one."""
    opts = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("--"):
            continue
        name, eq, value = arg.partition("=")
        if name in _BOOLEAN_FLAGS:
            opts[name] = True
            continue
        if not eq and i < len(argv) and not argv[i].startswith("--"):
            value = argv[i]
            i += 1
        opts[name] = value
    return opts


def uuid4():
    """A random UUID string without importing `uuid` (a few ms of start-up)."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def result(session_id, subtype, error, text="", **fields):
    """A `result` frame as the real CLI writes it; `error` set means `is_error`."""
    frame = {
        "type": "result",
        "subtype": subtype,
        "is_error": error is not None,
        "duration_ms": 0,
        "duration_api_ms": 0,
        "num_turns": 0,
        "result": error or text,
        "stop_reason": None if error else "end_turn",
        "session_id": session_id,
        "total_cost_usd": 0,
        "permission_denials": [],
        "uuid": uuid4(),
        **fields,
    }
    if error:
        frame["errors"] = [error]
    return frame


class Interrupted(Exception):
    """The turn must stop: the SDK sent `interrupt`, or stdin closed."""


class SessionNotFound(Exception):
    """`--resume` named a session with no saved conversation."""


class Session:
    """One CLI process: its conversation, its output and the state shared with the reader."""

    def __init__(self, opts, home):
        self.model = opts.get("--model") or "claude-scripted"
        self.permission_mode = opts.get("--permission-mode") or "default"
        self.partial = "--include-partial-messages" in opts
        self.ask_permission = opts.get("--permission-prompt-tool") == "stdio"
        tools = opts.get("--tools")
        self.tools = (
            DEFAULT_TOOLS if tools in (None, "default") else [t for t in tools.split(",") if t]
        )
        self.max_calls = int(opts.get("--max-turns") or MAX_MODEL_CALLS)
        prompts = (opts.get("--system-prompt"), opts.get("--append-system-prompt"))
        self.system = "\n\n".join(p for p in prompts if p)
        self.cwd = os.getcwd()
        resume = opts.get("--resume")
        fresh = resume is None or "--fork-session" in opts
        self.session_id = opts.get("--session-id") or (uuid4() if fresh else resume)
        self.transcript = Transcript(home, self.session_id)
        source = Transcript.of(home, resume or self.session_id)
        if resume is not None and not os.path.exists(source):
            raise SessionNotFound(resume)
        # The context size is counted as messages are added: JSON-encoding the whole history
        # every turn made turns slower as the conversation grew.
        self.messages, self.context_chars = [], len(self.system)
        if os.path.exists(source):
            for message in Transcript.load(source):
                self.add(message["role"], message["content"])
        if source == self.transcript.path:  # a fork copies the history into its own file
            self.transcript.saved = len(self.messages)
        self.total_cost = 0.0
        self.out_lock = threading.Lock()
        self.inbox = queue.Queue(maxsize=64)
        self.interrupt = threading.Event()
        self.closed = threading.Event()
        self.pending = {}  # request_id -> [Event, response] for can_use_tool round trips

    def add(self, role, content):
        """Append one message to the conversation the brain sees."""
        self.messages.append({"role": role, "content": content})
        self.context_chars += len(json.dumps(content))

    # -- output --------------------------------------------------------------------------

    def send(self, obj):
        line = json.dumps(obj, separators=(",", ":")) + "\n"
        with self.out_lock:
            sys.stdout.write(line)
            sys.stdout.flush()

    def frame(self, kind, **fields):
        """Send a CLI-to-SDK frame carrying this session's id and a fresh uuid."""
        self.send({"type": kind, **fields, "session_id": self.session_id, "uuid": uuid4()})

    def state(self, state):
        self.frame("system", subtype="session_state_changed", state=state, sdk_host_only=True)

    def user_frame(self, content, **fields):
        """A user message the CLI itself adds (tool results, interruptions), also kept in history."""
        self.add("user", content)
        self.frame("user", message=self.messages[-1], parent_tool_use_id=None, **fields)

    # -- reader thread -------------------------------------------------------------------

    def read_stdin(self):
        for raw in sys.stdin.buffer:
            line = raw.strip()
            if not line.startswith(b"{"):
                continue
            msg = json.loads(line)
            kind = msg.get("type")
            if kind == "control_request":
                self.control(msg.get("request_id"), msg.get("request") or {})
            elif kind == "control_response":
                resp = msg.get("response") or {}
                waiter = self.pending.get(resp.get("request_id"))
                if waiter is not None:
                    waiter[1] = resp
                    waiter[0].set()
            elif kind == "user":
                self.inbox.put(msg)
        self.closed.set()
        self.interrupt.set()  # wakes a sleeping or waiting turn so the process can exit
        self.inbox.put(None)

    def control(self, request_id, req):
        sub = req.get("subtype")
        body = {}
        if sub == "initialize":
            model = {"value": self.model, "displayName": "Scripted", "description": "Ash's model"}
            body = {
                "commands": [],
                "agents": [],
                "output_style": "default",
                "available_output_styles": ["default"],
                "models": [model],
                "account": {"apiKeySource": "none"},
                "pid": os.getpid(),
                "claude_code_version": VERSION,
                "current_permission_mode": self.permission_mode,
                "session_state": "idle",
                "hook_on_failure_supported": True,
            }
        elif sub == "interrupt":
            self.interrupt.set()
            body = {"still_queued": []}
        elif sub == "set_model":
            self.model = req.get("model") or "claude-scripted"
        elif sub == "set_permission_mode":
            self.permission_mode = req.get("mode") or "default"
        elif sub == "mcp_status":
            body = {"mcpServers": []}
        else:
            error = f"the stand-in CLI does not support {sub!r}"
            response = {"subtype": "error", "request_id": request_id, "error": error}
            self.send({"type": "control_response", "response": response})
            return
        response = {"subtype": "success", "request_id": request_id, "response": body}
        self.send({"type": "control_response", "response": response})

    # -- turns ---------------------------------------------------------------------------

    def run(self):
        threading.Thread(target=self.read_stdin, name="stdin", daemon=True).start()
        while (msg := self.inbox.get()) is not None:
            self.interrupt.clear()
            try:
                self.turn((msg.get("message") or {}).get("content", ""))
            except Interrupted:
                if self.closed.is_set():
                    break

    def turn(self, content):
        started = time.monotonic()
        self.add("user", content)
        words = brain.user_text(content).split()
        first = words[0].lower() if words else ""
        self.state("running")
        self.frame(
            "system",
            subtype="init",
            cwd=self.cwd,
            tools=self.tools,
            mcp_servers=[],
            model=self.model,
            permissionMode=self.permission_mode,
            slash_commands=[],
            apiKeySource="none",
            claude_code_version=VERSION,
            output_style="default",
            agents=[],
            skills=[],
            plugins=[],
        )
        usage = {"input_tokens": 0, "output_tokens": 0}
        calls, subtype, error = 0, "success", None
        try:
            if first == "crash":
                os._exit(3)
            if first.startswith("eat:"):
                mb = int(first[4:]) if first[4:].isdigit() else 0
                hog = [b"\x01" * (1 << 20) for _ in range(mb)]
                del hog
            if first == "error":
                subtype, error = (
                    "error_during_execution",
                    "scripted error: the prompt asked for one",
                )
            pause = brain.pause(self.messages)
            while error is None:
                if calls == self.max_calls:
                    subtype, error = "error_max_turns", f"Reached maximum number of turns ({calls})"
                    break
                calls += 1
                reply = brain.decide(self.messages, self.system_with_env())
                block = self.speak(reply, usage, pause)
                if block["type"] != "tool_use":
                    break
                self.use_tool(block)
                pause = 0.0
        except Interrupted:
            if self.closed.is_set():
                raise
            self.user_frame([{"type": "text", "text": INTERRUPTED}])
            subtype, error = "error_during_execution", INTERRUPTED
        self.finish(started, calls, usage, subtype, error)

    def system_with_env(self):
        # The real CLI states its working directory this way; brain resolves relative paths by it.
        return f"{self.system}\n\n# Environment\n - Primary working directory: {self.cwd}\n"

    def speak(self, reply, usage, pause):
        """Stream one model reply, emit it as an `assistant` frame, add it to the history."""
        tokens_in = max(1, self.context_chars // 4)
        msg = wire.message(reply.block(), self.model, tokens_in)
        usage["input_tokens"] += tokens_in
        usage["output_tokens"] += msg["usage"]["output_tokens"]
        events = list(wire.stream_events(msg))
        # The first delta goes out at once, then `pause` is spread over the gaps between them.
        step = pause / max(1, sum(e["type"] == "content_block_delta" for e in events) - 1)
        streamed = []
        for event in events:
            if event["type"] == "content_block_delta":
                if streamed and step and self.interrupt.wait(step) or self.interrupt.is_set():
                    self.abort(msg, "".join(streamed))
                streamed.append(event["delta"].get("text", ""))
            if self.partial:
                self.frame("stream_event", event=event, parent_tool_use_id=None)
            if event["type"] == "content_block_stop":
                self.frame("assistant", message=msg, parent_tool_use_id=None)
        self.add("assistant", msg["content"])
        return msg["content"][0]

    def abort(self, msg, text):
        """Emit the part of a reply streamed before an interrupt, then stop the turn."""
        if text:
            partial = {**msg, "content": [{"type": "text", "text": text}], "stop_reason": None}
            self.frame("assistant", message=partial, parent_tool_use_id=None, aborted=True)
            self.add("assistant", partial["content"])
        raise Interrupted

    def use_tool(self, block):
        """Ask the SDK for permission when told to, then answer with a synthetic tool_result."""
        allowed, text = (
            True,
            (
                f"Stand-in CLI: {block['name']} was not run. This is Ash's scripted stand-in for "
                f"Claude Code, which never executes tools. Input: {json.dumps(block['input'])}"
            ),
        )
        if self.ask_permission:
            answer = self.ask(block)
            decision = answer.get("response") or {}
            allowed = answer.get("subtype") == "success" and decision.get("behavior") == "allow"
            if not allowed:
                text = decision.get("message") or answer.get("error") or "Permission denied"
        res = {"type": "tool_result", "tool_use_id": block["id"], "content": text}
        self.user_frame([{**res, "is_error": not allowed}], tool_use_result=text)

    def ask(self, block):
        """The `can_use_tool` round trip: the SDK's control_response, or Interrupted."""
        request_id = uuid4()
        waiter = self.pending[request_id] = [threading.Event(), None]
        request = {
            "subtype": "can_use_tool",
            "tool_name": block["name"],
            "display_name": block["name"],
            "input": block["input"],
            "permission_suggestions": [],
            "tool_use_id": block["id"],
        }
        self.send({"type": "control_request", "request_id": request_id, "request": request})
        while not waiter[0].wait(0.05) and not self.interrupt.is_set():
            pass
        del self.pending[request_id]
        if waiter[1] is None:
            raise Interrupted
        return waiter[1]

    def finish(self, started, calls, usage, subtype, error):
        cost = wire.cost_usd(usage["input_tokens"], usage["output_tokens"])
        self.total_cost += cost
        last = next((m for m in reversed(self.messages) if m["role"] == "assistant"), None)
        text = "".join(b.get("text", "") for b in (last or {}).get("content", []))
        elapsed = int((time.monotonic() - started) * 1000)
        model_usage = {
            "inputTokens": usage["input_tokens"],
            "outputTokens": usage["output_tokens"],
            "cacheReadInputTokens": 0,
            "cacheCreationInputTokens": 0,
            "costUSD": cost,
        }
        if error is None:
            reason = "completed"
        else:
            reason = "aborted_streaming" if error == INTERRUPTED else "model_error"
        self.transcript.append(self.messages)
        self.send(
            result(
                self.session_id,
                subtype,
                error,
                text,
                duration_ms=elapsed,
                duration_api_ms=elapsed,
                num_turns=calls,
                total_cost_usd=self.total_cost,
                modelUsage={self.model: model_usage},
                usage={**usage, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
                terminal_reason=reason,
            )
        )
        self.state("idle")


def main(argv):
    opts = parse_args(argv)
    if "--version" in opts or "-v" in argv:
        print(f"{VERSION} (Claude Code)")
        return 0
    try:
        session = Session(opts, os.path.expanduser("~"))
    except SessionNotFound as e:
        # What the real CLI does: an error result, the reason on stderr, exit code 1.
        error = f"No conversation found with session ID: {e.args[0]}"
        sys.stdout.write(json.dumps(result(e.args[0], "error_during_execution", error)) + "\n")
        sys.stdout.flush()
        sys.stderr.write(error + "\n")
        return 1
    session.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
