"""Contenders spread over client processes, released together by one barrier.

The coordinator spawns the processes; each sets up its share of contenders (connections,
sessions), waits on a shared barrier, then runs them and sends back one
:class:`~bench.common.ContenderLog` per contender. A process that fails before the barrier
aborts it, so the coordinator never waits for a start that cannot come.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import threading
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier
from typing import Any

from bench.common import BenchError, ContenderLog, monotonic, split_evenly

FORKSERVER_PRELOAD = ("bench.runlease_systems", "bench.beanstalk", "bench.timing")
SETUP_TIMEOUT = 300.0
# A drain that takes longer than this is a hang, not a measurement.
RUN_TIMEOUT = 3600.0

# (process index, contenders in it, system args, barrier, pipe) -> sends one message:
# ("ready",) once set up, right before waiting on the barrier, then
# ("ok", start, [ContenderLog.to_wire(), ...]); or ("error", traceback text) at any point.
ClientMain = Callable[[int, int, Any, Barrier, Connection], None]


def spawn_context() -> multiprocessing.context.ForkServerContext:
    """Children forked from a fresh, single-threaded fork server that has already imported
    the benchmark modules: they start clean (none of the parent's threads, trio state or
    heap) yet in milliseconds instead of a full interpreter start each."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(FORKSERVER_PRELOAD))
    return ctx


def report_failure(barrier: Barrier | None, conn: Connection) -> None:
    """From a child's ``except`` block: free the coordinator, send the traceback."""
    if barrier is not None:
        barrier.abort()
    with contextlib.suppress(OSError, ValueError):
        conn.send(("error", traceback.format_exc()))


def run_client_processes(
    target: ClientMain, contenders: int, processes: int, args: Any
) -> tuple[float, list[ContenderLog]]:
    """Run ``contenders`` over up to ``processes`` children; (barrier instant, logs)."""
    ctx = spawn_context()
    sizes = split_evenly(contenders, processes)
    barrier = ctx.Barrier(len(sizes) + 1)
    children: list[multiprocessing.process.BaseProcess] = []
    pipes: list[Connection] = []
    try:
        for index, size in enumerate(sizes):
            receive, send = ctx.Pipe(duplex=False)
            child = ctx.Process(target=target, args=(index, size, args, barrier, send), daemon=True)
            child.start()
            send.close()
            children.append(child)
            pipes.append(receive)
        # Each child reports "ready" (or its error, or dies) before anyone is released, so a
        # child that fails while setting up never leaves the others waiting at the barrier.
        for proc, pipe in zip(children, pipes, strict=True):
            message = await_message(proc, pipe, SETUP_TIMEOUT, "setting up")
            if message[0] != "ready":
                raise BenchError(f"a client process said {message[0]!r} instead of ready")
        try:
            barrier.wait(timeout=SETUP_TIMEOUT)
        except threading.BrokenBarrierError:
            errors = _child_errors(pipes) or "a client process never reached the barrier"
            raise BenchError(errors) from None
        released = monotonic()
        starts = [released]
        logs: list[ContenderLog] = []
        for proc, pipe in zip(children, pipes, strict=True):
            message = await_message(proc, pipe, RUN_TIMEOUT, "contending")
            if message[0] != "ok":
                raise BenchError(f"a client process sent {message[0]!r} instead of its result")
            starts.append(message[1])
            logs.extend(ContenderLog.from_wire(item) for item in message[2])
        for finished in children:
            finished.join(30)
        return min(starts), logs
    finally:
        stop_processes(children)
        for pipe in pipes:
            pipe.close()


def await_message(
    child: multiprocessing.process.BaseProcess, pipe: Connection, timeout: float, doing: str
) -> tuple[Any, ...]:
    """The child's next message; BenchError if it sends an error, dies or stays silent."""
    ready = multiprocessing.connection.wait([pipe, child.sentinel], timeout)
    if not ready:
        raise BenchError(f"a child process sent nothing for {timeout:.0f} s while {doing}")
    if pipe not in ready and not pipe.poll(0):
        child.join(1)
        raise BenchError(f"a child process died while {doing} (exit code {child.exitcode})")
    try:
        message = pipe.recv()
    except EOFError:
        child.join(1)
        raise BenchError(
            f"a child process exited while {doing} (exit code {child.exitcode})"
        ) from None
    if not isinstance(message, tuple) or not message:
        raise BenchError(f"a child process sent {message!r}")
    if message[0] == "error":
        raise BenchError(f"a child process failed while {doing}:\n{message[1]}")
    return message


def _child_errors(pipes: list[Connection]) -> str:
    errors: list[str] = []
    for pipe in pipes:
        try:
            if pipe.poll(5):
                message = pipe.recv()
                if isinstance(message, tuple) and message[0] == "error":
                    errors.append(str(message[1]))
        except (EOFError, OSError):
            continue
    return "\n".join(errors)


def stop_processes(children: list[multiprocessing.process.BaseProcess]) -> None:
    for child in children:
        if child.is_alive():
            child.terminate()
    for child in children:
        child.join(10)
        if child.is_alive():
            child.kill()
            child.join(5)
