"""``runlease hook``: the delivery log of the hooks configured on ``serve``."""

from __future__ import annotations

from typing import Annotated, Literal

from runlease.cli.context import connect, show
from runlease.cli.output import plain
from runlease.cli.params import Param


def hook_list(
    *,
    status: Annotated[
        Literal["pending", "delivered", "failed"] | None,
        Param(help="Only deliveries in this state."),
    ] = None,
    hook: Annotated[str | None, Param(help="Only this hook's deliveries (its NAME).")] = None,
    limit: Annotated[int | None, Param(help="At most this many deliveries (default 100).")] = None,
) -> int:
    """The hooks and their deliveries, newest first: attempts, status and the last error."""
    with connect() as client:
        report = client.hook_deliveries(status=status, hook=hook, limit=limit)
    return show({"hooks": plain(report.hooks), "deliveries": plain(report.deliveries)})


def hook_retry(delivery_id: str, /) -> int:
    """Send a failed delivery again, with a new round of attempts."""
    with connect() as client:
        delivery = client.retry_hook_delivery(delivery_id)
    return show({"delivery": plain(delivery)})
