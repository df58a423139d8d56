"""The dashboard's ASGI application (Starlette, pages rendered by Jinja2).

Every page and every action runs as a request from the operation table, carried out by the
same executor as the socket server's (:class:`~runlease.runtime.calls.Call`), with the
logged-in token as the principal: ``authorize`` decides what a role may do, here as there,
and a refusal is shown with the runtime's own message (HTTP 403 for PERMISSION_DENIED).
The dashboard itself never decides who may do what.

Routes: ``/login`` and ``/logout``; ``/`` the overview, whose parts the browser refreshes
from ``/fragments/overview`` whenever ``/events`` (server-sent events) reports a change;
``/api/overview`` the same figures as JSON; ``/tasks/{id}``; ``POST /actions/...`` the
operator's buttons; ``/metrics`` when a metrics callable is given (bearer token);
``/static/...`` the script and style sheet, read once from the package.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar
from urllib.parse import parse_qs, quote

import msgspec
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runlease import operations as op
from runlease.core.model import AccessToken, Actor, Origin, Task
from runlease.core.views import Overview, TaskDetail
from runlease.dashboard import format as fmt
from runlease.dashboard.auth import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    WebSession,
    WebSessions,
    login,
    new_nonce,
    same_secret,
    token_for,
)
from runlease.dashboard.stream import EventStream, StreamRegistry, event_summary
from runlease.errors import (
    AUTH_TOKEN_REFUSED,
    PERMISSION_DENIED,
    InvalidInput,
    LeaseRefused,
    NotFound,
    RunleaseError,
    Unavailable,
)
from runlease.runtime.calls import Call
from runlease.runtime.runtime import Runtime

R = TypeVar("R")

# Rows of each overview table (leases that run out first, most recently active sessions).
OVERVIEW_ROWS: Final = 50
# Events shown when the overview page opens; the stream adds the new ones above them.
RECENT_EVENTS: Final = 30
# Events of a task page's timeline.
TIMELINE_EVENTS: Final = 500
# How deep, and how many tasks in all, each dependency tree of a task page shows.
TREE_DEPTH: Final = 4
TREE_BUDGET: Final = 60
# The largest form body accepted (a reason, a token secret, a CSRF token).
MAX_FORM_BYTES: Final = 16 * 1024
# Answered to a form whose CSRF token does not match its browser session (HTTP only).
CSRF_REFUSED: Final = "CSRF_REFUSED"

# Pages load nothing from elsewhere, run no inline script and cannot be framed.
SECURITY_HEADERS: Final = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
STATIC_TYPES: Final = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}


class _SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


@dataclass
class Viewer:
    """A logged-in browser on this request: its token (checked in force now), its browser
    session and the call that runs its requests."""

    token: AccessToken
    web: WebSession
    call: Call


@dataclass
class TreeNode:
    """One task in a dependency tree of a task page; ``more`` counts what was cut off."""

    task: Task
    below: list[TreeNode] = field(default_factory=list)
    more: int = 0
    repeated: bool = False


def http_status(exc: RunleaseError) -> int:
    """The HTTP status that says who is at fault, as the error's class does."""
    if exc.code == PERMISSION_DENIED:
        return 403
    if exc.code == AUTH_TOKEN_REFUSED:
        return 401
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, InvalidInput):
        return 400
    if isinstance(exc, LeaseRefused):
        return 409
    if isinstance(exc, Unavailable):
        return 503
    return 500


def _safe_path(path: str | None) -> str:
    """A same-site path to go back to after a login or an action; ``/`` otherwise."""
    if not path or not path.startswith("/") or path.startswith(("//", "/\\")):
        return "/"
    return path


def _static_files() -> dict[str, bytes]:
    folder = importlib.resources.files("runlease.dashboard").joinpath("static")
    return {name: folder.joinpath(name).read_bytes() for name in STATIC_TYPES}


class Dashboard:
    """The application and what it keeps: browser sessions and open event streams."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        metrics: Callable[[], tuple[bytes, str]] | None = None,
        secure_cookies: bool = False,
        sessions: WebSessions | None = None,
    ) -> None:
        self.runtime = runtime
        self.metrics = metrics
        self.secure_cookies = secure_cookies
        self.sessions = sessions if sessions is not None else WebSessions()
        self.streams = StreamRegistry()
        self.static = _static_files()
        self.templates = Environment(
            loader=PackageLoader("runlease.dashboard", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters.update(
            timestamp=fmt.timestamp, span=fmt.span, time_left=fmt.time_left, ago=fmt.ago
        )
        routes = [
            Route("/login", self.login_page, methods=["GET"]),
            Route("/login", self.login_submit, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/", self.index, methods=["GET"]),
            Route("/fragments/overview", self.overview_fragment, methods=["GET"]),
            Route("/api/overview", self.overview_json, methods=["GET"]),
            Route("/events", self.events, methods=["GET"]),
            Route("/tasks/{task_id}", self.task_page, methods=["GET"]),
            Route("/actions/scheduler/pause", self.pause_scheduler, methods=["POST"]),
            Route("/actions/scheduler/resume", self.resume_scheduler, methods=["POST"]),
            Route("/actions/runs/{run_id}/force-release", self.force_release, methods=["POST"]),
            Route("/actions/runs/{run_id}/recover", self.recover_run, methods=["POST"]),
            Route("/actions/tasks/{task_id}/cancel", self.cancel_task, methods=["POST"]),
            Route("/static/{name}", self.static_file, methods=["GET"]),
        ]
        if metrics is not None:
            routes.append(Route("/metrics", self.metrics_page, methods=["GET"]))
        self.app = Starlette(routes=routes, middleware=[Middleware(_SecurityHeaders)])
        self.app.state.dashboard = self

    def close_streams(self) -> None:
        """End every open event stream now and any opened later (a shutdown)."""
        self.streams.close_all()

    # ------------------------------------------------------------------ who is asking
    def viewer(self, request: Request) -> Viewer | None:
        """The logged-in browser behind ``request``, if its token is still in force."""
        cookie = request.cookies.get(SESSION_COOKIE)
        web = self.sessions.get(cookie)
        if web is None:
            return None
        try:
            token = token_for(self.runtime, web)
        except RunleaseError:
            self.sessions.close(cookie)
            return None
        call = Call(
            self.runtime,
            origin=Origin(kind="dashboard", ref=f"token:{token.name}"),
            actor=Actor(kind="token", ref=token.name),
            principal=token,
        )
        return Viewer(token=token, web=web, call=call)

    @staticmethod
    async def run(viewer: Viewer, request: op.Request[R]) -> R:
        """Carry ``request`` out as the viewer, after the role check every surface makes."""
        viewer.call.authorize(request)  # type: ignore[arg-type]
        return await request.execute(viewer.call)

    def _to_login(self, request: Request) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        response = RedirectResponse(f"/login?next={quote(target)}", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @staticmethod
    def _unauthorized() -> Response:
        return JSONResponse(
            {"error": {"code": AUTH_TOKEN_REFUSED, "message": "log in again"}},
            status_code=401,
        )

    # ------------------------------------------------------------------ rendering
    def page(self, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        body = self.templates.get_template(name).render(**context)
        return HTMLResponse(body, status_code=status, headers={"Cache-Control": "no-store"})

    def error_page(self, viewer: Viewer | None, exc: RunleaseError, back: str = "/") -> Response:
        return self.page(
            "message.html",
            http_status(exc),
            viewer=viewer,
            title="Refused" if http_status(exc) in (401, 403) else "Error",
            code=exc.code,
            message=exc.message,
            back=_safe_path(back),
        )

    @staticmethod
    async def form(request: Request) -> dict[str, str]:
        """The fields of a url-encoded form (first value of each), at most
        :data:`MAX_FORM_BYTES`."""
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise InvalidInput(f"the form is larger than {MAX_FORM_BYTES} bytes")
        fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        return {name: values[0] for name, values in fields.items()}

    # ------------------------------------------------------------------ login
    async def login_page(self, request: Request, error: str = "", status: int = 200) -> Response:
        nonce = new_nonce()
        response = self.page(
            "login.html",
            status,
            viewer=None,
            title="Log in",
            nonce=nonce,
            next=_safe_path(request.query_params.get("next")),
            error=error,
        )
        response.set_cookie(
            LOGIN_COOKIE,
            nonce,
            max_age=3600,
            path="/login",
            httponly=True,
            samesite="strict",
            secure=self.secure_cookies,
        )
        return response

    async def login_submit(self, request: Request) -> Response:
        try:
            form = await self.form(request)
        except InvalidInput as exc:
            return await self.login_page(request, exc.message, 413)
        nonce = request.cookies.get(LOGIN_COOKIE)
        if nonce is None or not same_secret(form.get("nonce"), nonce):
            return await self.login_page(
                request, "The login form expired or came from elsewhere; try again.", 403
            )
        try:
            token = login(self.runtime, form.get("token", ""))
        except RunleaseError as exc:
            return await self.login_page(request, exc.message, 401)
        cookie, _ = self.sessions.open(token.id)
        response = RedirectResponse(_safe_path(form.get("next")), status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            path="/",
            httponly=True,
            samesite="strict",
            secure=self.secure_cookies,
        )
        response.delete_cookie(LOGIN_COOKIE, path="/login")
        return response

    async def logout(self, request: Request) -> Response:
        viewer = self.viewer(request)
        if viewer is not None:
            form = await self.form(request)
            if not same_secret(form.get("csrf"), viewer.web.csrf):
                return self._csrf_refused(request, viewer)
        self.sessions.close(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    # ------------------------------------------------------------------ overview
    async def _overview(self, viewer: Viewer) -> Overview:
        return await self.run(viewer, op.GetOverview(limit=OVERVIEW_ROWS))

    def _overview_context(self, viewer: Viewer, overview: Overview) -> dict[str, Any]:
        workspaces = sorted({q.workspace_id or "" for q in overview.queue})
        priorities = ["urgent", "high", "medium", "low"]
        depth = {(q.workspace_id or "", q.priority): q.claimable for q in overview.queue}
        return {
            "viewer": viewer,
            "overview": overview,
            "workspaces": workspaces,
            "priorities": priorities,
            "depth": depth,
            "csrf": viewer.web.csrf,
            "can_operate": viewer.token.role == "operator",
        }

    async def index(self, request: Request) -> Response:
        viewer = self.viewer(request)
        if viewer is None:
            return self._to_login(request)
        try:
            overview = await self._overview(viewer)
            last = overview.last_event_seq
            page = await self.run(
                viewer, op.ListEvents(after_seq=max(last - RECENT_EVENTS, 0), limit=RECENT_EVENTS)
            )
        except RunleaseError as exc:
            return self.error_page(viewer, exc)
        events = [event_summary(e) for e in reversed(page.events) if e.seq <= last]
        return self.page(
            "index.html",
            title="runlease",
            events=events,
            after_seq=last,
            **self._overview_context(viewer, overview),
        )

    async def overview_fragment(self, request: Request) -> Response:
        viewer = self.viewer(request)
        if viewer is None:
            return self._unauthorized()
        try:
            overview = await self._overview(viewer)
        except RunleaseError as exc:
            return self.error_page(viewer, exc)
        return self.page("overview.html", **self._overview_context(viewer, overview))

    async def overview_json(self, request: Request) -> Response:
        viewer = self.viewer(request)
        if viewer is None:
            return self._unauthorized()
        try:
            overview = await self._overview(viewer)
        except RunleaseError as exc:
            return JSONResponse(
                {"error": {"code": exc.code, "message": exc.message}}, http_status(exc)
            )
        return Response(
            msgspec.json.encode(overview),
            media_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    async def events(self, request: Request) -> Response:
        viewer = self.viewer(request)
        if viewer is None:
            return self._unauthorized()
        given = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
        after = int(given) if given.isdigit() else -1
        if after < 0:
            return JSONResponse(
                {"error": {"code": "INVALID_INPUT", "message": "after must be a sequence >= 0"}},
                400,
            )
        try:
            viewer.call.authorize(op.FollowEvents(after_seq=after))  # type: ignore[arg-type]
        except RunleaseError as exc:
            return JSONResponse(
                {"error": {"code": exc.code, "message": exc.message}}, http_status(exc)
            )
        web = viewer.web
        return EventStream(
            self.runtime,
            self.streams,
            after_seq=after,
            still_allowed=lambda: token_for(self.runtime, web),
        )

    # ------------------------------------------------------------------ task page
    async def task_page(self, request: Request) -> Response:
        viewer = self.viewer(request)
        if viewer is None:
            return self._to_login(request)
        task_id = request.path_params["task_id"]
        try:
            detail = await self.run(viewer, op.ShowTask(task_id=task_id))
            timeline = await self.run(
                viewer, op.GetTimeline(task_id=task_id, limit=TIMELINE_EVENTS)
            )
            parents = await self._ancestors(viewer, detail)
            children = await self._tree(viewer, detail, lambda d: d.children)
            upstream = await self._tree(viewer, detail, lambda d: d.blocked_by)
            downstream = await self._tree(viewer, detail, lambda d: d.dependents)
            now = (await self.run(viewer, op.GetSchedulerStatus())).as_of
        except RunleaseError as exc:
            return self.error_page(viewer, exc)
        return self.page(
            "task.html",
            title=f"task {detail.task.id}",
            viewer=viewer,
            csrf=viewer.web.csrf,
            can_operate=viewer.token.role == "operator",
            detail=detail,
            task=detail.task,
            timeline=[event_summary(e) for e in timeline.events],
            timeline_more=timeline.next_after_seq is not None,
            parents=parents,
            children=children,
            upstream=upstream,
            downstream=downstream,
            now=now,
        )

    async def _ancestors(self, viewer: Viewer, detail: TaskDetail) -> list[Task]:
        """The task's parents, nearest last (the root first)."""
        chain: list[Task] = []
        seen = {detail.task.id}
        parent = detail.task.parent_task_id
        while parent is not None and parent not in seen and len(chain) < TREE_BUDGET:
            seen.add(parent)
            above = await self.run(viewer, op.ShowTask(task_id=parent))
            chain.append(above.task)
            parent = above.task.parent_task_id
        chain.reverse()
        return chain

    async def _tree(
        self, viewer: Viewer, root: TaskDetail, edges: Callable[[TaskDetail], Sequence[str]]
    ) -> list[TreeNode]:
        """The tasks ``edges`` leads to from ``root``, nested, breadth first within
        :data:`TREE_DEPTH` levels and :data:`TREE_BUDGET` tasks; a task met again is shown
        once more but not expanded (a diamond in the graph)."""
        budget = TREE_BUDGET
        seen = {root.task.id}
        top: list[TreeNode] = []
        level: list[tuple[list[TreeNode], TreeNode | None, Sequence[str]]] = [
            (top, None, edges(root))
        ]
        for _ in range(TREE_DEPTH):
            following: list[tuple[list[TreeNode], TreeNode | None, Sequence[str]]] = []
            for into, owner, ids in level:
                for index, task_id in enumerate(ids):
                    if budget <= 0:
                        if owner is not None:
                            owner.more += len(ids) - index
                        break
                    budget -= 1
                    detail = await self.run(viewer, op.ShowTask(task_id=task_id))
                    node = TreeNode(task=detail.task, repeated=task_id in seen)
                    into.append(node)
                    if not node.repeated:
                        seen.add(task_id)
                        following.append((node.below, node, edges(detail)))
            level = following
        for _into, owner, ids in level:  # what lies past the last level shown
            if owner is not None:
                owner.more += len(ids)
        return top

    # ------------------------------------------------------------------ actions
    def _csrf_refused(self, request: Request, viewer: Viewer) -> Response:
        message = "the form's CSRF token does not match this login; reload the page and try again"
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse({"error": {"code": CSRF_REFUSED, "message": message}}, 403)
        return self.page(
            "message.html",
            403,
            viewer=viewer,
            title="Refused",
            code=CSRF_REFUSED,
            message=message,
            back="/",
        )

    async def _act(
        self,
        request: Request,
        make: Callable[[dict[str, str]], op.Request[R]],
        done: Callable[[R], str],
    ) -> Response:
        """Carry out one operator action from a form: check the login and the CSRF token,
        run the operation as the viewer, answer JSON to the page's script (which shows the
        message in place) or, without script, go back or show the refusal."""
        viewer = self.viewer(request)
        wants_json = "application/json" in request.headers.get("accept", "")
        if viewer is None:
            return self._unauthorized() if wants_json else self._to_login(request)
        try:
            form = await self.form(request)
        except InvalidInput as exc:
            return self.error_page(viewer, exc)
        if not same_secret(form.get("csrf"), viewer.web.csrf):
            return self._csrf_refused(request, viewer)
        back = _safe_path(form.get("back"))
        try:
            value = await self.run(viewer, make(form))
        except RunleaseError as exc:
            if wants_json:
                return JSONResponse(
                    {"error": {"code": exc.code, "message": exc.message}}, http_status(exc)
                )
            return self.error_page(viewer, exc, back)
        message = done(value)
        if wants_json:
            return JSONResponse({"ok": True, "message": message})
        return RedirectResponse(back, status_code=303)

    @staticmethod
    def _reason(form: dict[str, str]) -> str | None:
        return form.get("reason", "").strip() or None

    async def pause_scheduler(self, request: Request) -> Response:
        return await self._act(
            request,
            lambda form: op.PauseScheduler(reason=self._reason(form)),
            lambda status: "scheduler paused: claims stop until it is resumed",
        )

    async def resume_scheduler(self, request: Request) -> Response:
        return await self._act(
            request,
            lambda form: op.ResumeScheduler(reason=self._reason(form)),
            lambda status: "scheduler running",
        )

    async def force_release(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        return await self._act(
            request,
            lambda form: op.ForceReleaseRun(run_id=run_id, reason=form.get("reason", "").strip()),
            lambda run: f"run {run.id} was taken back and is {run.status}",
        )

    async def recover_run(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        return await self._act(
            request,
            lambda form: op.RecoverRun(run_id=run_id, reason=self._reason(form)),
            lambda run: f"run {run.id} is {run.status} again",
        )

    async def cancel_task(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        return await self._act(
            request,
            lambda form: op.CancelTask(task_id=task_id, reason=self._reason(form)),
            lambda task: f"task {task.id} is {task.status}",
        )

    # ------------------------------------------------------------------ the rest
    async def static_file(self, request: Request) -> Response:
        name = request.path_params["name"]
        body = self.static.get(name)
        if body is None:
            return Response("not found", status_code=404, media_type="text/plain")
        return Response(body, media_type=STATIC_TYPES[name], headers={"Cache-Control": "no-cache"})

    async def metrics_page(self, request: Request) -> Response:
        """Prometheus' scrape: ``Authorization: Bearer <access token>``, any role."""
        scheme, _, secret = request.headers.get("authorization", "").partition(" ")
        challenge = {"WWW-Authenticate": 'Bearer realm="runlease"'}
        if scheme.lower() != "bearer" or not secret.strip():
            return Response(
                "an access token is required: Authorization: Bearer <token>\n",
                status_code=401,
                media_type="text/plain",
                headers=challenge,
            )
        try:
            login(self.runtime, secret)
        except RunleaseError as exc:
            return Response(
                f"{exc.code}: {exc.message}\n",
                status_code=401,
                media_type="text/plain",
                headers=challenge,
            )
        assert self.metrics is not None
        body, content_type = self.metrics()
        return Response(body, headers={"Content-Type": content_type})


def create_dashboard(
    runtime: Runtime,
    *,
    metrics: Callable[[], tuple[bytes, str]] | None = None,
    secure_cookies: bool = False,
    sessions: WebSessions | None = None,
) -> Dashboard:
    """The dashboard of ``runtime``; serve ``.app`` with an ASGI server under trio.

    ``metrics`` answers GET /metrics (body, content type) when given; ``secure_cookies``
    marks cookies Secure (the listener speaks HTTPS)."""
    return Dashboard(runtime, metrics=metrics, secure_cookies=secure_cookies, sessions=sessions)


def create_app(
    runtime: Runtime,
    *,
    metrics: Callable[[], tuple[bytes, str]] | None = None,
    secure_cookies: bool = False,
) -> Starlette:
    """The dashboard's ASGI app alone (its :class:`Dashboard` is ``app.state.dashboard``)."""
    return create_dashboard(runtime, metrics=metrics, secure_cookies=secure_cookies).app


__all__ = [
    "CSRF_REFUSED",
    "Dashboard",
    "TreeNode",
    "Viewer",
    "create_app",
    "create_dashboard",
    "http_status",
]
