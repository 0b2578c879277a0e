"""The runner's composition root.

    NATS -> JetStream layout -> (scripted model) -> warm pool -> sessions -> intake -> heartbeat

On SIGTERM, the drain (`runner.drain`): advertise `draining` and refuse new sessions
(runner_busy, retryable), let running turns finish up to ASH_DRAIN_TIMEOUT_S, interrupt the
rest, snapshot the sessions; then stop taking commands, end the sessions (their sandboxes go),
leave the registry (coordinators pause the sessions at once, resumable cold anywhere), close
the warm pool (stopping warm CLIs, unmounting disks), drain and close NATS. A second SIGTERM or
SIGINT cuts the waiting short and skips the snapshots. Each of those closes has a budget and
says in the log what it waits for when slow (`runner.shutdown`), so a drained runner exits.

`Runner` is also the warm pool's factory: it makes slots (a directory and a quota disk), starts
sandboxes with a connected CLI in them, and stops them. Host layout under the runner's dir:

    bundles/<digest>/                 unpacked agent folders (read-only for sandboxes)
    sandboxes/<slot>/disk.img         the slot's quota disk image ...
    sandboxes/<slot>/disk/            ... mounted here: workspace/ and home/
    sandboxes/<slot>/sandbox/         the sandbox's state dir (bwrap args, /etc files)
    sessions/<session_id>             -> ../sandboxes/<slot>/disk, while the session lives
    snapshots/                        snapshots being packed or fetched (runner.snapshots)

A `CreateSession` with `restore` (a cold resume or a fork) fetches the snapshot before it asks
the pool for a sandbox (never a warm one), and `start` fills the slot's disk from it instead of
the agent folder, resuming (or forking) the conversation when its transcript came along.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import logging
import os
import secrets
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from typing import Protocol, TypeVar

import nats
from nats.js import api

from protocol import access, logs, subjects
from protocol.commands import AgentRef, CreateSession, ModelCredential
from protocol.errors import ErrorCode, ErrorInfo
from protocol.jetstream import Layout, ensure_layout
from protocol.runners import Resources, RunnerAdvert, SessionActivity
from protocol.snapshots import SnapshotManifest
from runner import agentconf, bridge
from runner.agentconf import Agent, AgentConfigError, Caps
from runner.autosave import SavePolicy
from runner.bundles import BundleCache, BundleError
from runner.config import RunnerConfig
from runner.drain import drain
from runner.execs import ExecService
from runner.files import FileService
from runner.capacity import HostCapacity
from runner.heartbeat import Heartbeat
from runner.intake import Intake
from runner.metrics import MetricsServer, RunnerMetrics
from runner.phases import Phases
from runner.pool import CLEANUP_DEADLINE_S, Request, WarmPool
from runner.publisher import EventPublisher, last_seq
from runner.sandbox import cgroups
from runner.sandbox import disk as disks
from runner.egress import Credentials, EgressProxy, ModelUpstream, Rule, new_placeholder
from runner.egress import sandbox_env as egress_env
from runner.sandbox.errors import NetworkPoolExhausted
from runner.sandbox.launcher import Sandbox
from runner.sandbox.netns import NetworkSlot
from runner.sandbox.netpool import NetworkPool
from runner.sandbox.spec import CLI_PATH, Limits, SandboxSpec
from runner.sessions import SHUTDOWN_SNAPSHOT_S, Claim, SessionError, SessionManager
from runner.shutdown import EXIT_GRACE_S, Step, exit_within
from runner.snapshots import Restore, SnapshotError, SnapshotStore, not_restored, restore_into

logger = logging.getLogger(__name__)

VERSION = "0.1.0"
OFFLINE_KEY = "ash-offline-placeholder"
ANTHROPIC_API = "https://api.anthropic.com"
SCRIPTED_INSIDE = "/opt/ash/scripted"
AGENT_CACHE = 256  # parsed agent configs kept, by digest
# Shutdown budgets (runner.shutdown): past its own, the exit goes on without that close. Each
# is above the bounds the close keeps itself, so a step given up on is a defect to fix.
CLOSE_S = 10.0  # any close not named below
SESSIONS_CLOSE_S = SHUTDOWN_SNAPSHOT_S + 30.0  # late snapshots, then the sandboxes' stops
INTAKE_CLOSE_S = 20.0  # commands in flight get 10 s, then execs and transfers
POOL_CLOSE_S = CLEANUP_DEADLINE_S + 10.0  # warm sandboxes stop, slots go
REAPER_CLOSE_S = 15.0  # the reaper's sweep gets 10 s, then it is killed
NETWORK_CLOSE_S = 30.0  # every network slot destroyed, one at a time


@dataclass(slots=True, eq=False)
class Slot:
    """The generic, option-free part of a sandbox: its directory and its quota disk."""

    id: str
    root: str
    disk: disks.Disk

    @property
    def disk_mb(self) -> int:
        return self.disk.size_mb

    @property
    def workspace(self) -> str:
        return os.path.join(self.disk.path, "workspace")

    @property
    def home(self) -> str:
        return os.path.join(self.disk.path, "home")


@dataclass(slots=True, eq=False)
class Ready:
    """A started sandbox with its connected CLI (and its network slot, in slots mode)."""

    sandbox: Sandbox
    conversation: bridge.Conversation
    options: bridge.AgentOptions
    net: NetworkSlot | None = None
    notice: ErrorInfo | None = None  # restored without its conversation


@dataclass(slots=True)
class Network:
    """Per-sandbox network namespaces and the egress proxy that is their only way out."""

    pool: NetworkPool
    proxy: EgressProxy
    model_host: str


class Runner:
    """Everything one runner process holds, built from its config."""

    def __init__(
        self, config: RunnerConfig, layout: Layout, model_url: str, network: Network | None = None
    ) -> None:
        self.config = config
        self.layout = layout
        self.model_url = model_url
        self.network = network
        self.started_at = time.time()
        self.draining = False  # set on SIGTERM: advertised, and new sessions are refused
        self.execs: ExecService | None = None
        self.cgroups = cgroups.detect()
        self.host = HostCapacity()
        self.disk_backend = disks.detect()
        self.bundles = BundleCache(layout.bundles, os.path.join(config.data_dir, "bundles"))
        self.sandboxes_dir = os.path.join(config.data_dir, "sandboxes")
        self.sessions_dir = os.path.join(config.data_dir, "sessions")
        self.caps = Caps(
            memory_mb=config.memory_mb, cpu_percent=config.cpu_percent, pids=config.pids,
            disk_mb=config.disk_mb, turn_timeout_s=config.turn_timeout_s,
            warm=config.pool_warm_max,
        )
        self._agents: collections.OrderedDict[str, Agent] = collections.OrderedDict()
        self._generation = itertools.count(1)
        self.metrics = RunnerMetrics()
        self.pool: WarmPool[Slot, Ready] = WarmPool(
            self, self.metrics, capacity=config.max_sessions, generic_size=config.pool_generic,
            generic_disk_mb=config.disk_mb, idle_s=config.pool_idle_s,
        )
        self.snapshots = SnapshotStore(
            layout.snapshots, config.id, os.path.join(config.data_dir, "snapshots"),
            max_bytes=config.snapshot_max_mb << 20, js=layout.js,
        )
        self.sessions = SessionManager(
            runner_id=config.id,
            max_sessions=config.max_sessions,
            turn_timeout_s=config.turn_timeout_s,
            acquire=self.claim,
            make_publisher=self.make_publisher,
            snapshots=self.snapshots,
            save_policy=SavePolicy.from_debounce(config.snapshot_debounce_s),
            metrics=self.metrics,
        )
        self.metrics.max_sessions.set(config.max_sessions)
        if config.cli == "claude":
            self.host_cli = bridge.bundled_cli()
        elif config.cli == "standin":
            self.host_cli = os.path.join(bridge.scripted_dir(), "standin_cli.py")
        else:
            self.host_cli = os.path.abspath(config.cli)

    def advert(self) -> RunnerAdvert:
        total, free = self.host.sample()
        return RunnerAdvert(
            runner_id=self.config.id, version=VERSION, started_at=self.started_at,
            sessions=len(self.sessions), max_sessions=self.config.max_sessions,
            cli=self.config.cli, ts=time.time(), scripted_model=self.config.uses_scripted_model,
            warm=self.pool.warm_counts(), draining=self.draining, activity=self.activity(),
            labels=self.config.labels, total=total, free=free, committed=self.pool.committed(),
            sandbox=Resources(memory_mb=self.caps.memory_mb, cpu_percent=self.caps.cpu_percent),
        )

    def activity(self, now: float | None = None) -> dict[str, SessionActivity]:
        """Each session's sandbox here: how old, how idle, whether a turn or an exec runs."""
        now = time.monotonic() if now is None else now
        execs = self.execs
        return {
            s.id: SessionActivity(
                age_s=round(max(0.0, now - s.created_at), 3),
                idle_s=round(max(0.0, now - s.active_at), 3),
                busy=(s.turn is not None and not s.turn.done())
                or (execs is not None and execs.running(s.id) > 0),
                frozen=s.frozen,
                ending=s.ending,
            )
            for s in self.sessions.held()
        }

    async def clean_up_after_crash(self) -> None:
        """Remove what an earlier runner on this dir left: disk mounts, slots, session links."""
        await disks.sweep(self.sandboxes_dir)
        await asyncio.to_thread(shutil.rmtree, self.sandboxes_dir, True)
        os.makedirs(self.sandboxes_dir, mode=0o700, exist_ok=True)
        os.makedirs(self.sessions_dir, mode=0o700, exist_ok=True)
        for entry in os.scandir(self.sessions_dir):
            if entry.is_symlink():
                os.unlink(entry.path)

    # -- agents -------------------------------------------------------------------------------

    async def agent(self, ref: AgentRef) -> Agent:
        """The agent `ref` names, its bundle fetched and its ash.toml applied (cached by digest).

        Raises SessionError: validation_failed for a bad ash.toml, sandbox_failed (retryable)
        when the bundle cannot be fetched.
        """
        cached = self._agents.get(ref.digest)
        if cached is not None and cached.name == ref.name:
            self._agents.move_to_end(ref.digest)
            return cached
        try:
            folder = await self.bundles.folder(ref.digest)
            config = await asyncio.to_thread(agentconf.load, folder)
            mcp_servers = await asyncio.to_thread(agentconf.load_mcp_servers, folder)
        except BundleError as e:
            raise SessionError(ErrorCode.sandbox_failed, str(e), retryable=True) from e
        except AgentConfigError as e:
            raise SessionError(ErrorCode.validation_failed, f"agent {ref.name}: {e}") from e
        agent = Agent(ref.name, ref.digest, folder, agentconf.resolve(config, self.caps),
                      mcp_servers)
        self._agents[ref.digest] = agent
        while len(self._agents) > AGENT_CACHE:
            self._agents.popitem(last=False)
        return agent

    async def warm(self, ref: AgentRef) -> None:
        """Get ready for sessions of `ref` (WarmAgent): fetch, validate, fill its pool."""
        if self.draining:  # no new sessions will come here
            return
        self.pool.want(await self.agent(ref))

    async def claim(self, cmd: CreateSession) -> Claim:
        """A sandbox with a connected CLI for a new session, from the warm pool when it fits;
        restored from a snapshot for `cmd.restore` (cold resume, fork)."""
        if self.draining:
            raise SessionError(ErrorCode.runner_busy, f"runner {self.config.id} is shutting down; "
                               "try another runner", retryable=True)
        phases = Phases()  # each step's time, for Accepted.phases (runner.phases)
        with phases.span("bundle"):
            agent = await self.agent(cmd.agent)
        if cmd.credential is not None and self.network is None:
            raise SessionError(ErrorCode.validation_failed, "a session's own model credential "
                               "needs the egress proxy (ASH_SANDBOX_NET=slots) to stay out of "
                               "its sandbox")
        restore = None
        if cmd.restore:
            with phases.span("snapshot_fetch"):
                restore = await self._fetch_restore(cmd)
        resume = cmd.claude_session_id
        if restore is not None and resume is None and restore.manifest is not None:
            resume = restore.manifest.claude_session_id
        asked = time.perf_counter()
        try:
            lease = await self.pool.acquire(Request(agent, cmd.options, resume, restore, phases))
        finally:
            if restore is not None:
                restore.discard()
        if lease.warm:  # otherwise the pool and `start` timed their parts
            phases.add("claim", (time.perf_counter() - asked) * 1000)
        restored = None
        link = os.path.join(self.sessions_dir, cmd.session_id)
        target = os.path.relpath(lease.slot.disk.path, self.sessions_dir)
        try:
            if cmd.credential is not None:
                self._use_credential(lease.ready, cmd.credential)
            if restore is not None and restore.manifest is not None and not restore.fork:
                with phases.span("snapshot_claim"):
                    restored = await self._claim_snapshot(restore.manifest, restore.info)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
            os.symlink(target, link)
        except BaseException:
            await asyncio.shield(self.pool.release(lease))
            raise
        logger.info("session %s of %s: %s sandbox %s", cmd.session_id, agent.name,
                    "warm" if lease.warm else "restored" if restore else "freshly started",
                    lease.slot.id)

        async def release() -> None:
            with contextlib.suppress(OSError):  # unless the session is here again, on a new slot
                if os.readlink(link) == target:
                    os.unlink(link)
            await self.pool.release(lease)

        ready = lease.ready
        return Claim(sandbox=ready.sandbox, conversation=ready.conversation, options=ready.options,
                     release=release, warm=lease.warm, turn_timeout_s=agent.settings.turn_timeout_s,
                     memory_mb=agent.settings.memory_mb, notice=ready.notice, restored=restored,
                     phases=phases)

    def _use_credential(self, ready: Ready, credential: ModelCredential) -> None:
        """Have the egress proxy send the session's own model key for this sandbox (which
        keeps its placeholder: the key never enters it, and a warm sandbox can be claimed)."""
        assert self.network is not None
        if ready.net is None:
            raise SessionError(ErrorCode.validation_failed, "this sandbox has no network slot")
        try:
            self.network.proxy.set_credentials(ready.net.address, api_key=credential.api_key,
                                               auth_token=credential.auth_token)
        except ValueError as e:
            raise SessionError(ErrorCode.validation_failed,
                               f"credential {credential.name!r} cannot be used: {e}") from None
        logger.info("sandbox %s uses the model credential %r", ready.net.address, credential.name)

    async def _fetch_restore(self, cmd: CreateSession) -> Restore:
        try:
            restore = await self.snapshots.fetch(cmd.restore_from or cmd.session_id)
        except SnapshotError as e:
            raise SessionError(ErrorCode.sandbox_failed, str(e), retryable=True) from e
        restore.fork = cmd.fork
        if restore.manifest is None:
            logger.warning("session %s: no snapshot of %s; restoring from the agent bundle",
                           cmd.session_id, cmd.restore_from or cmd.session_id)
        return restore

    async def _claim_snapshot(self, manifest: SnapshotManifest,
                              info: api.ObjectInfo | None = None) -> SnapshotManifest:
        """Take the restored snapshot over, so that the sandbox it came from (if it still runs
        somewhere) can no longer replace it; without the claim, the first snapshot from here
        would see another writer and refuse."""
        try:
            return await self.snapshots.claim(manifest, secrets.token_hex(8), info)
        except Exception as e:
            logger.warning("session %s: cannot claim its snapshot (%s); continuing",
                           manifest.session_id, e)
            return manifest

    async def snapshot(self, session_id: str, reason: str = "drain") -> SnapshotManifest | None:
        """Snapshot one session now, running turn or not (for the drain; see also
        `self.sessions.snapshot_all`)."""
        return await self.sessions.snapshot(session_id, reason, during_turn=True)

    # -- the warm pool's factory ----------------------------------------------------------------

    async def make_slot(self, disk_mb: int) -> Slot:
        """A slot: a directory and a quota disk of `disk_mb`."""
        slot_id = "sb-" + secrets.token_hex(6)
        root = os.path.join(self.sandboxes_dir, slot_id)
        os.makedirs(root, mode=0o700)
        try:
            return Slot(slot_id, root, await self.disk_backend.make(root, disk_mb))
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, root, True)
            raise

    async def recycle_slot(self, slot: Slot) -> None:
        await slot.disk.wipe()

    async def destroy_slot(self, slot: Slot) -> None:
        await slot.disk.destroy()
        await asyncio.to_thread(shutil.rmtree, slot.root, True)

    async def start(self, slot: Slot, request: Request) -> Ready:
        """A sandbox in `slot` configured for `request`, its CLI connected (timed)."""
        started = time.perf_counter()
        ready = await self._start(slot, request)
        source = "snapshot" if request.restore is not None else "agent"
        self.metrics.sandbox_spawn.labels(source).observe(time.perf_counter() - started)
        return ready

    async def _start(self, slot: Slot, request: Request) -> Ready:
        agent, opts, phases = request.agent, request.options, request.phases
        resume, fork, notice = request.resume, False, None
        if isinstance(request.restore, Restore):
            try:
                # Without a snapshot, restore_into copies the agent folder instead.
                with phases.span("untar" if request.restore.path is not None else "workspace_copy"):
                    resume, notice = await asyncio.to_thread(
                        restore_into, slot.disk.path, request.restore, request.resume,
                        lambda: _fresh_workspace(agent.folder, slot.workspace, slot.home),
                        max_bytes=self.snapshots.max_bytes)
            except SnapshotError as e:
                raise SessionError(ErrorCode.sandbox_failed, str(e), retryable=True) from e
            fork = request.restore.fork and resume is not None
        else:
            with phases.span("workspace_copy"):
                await asyncio.to_thread(_fresh_workspace, agent.folder, slot.workspace, slot.home)
        env = self.sandbox_env(opts.env)  # built by the runner, so every key is meant to pass
        s = agent.settings
        net = None
        if self.network is not None:
            with phases.span("network"):
                net = await self._grant_network(agent, env)
        spec = SandboxSpec(
            sandbox_id=f"{slot.id}-{next(self._generation)}",  # a fresh cgroup per sandbox
            state_dir=os.path.join(slot.root, "sandbox"),
            workspace=slot.workspace,
            home=slot.home,
            cli=self.host_cli,
            extra_ro_binds=((bridge.scripted_dir(), SCRIPTED_INSIDE),),
            env=env,
            extra_env_keys=tuple(env),
            share_net=True,
            netns=net.netns_path if net is not None else None,
            limits=Limits(memory_mb=s.memory_mb, pids=s.pids, cpu_percent=s.cpu_percent,
                          tmp_mb=self.config.tmp_mb),
        )
        sandbox = Sandbox(spec, self.cgroups)
        try:
            with phases.span("sandbox_prepare"):
                await sandbox.prepare()
        except BaseException:
            await asyncio.shield(self._release_network(net))
            raise
        mcp_servers = agentconf.merge_mcp_servers(agent.mcp_servers, opts.mcp_servers)
        options = bridge.AgentOptions(
            host_cli=self.host_cli, cli_inside=CLI_PATH, workspace=sandbox.workspace,
            model=opts.model, system_prompt=opts.system_prompt, resume=resume, fork=fork,
            mcp_servers=mcp_servers, mcp_refused=self._mcp_refusals(agent, mcp_servers),
        )
        conversation = bridge.Conversation(options, sandbox)
        if request.restore is not None and resume is not None:
            # The transcript came along, yet the CLI may still refuse it (a newer format, a
            # file cut short): then a new conversation, with the notice, not a failed session.
            try:
                with phases.span("cli_spawn"):
                    await conversation.connect()
                return Ready(sandbox, conversation, options, net, notice)
            except BaseException as e:
                if not isinstance(e, Exception):
                    await asyncio.shield(self.stop(Ready(sandbox, conversation, options, net)))
                    raise
                tail = " | ".join(conversation.stderr_tail)[-500:] or "it exited"
                with phases.span("cli_spawn"):  # the refused CLI's exit: part of its cost
                    await asyncio.shield(conversation.close())
                logger.warning("CLI could not resume %s: %s; starting a new conversation", resume, tail)
                notice = not_restored(resume, f"the CLI could not resume it: {tail}")
                options = dataclasses.replace(options, resume=None, fork=False)
                conversation = bridge.Conversation(options, sandbox)
        try:
            with phases.span("cli_spawn"):
                await conversation.connect()
        except BaseException as e:
            await asyncio.shield(self.stop(Ready(sandbox, conversation, options, net)))
            if not isinstance(e, Exception):
                raise
            tail = " | ".join(conversation.stderr_tail) or str(e)
            logger.warning("CLI for agent %s did not start: %s", agent.name, tail)
            raise SessionError(ErrorCode.sandbox_failed, f"the agent CLI did not start: {tail}",
                               True) from e
        return Ready(sandbox, conversation, options, net, notice)

    async def stop(self, ready: Ready) -> None:
        try:
            await ready.conversation.close()
        finally:
            try:
                await ready.sandbox.close()
            finally:
                await self._release_network(ready.net)

    async def _grant_network(self, agent: Agent, env: dict[str, str]) -> NetworkSlot:
        """A network slot for a new sandbox, registered with the proxy under the agent's policy.

        The sandbox gets a random placeholder for the model key; the proxy swaps in the real
        one. The egress variables go into `env` last, so a session's env cannot redirect them.
        """
        assert self.network is not None
        try:
            net = await self.network.pool.acquire()
        except NetworkPoolExhausted as e:
            raise SessionError(ErrorCode.runner_busy, f"no free network slot: {e}", True) from e
        rule = agent.settings.network
        placeholder = new_placeholder()
        try:
            self.network.proxy.register(
                net.address,
                policy=rule.policy,
                allowlist=rule.allow or (self.network.model_host,),
                credentials=Credentials(
                    placeholder=placeholder, api_key=self.config.anthropic_api_key or OFFLINE_KEY
                ),
                label=agent.name,
            )
        except ValueError as e:
            await self.network.pool.release(net)
            raise SessionError(ErrorCode.validation_failed, f"agent {agent.name}: {e}") from e
        env.update(egress_env(net.proxy_url, placeholder))
        return net

    def _mcp_refusals(self, agent: Agent, servers: dict[str, dict[str, object]]) -> dict[str, str]:
        """The HTTP MCP servers the sandbox's egress rule refuses (as `_grant_network` sets it)."""
        if self.network is None:
            return {}
        rule = agent.settings.network
        return agentconf.mcp_refusals(servers, Rule.make(
            rule.policy, rule.allow or (self.network.model_host,)))

    async def _release_network(self, net: NetworkSlot | None) -> None:
        if net is None or self.network is None:
            return
        self.network.proxy.unregister(net.address)
        await self.network.pool.release(net)

    def alive(self, ready: Ready) -> bool:
        if ready.conversation.broken:
            return False
        cgroup = ready.sandbox.cgroup
        return not cgroup.procs_files or bool(cgroup.pids())

    def sandbox_env(self, session_env: dict[str, str]) -> dict[str, str]:
        """The CLI's environment. In slots mode the model URL and key are added by
        `_grant_network` (the proxy and a placeholder); only in host mode do they come here."""
        env = {
            "DISABLE_TELEMETRY": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_ERROR_REPORTING": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "CLAUDE_CODE_ENTRYPOINT": "sdk-py",
            "CLAUDE_CODE_SDK_READS_SESSION_STATE": "1",
            "IS_SANDBOX": "1",
            "ASH_SCRIPTED_DIR": SCRIPTED_INSIDE,
        }
        env.update(session_env)
        if self.network is None:
            env["ANTHROPIC_API_KEY"] = self.config.anthropic_api_key or OFFLINE_KEY
            if self.model_url:
                env["ANTHROPIC_BASE_URL"] = self.model_url
        return env

    async def make_publisher(self, session_id: str, fresh: bool) -> EventPublisher:
        seq = 0 if fresh else await last_seq(self.layout.js, session_id)
        return EventPublisher(self.layout.js, session_id, seq)


def _fresh_workspace(agent_dir: str, workspace: str, home: str) -> None:
    # The slot's disk is empty (new or wiped), so this is always a fresh copy of the agent.
    shutil.copytree(agent_dir, workspace, symlinks=True)
    os.makedirs(home, mode=0o700)


async def serve(config: RunnerConfig) -> None:
    """Run until SIGTERM or SIGINT, then drain (a second signal forces the stop) and close
    everything, each close a bounded step; the process then has EXIT_GRACE_S to exit."""
    stop, force = asyncio.Event(), asyncio.Event()
    _stop_on_signals(stop, force)
    logs.set_ids(runner_id=config.id)  # every log line of this process names its runner
    os.makedirs(config.data_dir, mode=0o700, exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        nc = await nats.connect(
            access.servers(config.nats_url), name=f"ash-runner-{config.id}",
            reconnect_time_wait=0.5, max_reconnect_attempts=-1, connect_timeout=5,
            **access.connect_options(
                inbox_prefix=subjects.runner_inbox(config.id), user=config.nats_user,
                password=config.nats_password, tls_ca=config.nats_tls_ca,
                tls_cert=config.nats_tls_cert, tls_key=config.nats_tls_key,
            ),
        )
        stack.push_async_callback(Step("nats", lambda: _close_nats(nc), CLOSE_S))
        layout = await ensure_layout(nc.jetstream())
        model_url = config.model_base_url or config.anthropic_base_url
        if config.uses_scripted_model and not model_url:
            from runner.scripted.model_api import ScriptedModelServer

            server = await _enter(stack, "scripted model",
                                  ScriptedModelServer(host="127.0.0.1", port=0))
            model_url = server.url
            logger.warning("no ANTHROPIC_API_KEY: agents answer from the offline scripted model at %s",
                           model_url)
        network = None
        if config.sandbox_net == "slots":
            network = await _open_network(stack, config, model_url or ANTHROPIC_API)
        runner = Runner(config, layout, model_url, network)
        await runner.clean_up_after_crash()
        # Unmounts what is left of the sandbox disks when this process exits, even by SIGKILL.
        await _enter(stack, "disk reaper", disks.Reaper(runner.sandboxes_dir, sys.executable),
                     REAPER_CLOSE_S)
        # Closes after the sessions release theirs.
        await _enter(stack, "warm pool", runner.pool, POOL_CLOSE_S)
        if config.runner_metrics_port:
            exporter = await _enter(stack, "metrics server", MetricsServer(
                runner.metrics.registry, config.runner_metrics_host, config.runner_metrics_port,
                refresh=lambda: runner.metrics.sessions.set(len(runner.sessions))))
            logger.info("runner %s serves metrics at %s", config.id, exporter.url)
        # Closed in reverse: stop taking commands, end the sessions, then leave the registry, so
        # that coordinators pause the sessions only once their sandboxes (and snapshots) are done.
        heartbeat = Heartbeat(layout.runners, config.id, runner.advert, config.advert_interval_s)
        stack.push_async_callback(Step("heartbeat", heartbeat.close, CLOSE_S))

        async def end_sessions() -> None:
            await runner.sessions.close(0 if force.is_set() else SHUTDOWN_SNAPSHOT_S)

        stack.push_async_callback(Step("sessions", end_sessions, SESSIONS_CLOSE_S))
        runner.execs = ExecService(nc, runner.sessions)
        await _enter(stack, "intake", Intake(
            nc, runner.sessions, warm_agent=runner.warm,
            execs=runner.execs, files=FileService(nc, runner.sessions),
        ), INTAKE_CLOSE_S)
        await heartbeat.start()  # advertised only once commands are served
        logger.info("runner %s ready (cli %s, cgroups %s, disks %s, max %d sessions)", config.id,
                    config.cli, type(runner.cgroups).__name__, runner.disk_backend.name,
                    config.max_sessions)
        await stop.wait()
        logger.info("runner %s draining: %d turns running, up to %g s (a second signal stops "
                    "at once)", config.id, len(runner.sessions.running_turns()),
                    config.drain_timeout_s)
        runner.draining = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(heartbeat.beat(), 2)  # placement skips it from now on
        report = await drain(runner.sessions, deadline_s=config.drain_timeout_s, force=force,
                             snapshot_all=getattr(runner.sessions, "snapshot_all", None))
        logger.info("runner %s drained%s: %d turns finished, %d interrupted, %d snapshots; "
                    "ending %d sessions", config.id, " (forced)" if report.forced else "",
                    len(report.finished), len(report.interrupted), len(report.snapshots),
                    len(runner.sessions.held()))
    logger.info("runner %s stopped", config.id)
    exit_within(EXIT_GRACE_S, f"runner {config.id}")


def _stop_on_signals(stop: asyncio.Event, force: asyncio.Event) -> None:
    """Set `stop` on SIGTERM or SIGINT sent to this process, and `force` on the next one.

    Not `loop.add_signal_handler`: that trusts every signal number written to the loop's
    wakeup pipe, and a forked child that has not exec'd yet (pyroute2 forks to enter network
    namespaces) shares that pipe, so a SIGTERM the runner sends such a child would stop the
    runner itself. A Python-level handler runs only for signals this process received.
    """
    loop = asyncio.get_running_loop()

    received = 0

    def handler(signum: int, frame: object) -> None:
        nonlocal received
        received += 1
        loop.call_soon_threadsafe(stop.set if received == 1 else force.set)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


async def _open_network(
    stack: contextlib.AsyncExitStack, config: RunnerConfig, model_url: str
) -> Network:
    """Build the slot pool and the egress proxy listening on every slot's host end."""
    upstream = ModelUpstream.from_url(model_url)
    pool = await _enter(stack, "network pool", NetworkPool(
        size=config.max_sessions + config.pool_warm_max + 2, proxy_port=config.egress_port,
        subnet=config.net_subnet, prefix=config.netns_prefix,
    ), NETWORK_CLOSE_S)
    proxy = await _enter(stack, "egress proxy", EgressProxy(model=upstream))
    for gateway in pool.gateways():
        await proxy.listen(gateway, config.egress_port)
    # A few slots now; acquire builds the rest on demand (about 50 ms each).
    await pool.populate(min(pool.size, 4))
    return Network(pool=pool, proxy=proxy, model_host=upstream.host)


class _Closing(Protocol):
    """What the exit stack holds: entered once, closed (idempotently) by `close()`."""

    async def __aenter__(self) -> object: ...

    async def close(self) -> None: ...


_C = TypeVar("_C", bound=_Closing)


async def _enter(stack: contextlib.AsyncExitStack, name: str, cm: _C,
                 budget_s: float = CLOSE_S) -> _C:
    """Enter `cm` and have `stack` close it as a bounded shutdown step named `name`."""
    await cm.__aenter__()
    stack.push_async_callback(Step(name, cm.close, budget_s))
    return cm


async def _close_nats(nc: nats.NATS) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.drain(), 5)
    if not nc.is_closed:
        await nc.close()
