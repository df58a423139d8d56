"""The operator's web dashboard: an ASGI app over a runtime (see :mod:`.app`), served by
``runlease serve --http`` (:mod:`runlease.runtime.http`)."""

from runlease.dashboard.app import Dashboard, create_app, create_dashboard

__all__ = ["Dashboard", "create_app", "create_dashboard"]
