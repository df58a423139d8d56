"""/metrics as Prometheus scrapes it: over HTTP from the dashboard's listener, with a bearer
token, while the runtime claims, lets a lease expire and has a run stolen. Time moves only
when the test jumps trio's mock clock (rate 0), so real sockets serve the scrapes while no
lease can run out on its own."""

from __future__ import annotations

import json
import subprocess
from functools import partial
from pathlib import Path

import httpx
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

import runlease
from cli_helpers import RUNLEASE, Server, clean_env, log_event
from runlease.client_common import ServerAddress
from runlease.runtime.http import HttpServer, serve_http
from runlease.runtime.metrics import RuntimeMetrics
from runlease.runtime.runtime import Runtime

LOOPBACK = ServerAddress("tcp", host="127.0.0.1", port=0, tls=False)
COUNTERS = ("runlease_claims_total", "runlease_steals_total", "runlease_lease_expiries_total")


async def scrape(client: httpx.AsyncClient) -> dict[str, float]:
    """The counters above (expiries of every reason summed) from one GET /metrics."""
    answer = await client.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    totals = dict.fromkeys(COUNTERS, 0.0)
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return totals


async def until_queued(rt: Runtime, run_id: str) -> None:
    # The lease clock wakes on the jumped clock; let it (and the commit) run.
    while rt.get_run(run_id).status != "queued":
        await trio.testing.wait_all_tasks_blocked()


async def test_scraped_counters_move_with_a_claim_an_expiry_and_a_steal(
    mock_clock: trio.testing.MockClock,
) -> None:
    metrics = RuntimeMetrics(process=False)
    async with (
        runlease.open_runtime(observers=[metrics]) as rt,
        trio.open_nursery() as nursery,
    ):
        metrics.bind(rt)
        server: HttpServer = await nursery.start(
            partial(serve_http, rt, LOOPBACK, metrics=metrics.render)
        )
        secret = (await rt.create_token(name="prometheus", role="reader")).secret
        async with httpx.AsyncClient(
            base_url=server.url, timeout=30, headers={"Authorization": f"Bearer {secret}"}
        ) as client:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as anonymous:
                assert (await anonymous.get("/metrics")).status_code == 401
            start = await scrape(client)
            assert start == dict.fromkeys(COUNTERS, 0.0)

            task = await rt.create_task("slow", start=True)
            holder = await rt.open_session(agent="holder")
            thief = await rt.open_session(agent="thief")
            claim = await holder.claim_next(lease_seconds=30)
            claimed = await scrape(client)
            assert claimed == {**start, "runlease_claims_total": 1.0}

            mock_clock.jump(31)
            await until_queued(rt, claim.run.id)
            expired = await scrape(client)
            assert expired == {**claimed, "runlease_lease_expiries_total": 1.0}

            await thief.steal(task.id)
            stolen = await scrape(client)
            assert stolen == {**expired, "runlease_steals_total": 1.0}
        server.shutdown()
        await server.wait_stopped()


def test_runlease_serve_http_serves_the_runtimes_metrics(tmp_path: Path) -> None:
    socket = tmp_path / "s.sock"
    server = Server.serve(
        "--data-dir", str(tmp_path / "data"), "--socket", str(socket), "--http", "127.0.0.1:0"
    )
    try:
        url = json.loads(server.log.wait_for(lambda line: log_event(line) == "http_listening", 60))[
            "url"
        ]
        server.wait_listening()
        env = {"RUNLEASE_SOCKET": str(socket)}
        made = subprocess.run(
            [
                *RUNLEASE,
                "token",
                "create",
                "--role",
                "reader",
                "--name",
                "prom",
                "--field",
                "token",
            ],
            env=clean_env(env),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        secret = made.stdout.strip()
        subprocess.run(
            [*RUNLEASE, "task", "create", "one", "--start"],
            env=clean_env(env),
            capture_output=True,
            timeout=60,
            check=True,
        )
        answer = httpx.get(
            f"{url}/metrics", headers={"Authorization": f"Bearer {secret}"}, timeout=30
        )
        assert answer.status_code == 200
        families = {f.name: f for f in text_string_to_metric_families(answer.text)}
        (queued,) = [
            s for s in families["runlease_queued_runs"].samples if s.labels["priority"] == "medium"
        ]
        assert queued.value == 1
        assert server.stop() == 0, server.log.lines
    finally:
        server.kill()
