"""runlease under contention: embedded (trio tasks in this process), over its Unix socket
and over TCP with TLS on loopback (a server process, contenders on connections spread over
client processes), plus the echo floor: the same framing and trio client against a server
that keeps no state at all.
"""

from __future__ import annotations

import cProfile
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from functools import partial
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import trio

from bench.common import (
    BenchError,
    ContenderLog,
    Durability,
    RawRun,
    System,
    Workload,
    monotonic,
    short_socket_dir,
)
from bench.dashboard_watcher import DashboardWatcher, note
from bench.hook_endpoints import dead_endpoint, slow_endpoint
from bench.procs import (
    await_message,
    report_failure,
    run_client_processes,
    spawn_context,
    stop_processes,
)
from runlease import protocol as p
from runlease.client_common import ServerAddress, TlsFiles
from runlease.core.model import Claim, LeaseView, Priority, Run, Session, Task
from runlease.errors import BAD_REQUEST, NO_CLAIMABLE_RUN, NotFound, RunleaseError
from runlease.hooks import Hook
from runlease.runtime.client import open_client
from runlease.runtime.collector import GcTuning
from runlease.runtime.http import HttpServer, serve_http
from runlease.runtime.listeners import server_tls_context
from runlease.runtime.metrics import RuntimeMetrics
from runlease.runtime.runtime import Runtime, open_runtime
from runlease.runtime.server import SocketServer, bind_unix_socket, serve_socket
from runlease.runtime.wire import Wire

Mode = Literal["memory", "relaxed", "durable"]
PRELOAD_WRITERS: Final = 64
CLIENT_PROCESSES: Final = 2
SERVER_START_TIMEOUT: Final = 600.0
# Where the watched rows' server serves its dashboard: plain HTTP on a free loopback port.
LOOPBACK: Final = ServerAddress("tcp", host="127.0.0.1", port=0, tls=False)


class Claimer(Protocol):
    """What a contender needs: the embedded session handle and the trio client both fit."""

    def claim_next(self, *, lease_seconds: float | None = None) -> Awaitable[Claim]: ...

    def complete(self, run_id: str) -> Awaitable[Run]: ...


# ---------------------------------------------------------------------- shared pieces
def runtime_options(mode: Mode, workdir: Path | None) -> dict[str, Any]:
    if mode == "memory":
        return {}
    if workdir is None:
        raise BenchError(f"a {mode} runtime needs a data directory")
    return {"data_dir": workdir / "data", "durability": mode}


async def preload(
    rt: Runtime, priorities: Sequence[str], tags: Sequence[list[str]] | None = None
) -> list[str]:
    """Create one started task per priority (with ``tags[i]`` if given); their run ids, in
    creation order.

    Many writers at once, so a durable runtime batches the creates into few commits
    (preloading is not measured).
    """
    run_ids: list[str] = [""] * len(priorities)

    async def writer(first: int) -> None:
        for i in range(first, len(priorities), PRELOAD_WRITERS):
            priority: Priority = priorities[i]  # type: ignore[assignment]
            task = await rt.create_task(
                f"bench run {i}", priority=priority, start=True, tags=tags[i] if tags else []
            )
            assert task.current_run_id is not None
            run_ids[i] = task.current_run_id

    async with trio.open_nursery() as nursery:
        for first in range(min(PRELOAD_WRITERS, len(priorities))):
            nursery.start_soon(writer, first)
    return run_ids


def verify_runtime(rt: Runtime, expected: Sequence[str]) -> list[str]:
    """The runtime's own view after the drain: every run completed, nothing queued or leased."""
    problems: list[str] = []
    not_done = [rid for rid in expected if rt.get_run(rid).status != "completed"]
    if not_done:
        problems.append(f"runtime: {len(not_done)} runs are not completed (e.g. {not_done[0]})")
    status = rt.status()
    if status.queued_runs or status.leased_runs:
        problems.append(
            f"runtime: {status.queued_runs} runs still queued, {status.leased_runs} leased"
        )
    return problems


async def contend(claimer: Claimer, go: trio.Event, log: ContenderLog, lease: float) -> None:
    """Claim next, complete it, until a claim finds the queue empty."""
    await go.wait()
    clock = time.perf_counter
    while True:
        began = clock()
        try:
            claim = await claimer.claim_next(lease_seconds=lease)
        except NotFound as exc:
            if exc.code != NO_CLAIMABLE_RUN:
                log.errors.append(f"claim refused: {exc.code}: {exc.message}")
            break
        except RunleaseError as exc:
            log.errors.append(f"claim refused: {exc.code}: {exc.message}")
            break
        log.latencies.append(clock() - began)
        run_id = claim.run.id
        try:
            await claimer.complete(run_id)
        except RunleaseError as exc:
            log.errors.append(f"complete {run_id} refused: {exc.code}: {exc.message}")
            continue
        log.completed.append(run_id)
    log.end = monotonic()


Loop = Callable[[Claimer, trio.Event, ContenderLog, float], Awaitable[None]]
# What a contender does between the barrier and the empty queue, by name (the name travels
# to client processes). Issue 7's "complete and claim the next in one request" goes here.
LOOPS: Final[dict[str, Loop]] = {"claim-complete": contend}


# ---------------------------------------------------------------------------- embedded
class EmbeddedRunlease(System):
    """Contenders are trio tasks in this process, each with its own session."""

    family = "runlease-embedded"
    is_runlease = True
    loop = "claim-complete"

    def __init__(self, mode: Mode) -> None:
        self.mode = mode
        self.key = f"embedded-{mode}"
        self.label = f"runlease embedded, {mode}"
        self.durability: Durability = mode

    def run(
        self,
        workload: Workload,
        contenders: int,
        workdir: Path,
        profiler: cProfile.Profile | None = None,
    ) -> RawRun:
        return trio.run(self._run, workload, contenders, workdir, profiler)

    def options(self, workdir: Path) -> dict[str, Any]:
        """The keyword arguments of open_runtime for this row."""
        return runtime_options(self.mode, workdir)

    def watch(self, rt: Runtime) -> Callable[[], Awaitable[None]] | None:
        """What runs beside the contenders while the runtime is open (None: nothing)."""
        return None

    async def _run(
        self,
        workload: Workload,
        contenders: int,
        workdir: Path,
        profiler: cProfile.Profile | None,
    ) -> RawRun:
        async with open_runtime(**self.options(workdir)) as rt, trio.open_nursery() as beside:
            watcher = self.watch(rt)
            if watcher is not None:
                beside.start_soon(watcher)
            expected = await preload(rt, workload.priorities())
            handles = [await rt.open_session(agent=f"bench-{i}") for i in range(contenders)]
            logs = [ContenderLog() for _ in handles]
            go = trio.Event()
            async with trio.open_nursery() as nursery:
                loop = LOOPS[self.loop]
                for handle, log in zip(handles, logs, strict=True):
                    nursery.start_soon(loop, handle, go, log, workload.lease_seconds)
                await trio.sleep(0.01)  # let every contender reach the barrier
                if profiler is not None:
                    profiler.enable()
                start = monotonic()
                go.set()
            if profiler is not None:
                profiler.disable()
            beside.cancel_scope.cancel()
            problems = verify_runtime(rt, expected)
        return RawRun(expected=expected, start=start, contenders=logs, system_problems=problems)


class HookedRunlease(EmbeddedRunlease):
    """The embedded row with a hook on every event whose endpoint is slow or down.

    Beside the plain row it shows what a hook costs the claim path: its dispatcher reads
    the history, posts and retries on the same trio loop, and writes its delivery log.
    """

    def __init__(self, mode: Mode, endpoint: Literal["slow", "dead"]) -> None:
        super().__init__(mode)
        self.endpoint = endpoint
        self.key = f"embedded-{mode}-hook-{endpoint}"
        what = "answers after 2 s" if endpoint == "slow" else "refuses connections"
        self.label = f"runlease embedded, {mode}, hook endpoint {what}"
        self._url = ""

    def run(
        self,
        workload: Workload,
        contenders: int,
        workdir: Path,
        profiler: cProfile.Profile | None = None,
    ) -> RawRun:
        endpoint = slow_endpoint() if self.endpoint == "slow" else dead_endpoint()
        with endpoint as url:
            self._url = url
            return super().run(workload, contenders, workdir, profiler)

    def options(self, workdir: Path) -> dict[str, Any]:
        hook = Hook(kinds=None, target=self._url, secret="bench")
        return {**super().options(workdir), "hooks": [hook]}


class MeteredRunlease(EmbeddedRunlease):
    """The embedded row with its Prometheus metrics on and scraped every second, as a
    monitored server's are: what timing each claim and counting each event cost."""

    family = "runlease-embedded-metered"
    # One scrape a second, as a Prometheus server set to scrape often would.
    SCRAPE_EVERY: Final = 1.0

    def __init__(self, mode: Mode) -> None:
        super().__init__(mode)
        self.key = f"embedded-metered-{mode}"
        self.label = f"runlease embedded, {mode}, metrics scraped every second"
        self.scrapes = 0
        self._metrics = RuntimeMetrics()

    def options(self, workdir: Path) -> dict[str, Any]:
        self._metrics = RuntimeMetrics()
        return {**super().options(workdir), "observers": [self._metrics]}

    def watch(self, rt: Runtime) -> Callable[[], Awaitable[None]]:
        metrics = self._metrics
        metrics.bind(rt)

        async def scrape() -> None:
            while True:
                metrics.render()
                self.scrapes += 1
                await trio.sleep(self.SCRAPE_EVERY)

        return scrape


# ------------------------------------------------------------------------------ socket
class SocketSystem(System):
    """A server process holding the queue; contenders over its Unix socket in 2 processes."""

    server_kind: str = "runlease"
    mode: Mode = "memory"
    loop: str = "claim-complete"
    tls: bool = False  # contenders connect over TCP with TLS instead of the Unix socket

    def run(self, workload: Workload, contenders: int, workdir: Path) -> RawRun:
        with self.server(workload, workdir) as server:
            start, logs = self.contend(server, workload, contenders)
            problems = server.verify()
        return RawRun(
            expected=server.expected,
            start=start,
            contenders=logs,
            system_problems=problems,
            notes={
                "client_processes": min(CLIENT_PROCESSES, contenders),
                "server_cpu_s": server.cpu_seconds,
            },
        )

    def server(self, workload: Workload, workdir: Path) -> ServerProcess:
        return ServerProcess(self.server_kind, self.mode, workdir, workload, tls=self.tls)

    def contend(
        self, server: ServerProcess, workload: Workload, contenders: int
    ) -> tuple[float, list[ContenderLog]]:
        """The contenders' drain against ``server``: (barrier instant, their logs)."""
        return run_client_processes(
            socket_client_main,
            contenders,
            CLIENT_PROCESSES,
            (server.target, workload.lease_seconds, self.loop, server.ca, server.access_token),
        )


class SocketRunlease(SocketSystem):
    family = "runlease-socket"
    is_runlease = True

    def __init__(self, mode: Mode) -> None:
        self.mode = mode
        self.key = f"socket-{mode}"
        self.label = f"runlease socket, {mode}"
        self.durability: Durability = mode


class TlsRunlease(SocketRunlease):
    """The socket rows' server and clients, over TCP on loopback with TLS."""

    tls = True

    def __init__(self, mode: Mode) -> None:
        super().__init__(mode)
        self.key = f"tls-{mode}"
        self.label = f"runlease TCP+TLS, {mode}"


class WatchedRunlease(SocketRunlease):
    """The socket row with the dashboard served over the same runtime, open in a tab that
    follows the live events, and /metrics scraped every second (bench.dashboard_watcher):
    what an operator watching costs the contenders. A watcher that failed or scraped
    nothing makes the row fail its check."""

    family = "runlease-socket-watched"
    server_kind = "watched"
    tab = True  # False: /metrics is scraped, no dashboard tab is open

    def __init__(self, mode: Mode) -> None:
        super().__init__(mode)
        self.key = f"socket-watched-{mode}"
        self.label = f"runlease socket, {mode}, dashboard open and /metrics scraped"

    def run(self, workload: Workload, contenders: int, workdir: Path) -> RawRun:
        with (
            self.server(workload, workdir) as server,
            DashboardWatcher(server.dashboard_url, server.reader_token, tab=self.tab) as watcher,
        ):
            start, logs = self.contend(server, workload, contenders)
            problems = server.verify()
            counts = watcher.finish(server.last_event_seq)
        return RawRun(
            expected=server.expected,
            start=start,
            contenders=logs,
            system_problems=problems + counts.problems(server.last_event_seq),
            notes={
                "client_processes": min(CLIENT_PROCESSES, contenders),
                "server_cpu_s": server.cpu_seconds,
                "watcher": note(counts),
            },
        )


class ScrapedRunlease(WatchedRunlease):
    """The watched row with /metrics scraped every second and no dashboard tab open: the
    scrape's share of what watching costs."""

    family = "runlease-socket-scraped"
    tab = False

    def __init__(self, mode: Mode) -> None:
        super().__init__(mode)
        self.key = f"socket-scraped-{mode}"
        self.label = f"runlease socket, {mode}, /metrics scraped"


class EchoFloor(SocketSystem):
    """Framing, msgpack and the trio client against a server that keeps no state."""

    family = "echo"
    key = "echo"
    label = "echo floor (no queue)"
    durability: Durability = "floor"
    server_kind = "echo"


class ServerProcess:
    """A runlease (or echo) server in a child process, preloaded and listening."""

    def __init__(
        self, kind: str, mode: Mode, workdir: Path, workload: Workload, *, tls: bool = False
    ) -> None:
        self.kind = kind
        self.mode = mode
        self.workdir = workdir
        self.workload = workload
        self._socket_dir = short_socket_dir()
        self.socket_path = self._socket_dir / "rl.sock"
        # Where clients connect (the socket, or the TLS listener's URL once it listens),
        # and the CA file that vouches for its certificate ("" without TLS).
        self.target = str(self.socket_path)
        self.ca = ""
        # The agent token TCP clients authenticate with ("" over the Unix socket).
        self.access_token = ""
        # The watched kind's dashboard (its URL) and the reader token it is watched with.
        self.dashboard_url = ""
        self.reader_token = ""
        # The sequence of the last event, and the CPU seconds the server used since it was
        # ready (the contenders' setup and drain), as of the last "verify".
        self.last_event_seq = 0
        self.cpu_seconds: float | None = None
        server_pem = ""
        if tls:
            self.ca, server_pem = make_test_certificates(self._socket_dir)
        self.expected: list[str] = []
        ctx = spawn_context()
        self._pipe, child_end = ctx.Pipe()
        self._child_end = child_end
        self._process = ctx.Process(
            target=server_main,
            args=(kind, mode, str(workdir), str(self.socket_path), workload, child_end, server_pem),
            daemon=True,
        )

    def __enter__(self) -> ServerProcess:
        self._process.start()
        self._child_end.close()
        message = self._receive(SERVER_START_TIMEOUT)
        if message[0] != "ready":
            raise BenchError(f"the {self.kind} server did not start: {message!r}")
        self.expected = list(message[1])
        if self.ca:
            self.target = str(message[2])
            self.access_token = str(message[3])
        if self.kind == "watched":
            self.dashboard_url = str(message[4])
            self.reader_token = str(message[5])
        return self

    def _receive(self, timeout: float) -> tuple[Any, ...]:
        return await_message(self._process, self._pipe, timeout, f"serving ({self.kind})")

    def verify(self) -> list[str]:
        self._pipe.send("verify")
        message = self._receive(120)
        if len(message) > 3:
            self.last_event_seq = int(message[2])
            self.cpu_seconds = round(float(message[3]), 3)
        return list(message[1])

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self._process.is_alive():
                self._pipe.send("stop")
                self._process.join(60)
        except (OSError, BrokenPipeError):
            pass
        finally:
            stop_processes([self._process])
            self._pipe.close()
            shutil.rmtree(self._socket_dir, ignore_errors=True)


def make_test_certificates(directory: Path) -> tuple[str, str]:
    """A throwaway CA and a certificate for 127.0.0.1 it signed: (CA file, server file)."""
    import trustme  # a test dependency, installed with the dev extra

    ca = trustme.CA()
    ca_pem, server_pem = directory / "ca.pem", directory / "server.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(server_pem))
    return str(ca_pem), str(server_pem)


def server_main(
    kind: str,
    mode: Mode,
    workdir: str,
    socket_path: str,
    workload: Workload,
    conn: Connection,
    server_pem: str = "",
) -> None:
    """Child process: preload, serve, answer "verify", stop on "stop" (or a closed pipe).
    With ``server_pem``, it also listens on loopback TCP with TLS; the ``watched`` kind
    also serves the dashboard and /metrics over HTTP on loopback."""
    try:
        if kind == "echo":
            trio.run(_serve_echo, Path(socket_path), workload, conn)
            Path(socket_path).unlink(missing_ok=True)
        else:
            trio.run(
                _serve_runlease,
                mode,
                Path(workdir),
                Path(socket_path),
                workload,
                conn,
                server_pem,
                kind == "watched",
            )
    except BaseException:
        report_failure(None, conn)


async def _commands(conn: Connection) -> Any:
    try:
        return await trio.to_thread.run_sync(conn.recv, abandon_on_cancel=True)
    except EOFError:
        return "stop"


async def _serve_runlease(
    mode: Mode,
    workdir: Path,
    socket_path: Path,
    workload: Workload,
    conn: Connection,
    server_pem: str = "",
    dashboard: bool = False,
) -> None:
    # With the dashboard, metrics are wired as `runlease serve --http` wires them: counting
    # from before boot, bound once the runtime is open, rendered by each /metrics request.
    metrics = RuntimeMetrics() if dashboard else None
    # Tuned like `runlease serve`, which owns its process the same way.
    async with open_runtime(
        **runtime_options(mode, workdir),
        observers=() if metrics is None else (metrics,),
        gc_tuning=GcTuning(),
    ) as rt:
        if metrics is not None:
            metrics.bind(rt)
        expected = await preload(rt, workload.priorities())
        async with trio.open_nursery() as nursery:
            listen = [ServerAddress.parse("tcp://127.0.0.1:0")] if server_pem else []
            server: SocketServer = await nursery.start(
                partial(
                    serve_socket,
                    rt,
                    socket_path,
                    listen=listen,
                    tls=server_tls_context(server_pem) if server_pem else None,
                )
            )
            # A TCP connection must authenticate: its clients get an agent token.
            secret = (await rt.create_token(name="bench", role="agent")).secret if listen else ""
            # The dashboard's watcher logs in and scrapes with a reader token.
            http: HttpServer | None = None
            reader = ""
            if metrics is not None:
                http = await nursery.start(
                    partial(serve_http, rt, LOOPBACK, metrics=metrics.render)
                )
                reader = (await rt.create_token(name="bench-watcher", role="reader")).secret
            cpu_at_ready = time.process_time()
            conn.send(
                (
                    "ready",
                    expected,
                    server.urls[-1],
                    secret,
                    "" if http is None else http.url,
                    reader,
                )
            )
            while (command := await _commands(conn)) != "stop":
                if command == "verify":
                    cpu = time.process_time() - cpu_at_ready
                    conn.send(("verified", verify_runtime(rt, expected), rt.history.last_seq, cpu))
            server.shutdown()
            await server.wait_stopped()
            if http is not None:
                http.shutdown()
                await http.wait_stopped()


class EchoState:
    """Hands out ``runs`` made-up claims, then NO_CLAIMABLE_RUN; counts completions."""

    def __init__(self, runs: int, lease_seconds: float) -> None:
        self.runs = runs
        self.lease_seconds = lease_seconds
        self.handed = 0
        self.completed = 0
        now = time.time()
        self.task = Task(id="tsk_echo", title="echo", created_at=now, updated_at=now)
        self.session = Session(id="ses_echo", agent="echo", opened_at=now)
        self.token_hash = "sha256:" + "0" * 64

    def reply(self, request: p.AnyRequest) -> p.Reply:
        rid = request.id
        match request:
            case p.Hello():
                return p.Welcome(id=rid, version=p.PROTOCOL_VERSION, server="echo", pid=os.getpid())
            case p.OpenSession():
                return p.SessionOpened(id=rid, session=self.session, token="rl_session_echo")
            case p.ClaimNext():
                if self.handed >= self.runs:
                    return p.ErrorReply(id=rid, code=NO_CLAIMABLE_RUN, message="nothing queued")
                return p.ClaimReply(id=rid, claim=self._claim())
            case p.CompleteRun():
                self.completed += 1
                now = time.time()
                run = Run(
                    id=request.run_id,
                    task_id=self.task.id,
                    status="completed",
                    queued_at=now,
                    ended_at=now,
                )
                return p.RunReply(id=rid, run=run)
        return p.ErrorReply(id=rid, code=BAD_REQUEST, message="the echo server does not do that")

    def _claim(self) -> Claim:
        index = self.handed
        self.handed += 1
        now = time.time()
        until = now + self.lease_seconds
        run = Run(
            id=f"echo-{index}",
            task_id=self.task.id,
            status="claimed",
            session_id=self.session.id,
            claimed_by=self.session.agent,
            claim_token_hash=self.token_hash,
            lease_until=until,
            queued_at=now,
            claimed_at=now,
        )
        lease = LeaseView(
            run_id=run.id,
            session_id=self.session.id,
            lease_until=until,
            claim_token_hash=self.token_hash,
            lease_seconds=self.lease_seconds,
        )
        return Claim(task=self.task, run=run, lease=lease)


async def _echo_connection(state: EchoState, stream: trio.SocketStream) -> None:
    # The real server's framing and IO: every frame of a wake-up decoded, the replies
    # queued and sent together (runlease.runtime.server._read_loop, minus the runtime).
    wire = Wire(stream.socket)
    buffer = p.FrameBuffer()
    async with stream:
        while True:
            try:
                data = await wire.receive_some()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            buffer.feed(data)
            for body in buffer.frames():
                p.append_frame(wire.outbox, state.reply(p.decode_request(body)))
            try:
                await wire.flush()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return


async def _serve_echo(socket_path: Path, workload: Workload, conn: Connection) -> None:
    state = EchoState(workload.runs, workload.lease_seconds)
    raw = bind_unix_socket(socket_path)
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(raw))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, lambda s: _echo_connection(state, s), [listener])
        conn.send(("ready", [f"echo-{i}" for i in range(workload.runs)]))
        while (command := await _commands(conn)) != "stop":
            if command == "verify":
                problems = []
                if state.completed != workload.runs:
                    problems.append(f"echo: {state.completed} completes for {workload.runs} runs")
                conn.send(("verified", problems))
        nursery.cancel_scope.cancel()


def socket_client_main(
    index: int,
    count: int,
    args: tuple[str, float, str, str, str],
    barrier: Barrier,
    conn: Connection,
) -> None:
    """Child process: ``count`` connections, one session each, contending after the barrier.
    ``args``: where to connect (a socket or a URL), lease, loop, the CA file ("": no TLS),
    the access token ("": none)."""
    socket_path, lease, loop, ca, access_token = args
    try:
        start, logs = trio.run(
            _socket_clients, index, count, socket_path, lease, loop, barrier, conn, ca, access_token
        )
        conn.send(("ok", start, [log.to_wire() for log in logs]))
    except BaseException:
        report_failure(barrier, conn)
    finally:
        conn.close()


async def _socket_clients(
    index: int,
    count: int,
    socket_path: str,
    lease: float,
    loop: str,
    barrier: Barrier,
    conn: Connection,
    ca: str = "",
    access_token: str = "",
) -> tuple[float, list[ContenderLog]]:
    tls = TlsFiles(ca=Path(ca)) if ca else None
    async with AsyncExitStack() as stack:
        clients = []
        for i in range(count):
            client = await stack.enter_async_context(
                open_client(socket_path, tls=tls, auth_token=access_token)
            )
            _session, token = await client.open_session(agent=f"bench-{index}-{i}")
            client.session_token = token
            clients.append(client)
        logs = [ContenderLog() for _ in clients]
        go = trio.Event()
        async with trio.open_nursery() as nursery:
            for client, log in zip(clients, logs, strict=True):
                nursery.start_soon(LOOPS[loop], client, go, log, lease)
            conn.send(("ready",))
            await trio.to_thread.run_sync(barrier.wait)
            start = monotonic()
            go.set()
        return start, logs
