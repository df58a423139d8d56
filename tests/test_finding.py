"""Tags and task listing filters in the pure core: validation, updates, tag-filtered claims,
and ``find_tasks`` against a brute-force filter over random task sets, with paging."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runlease.core.commands import (
    ClaimNext,
    CreateTask,
    OpenSession,
    PauseScheduler,
    UpdateTask,
)
from runlease.core.finding import ListFilters, find_tasks
from runlease.core.ids import CLAIM_TOKEN_PREFIX, hash_token, new_secret_token
from runlease.core.machine import Machine
from runlease.core.model import MAX_TAGS, Claim, Ownership, Task
from runlease.errors import (
    INVALID_INPUT,
    NO_CLAIMABLE_RUN,
    PAYLOAD_TOO_LARGE,
    SESSION_NOT_FOUND,
    TASK_NOT_FOUND,
    RunleaseError,
)

T0 = 1_700_000_000.0


@pytest.fixture
def m() -> Iterator[Machine]:
    machine = Machine()
    yield machine
    machine.check_invariants()


def create(machine: Machine, task_id: str, *, start: bool = True, **fields: Any) -> Task:
    fields.setdefault("title", f"title of {task_id}")
    outcome = machine.apply(
        CreateTask(
            now=T0, task_id=task_id, start_run_id=f"run_{task_id}" if start else None, **fields
        )
    )
    assert isinstance(outcome.reply, Task)
    return outcome.reply


def open_session(machine: Machine, session_id: str, agent: str = "agent", **fields: Any) -> None:
    machine.apply(OpenSession(now=T0, session_id=session_id, agent=agent, **fields))


def claim(machine: Machine, session_id: str, **fields: Any) -> ClaimNext:
    return ClaimNext(
        now=T0,
        session_id=session_id,
        claim_token_hash=hash_token(new_secret_token(CLAIM_TOKEN_PREFIX)),
        **fields,
    )


def claimed(machine: Machine, session_id: str, **fields: Any) -> str:
    outcome = machine.apply(claim(machine, session_id, **fields))
    assert isinstance(outcome.reply, Claim)
    return outcome.reply.task.id


def refusal(machine: Machine, command: Any) -> RunleaseError:
    with pytest.raises(RunleaseError) as info:
        machine.apply(command)
    return info.value


# ------------------------------------------------------------------------ tags
def test_tags_are_kept_sorted_and_distinct(m: Machine) -> None:
    task = create(m, "t", tags=["ops", "backend", "ops"])
    assert task.tags == ("backend", "ops")


@pytest.mark.parametrize(
    ("tags", "code"),
    [
        (["two words"], INVALID_INPUT),
        ([""], INVALID_INPUT),
        (["x" * 201], PAYLOAD_TOO_LARGE),
        ([f"t{i}" for i in range(MAX_TAGS + 1)], PAYLOAD_TOO_LARGE),
        ([f"{CLAIM_TOKEN_PREFIX}abc"], INVALID_INPUT),
        ("backend", INVALID_INPUT),
    ],
)
def test_bad_tags_are_refused_like_capabilities(m: Machine, tags: Any, code: str) -> None:
    error = refusal(m, CreateTask(now=T0, task_id="t", title="x", tags=tags))
    assert error.code == code
    assert "t" not in m.tasks


def test_update_replaces_or_edits_tags(m: Machine) -> None:
    create(m, "t", tags=["a", "b"])

    def update(value: object) -> tuple[str, ...]:
        outcome = m.apply(UpdateTask(now=T0, task_id="t", changes={"tags": value}))
        assert isinstance(outcome.reply, Task)
        return outcome.reply.tags

    assert update(["c", "a"]) == ("a", "c")
    assert update({"add": ["d", "a"], "remove": ["c"]}) == ("a", "d")
    assert update({"remove": ["zzz"]}) == ("a", "d")
    assert update([]) == ()
    error = refusal(m, UpdateTask(now=T0, task_id="t", changes={"tags": {"replace": ["x"]}}))
    assert error.code == INVALID_INPUT
    assert m.tasks["t"].tags == ()


def test_a_tag_claim_skips_better_untagged_work(m: Machine) -> None:
    create(m, "urgent", priority="urgent")
    create(m, "gpu-low", priority="low", tags=["gpu"])
    create(m, "gpu-net", priority="medium", tags=["gpu", "net"])
    open_session(m, "s")
    assert claimed(m, "s", tags=["gpu", "net"]) == "gpu-net"
    open_session(m, "s2")
    assert claimed(m, "s2", tags=["gpu"]) == "gpu-low"
    open_session(m, "s3")
    error = refusal(m, claim(m, "s3", tags=["gpu"]))
    assert error.code == NO_CLAIMABLE_RUN
    assert "tagged gpu" in str(error)
    assert claimed(m, "s3") == "urgent"


def test_retagging_a_queued_run_moves_it_between_tag_lanes(m: Machine) -> None:
    create(m, "t", tags=["old"])
    m.apply(UpdateTask(now=T0, task_id="t", changes={"tags": {"add": ["new"], "remove": ["old"]}}))
    open_session(m, "s")
    assert refusal(m, claim(m, "s", tags=["old"])).code == NO_CLAIMABLE_RUN
    assert claimed(m, "s", tags=["new"]) == "t"


def test_bad_claim_tags_are_refused_before_anything_changes(m: Machine) -> None:
    create(m, "t", tags=["a"])
    open_session(m, "s")
    assert refusal(m, claim(m, "s", tags=["has space"])).code == INVALID_INPUT
    assert "run_t" in m.index


# ------------------------------------------------------------------- find_tasks
def ids(tasks: list[Task]) -> list[str]:
    return [t.id for t in tasks]


def test_root_parent_search_and_unknown_references(m: Machine) -> None:
    create(m, "a1", title="Deploy the API", start=False)
    create(m, "a2", title="child", description="touches the api gateway", parent_task_id="a1")
    create(m, "a3", title="grandchild", parent_task_id="a2")
    create(m, "b1", title="other tree", start=False)
    assert ids(find_tasks(m, root="a1")) == ["a1", "a2", "a3"]
    assert ids(find_tasks(m, parent="a1")) == ["a2"]
    assert ids(find_tasks(m, search="API")) == ["a1", "a2"]
    assert ids(find_tasks(m, search="api", root="a2")) == []
    with pytest.raises(RunleaseError) as info:
        find_tasks(m, root="nope")
    assert info.value.code == TASK_NOT_FOUND
    with pytest.raises(RunleaseError) as info:
        find_tasks(m, available_to="ses_nope")
    assert info.value.code == SESSION_NOT_FOUND


def test_available_is_what_the_session_could_claim_now(m: Machine) -> None:
    create(m, "plain")
    create(m, "needs-gpu", required_capabilities=["gpu"])
    create(m, "mine", owner=Ownership(kind="agent_session", ref="s"))
    create(m, "theirs", owner=Ownership(kind="pool", ref="other"))
    create(m, "draft", draft=True, start=False)
    create(m, "elsewhere", workspace_id="w")
    open_session(m, "s")
    assert ids(find_tasks(m, available_to="s")) == ["elsewhere", "mine", "plain"]
    m.apply(PauseScheduler(now=T0, reason="maintenance"))
    assert find_tasks(m, available_to="s") == []


# Random task sets: a small world where every filter has something to find.
WORDS = ["Alpha", "beta", "GAMMA", "delta"]
TAG_NAMES = ["red", "blue", "green"]
OWNERS: list[Ownership | None] = [
    None,
    None,
    Ownership(kind="agent_session", ref="s1"),
    Ownership(kind="pool", ref="pool-a"),
]

task_specs = st.lists(
    st.fixed_dictionaries(
        {
            "parent": st.integers(-1, 30),
            "title": st.sampled_from(WORDS),
            "description": st.sampled_from(["", *WORDS]),
            "priority": st.sampled_from(["low", "medium", "high", "urgent"]),
            "workspace": st.sampled_from([None, None, "w"]),
            "tags": st.frozensets(st.sampled_from(TAG_NAMES), max_size=2),
            "owner": st.sampled_from(OWNERS),
            "caps": st.sampled_from([[], [], ["x"]]),
            "start": st.booleans(),
            "draft": st.booleans(),
        }
    ),
    max_size=25,
)
FILTER_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "status": st.sampled_from(["pending", "ready", "in_progress", "draft"]),
    "priority": st.sampled_from(["low", "high"]),
    "tags": st.sets(st.sampled_from(TAG_NAMES), min_size=1, max_size=2).map(sorted),
    "owner": st.sampled_from(["s1", "pool-a", "nobody"]),
    "parent": st.sampled_from(["t000", "t001", "t003"]),
    "root": st.sampled_from(["t000", "t002"]),
    "workspace": st.sampled_from(["w"]),
    "search": st.sampled_from(["alpha", "ETA", "mm", "zzz"]),
    "available_to": st.sampled_from(["s1", "s2"]),
}
# One or two filters at a time: more would leave almost every answer empty.
filter_sets = st.lists(
    st.one_of([st.tuples(st.just(key), values) for key, values in FILTER_VALUES.items()]),
    min_size=1,
    max_size=2,
).map(dict)


def build(specs: list[dict[str, Any]]) -> Machine:
    machine = Machine()
    open_session(machine, "s1", agent="pool-a", capabilities=["x"])
    open_session(machine, "s2", agent="pool-b")
    open_session(machine, "holder", agent="pool-c", capabilities=["x"])
    for i, spec in enumerate(specs):
        task_id = f"t{i:03d}"
        parent = f"t{spec['parent']:03d}" if 0 <= spec["parent"] < i else None
        workspace = spec["workspace"] if parent is None else machine.tasks[parent].workspace_id
        try:
            create(
                machine,
                task_id,
                start=spec["start"] and not spec["draft"],
                title=spec["title"],
                description=spec["description"],
                priority=spec["priority"],
                workspace_id=workspace,
                tags=sorted(spec["tags"]),
                owner=spec["owner"],
                required_capabilities=spec["caps"],
                parent_task_id=parent,
                draft=spec["draft"],
            )
        except RunleaseError:
            continue  # a graph limit: the task is simply not there
    # One run leased, so in_progress shows up and is not available to anyone.
    with contextlib.suppress(RunleaseError):
        machine.apply(claim(machine, "holder", tags=["red"]))
    return machine


def brute_force(m: Machine, filters: dict[str, Any]) -> list[str]:
    def top(task: Task) -> str:
        while task.parent_task_id is not None:
            task = m.tasks[task.parent_task_id]
        return task.id

    def available(task: Task, session_id: str) -> bool:
        session = m.sessions[session_id]
        run = m.runs.get(task.current_run_id or "")
        owner = task.owner
        return (
            run is not None
            and run.status == "queued"
            and not task.draft
            and not m.scheduler.paused
            and set(task.required_capabilities) <= set(session.capabilities)
            and (
                owner is None
                or (owner.kind == "agent_session" and owner.ref == session.id)
                or (owner.kind == "pool" and owner.ref == session.agent)
            )
        )

    out = []
    for task in m.tasks.values():
        f = filters
        if "status" in f and task.status != f["status"]:
            continue
        if "priority" in f and task.priority != f["priority"]:
            continue
        if "tags" in f and not set(f["tags"]) <= set(task.tags):
            continue
        if "owner" in f and (task.owner is None or task.owner.ref != f["owner"]):
            continue
        if "parent" in f and task.parent_task_id != f["parent"]:
            continue
        if "root" in f and top(task) != f["root"]:
            continue
        if "workspace" in f and task.workspace_id != f["workspace"]:
            continue
        text = (task.title + "\n" + task.description).lower()
        if "search" in f and f["search"].lower() not in text:
            continue
        if "available_to" in f and not available(task, f["available_to"]):
            continue
        out.append(task.id)
    return sorted(out)


@given(specs=task_specs, filters=filter_sets, page=st.integers(1, 7))
def test_find_tasks_matches_a_brute_force_filter_and_pages_cover_it_once(
    specs: list[dict[str, Any]], filters: dict[str, Any], page: int
) -> None:
    machine = build(specs)
    if ("parent" in filters and filters["parent"] not in machine.tasks) or (
        "root" in filters and filters["root"] not in machine.tasks
    ):
        with pytest.raises(RunleaseError):
            find_tasks(machine, **filters)
        return
    wanted = brute_force(machine, filters)
    assert ids(find_tasks(machine, **filters)) == wanted
    paged: list[str] = []
    after: str | None = None
    while True:
        got = ids(find_tasks(machine, after=after, limit=page, **filters))
        assert len(got) <= page
        if not got:
            break
        paged += got
        after = got[-1]
    assert paged == wanted


def test_list_filters_are_the_fields_of_the_list_operation() -> None:
    """The listing's filters are declared twice, as keyword arguments and as the wire
    struct's fields: they must stay the same list."""
    from runlease.operations import ListTasks

    wire = set(ListTasks.__struct_fields__) - {"id", "token", "after", "limit", "available"}
    assert wire == set(ListFilters.__annotations__)
