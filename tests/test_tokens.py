"""Access tokens in the core: make, expire by time, revoke, and survive replay and snapshots.

The core keeps only a token's hash; a model of names, roles and deadlines says which
tokens are usable at any time, and the machine must agree with it after every step, after
replaying its journal and after a snapshot round trip.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runlease import open_runtime
from runlease.core.commands import CreateToken, OpenSession, RevokeToken
from runlease.core.machine import Machine
from runlease.core.model import ROLES, AccessToken
from runlease.core.snapshot import decode_snapshot, encode_snapshot
from runlease.errors import (
    AUTH_TOKEN_REFUSED,
    CONFLICT,
    INVALID_TRANSITION,
    TOKEN_NOT_FOUND,
    InvalidInput,
    LeaseRefused,
    NotFound,
    RunleaseError,
)
from runlease.persistence.records import decode_command, encode_record


def secret_hash(n: int) -> str:
    return "sha256:" + hashlib.sha256(str(n).encode()).hexdigest()


def create(
    n: int, name: str, role: Any = "agent", ttl: float | None = None, now: float = 0.0
) -> CreateToken:
    return CreateToken(
        now=now,
        token_id=f"tok_{n}",
        name=name,
        role=role,
        token_hash=secret_hash(n),
        ttl_seconds=ttl,
    )


def test_a_token_keeps_only_its_hash_and_expires_by_time_alone() -> None:
    m = Machine()
    token = m.apply(create(1, "ci", "reader", ttl=60, now=100.0)).result()
    assert token == AccessToken(
        id="tok_1",
        name="ci",
        role="reader",
        token_hash=secret_hash(1),
        created_at=100.0,
        expires_at=160.0,
    )
    assert token.usable(159.9)
    assert not token.usable(160.0)
    # No command marks the expiry: the name is free again once the token expired.
    with pytest.raises(InvalidInput) as info:
        m.apply(create(2, "ci", now=159.0))
    assert info.value.code == CONFLICT
    assert m.apply(create(2, "ci", now=160.0)).result().id == "tok_2"


def test_revoke_by_id_or_live_name_and_the_name_is_free_again() -> None:
    m = Machine()
    m.apply(create(1, "deploy", "operator"))
    revoked = m.apply(RevokeToken(now=5.0, ref="deploy")).result()
    assert revoked.revoked_at == 5.0
    assert not revoked.usable(5.0)
    with pytest.raises(InvalidInput) as info:
        m.apply(RevokeToken(now=6.0, ref="tok_1"))
    assert info.value.code == INVALID_TRANSITION
    # A revoked token's name no longer names it; its id still does.
    with pytest.raises(NotFound) as missing:
        m.apply(RevokeToken(now=6.0, ref="deploy"))
    assert missing.value.code == TOKEN_NOT_FOUND
    m.apply(create(2, "deploy", "agent", now=7.0))
    assert m.access_tokens["tok_1"].revoked_at == 5.0
    assert m.access_tokens["tok_2"].revoked_at is None


def test_refusals_change_nothing() -> None:
    m = Machine()
    m.apply(create(1, "a"))
    before = encode_snapshot(m)
    for bad in (
        create(2, "has space"),
        create(3, "b", role="admin"),
        create(4, "b", ttl=0),
        CreateToken(now=0.0, token_id="tok_5", name="c", role="agent", token_hash="plain"),
        CreateToken(now=0.0, token_id="tok_6", name="d", role="agent", token_hash=secret_hash(1)),
        create(1, "e"),  # the id is taken
    ):
        with pytest.raises(RunleaseError):
            m.apply(bad)
    assert encode_snapshot(m) == before


def test_events_name_the_token_but_never_carry_its_hash() -> None:
    m = Machine()
    created = m.apply(create(1, "ci", "agent", ttl=10)).events
    revoked = m.apply(RevokeToken(now=1.0, ref="ci")).events
    assert [e.kind for e in created + revoked] == ["token_created", "token_revoked"]
    assert created[0].data == {
        "token_id": "tok_1",
        "name": "ci",
        "role": "agent",
        "expires_at": 10.0,
    }
    for event in created + revoked:
        assert secret_hash(1) not in repr(event)


def test_a_session_records_the_token_it_was_opened_with() -> None:
    m = Machine()
    m.apply(create(1, "ci"))
    session = m.apply(OpenSession(now=1.0, session_id="ses_1", agent="a", token_id="tok_1"))
    assert session.result().token_id == "tok_1"
    restored = decode_snapshot(encode_snapshot(m))
    assert restored.sessions["ses_1"].token_id == "tok_1"


# ---------------------------------------------------------------- the model test
steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("create"),
            st.sampled_from(["a", "b", "c"]),
            st.sampled_from(ROLES),
            st.none() | st.integers(1, 50).map(float),
        ),
        st.tuples(st.just("revoke"), st.sampled_from(["a", "b", "c", "tok_0", "tok_1", "tok_2"])),
        st.tuples(st.just("wait"), st.integers(1, 40).map(float)),
    ),
    max_size=30,
)


@given(steps)
def test_tokens_agree_with_a_model_after_replay_and_snapshot(plan: list[tuple[Any, ...]]) -> None:
    m = Machine()
    journal: list[bytes] = []
    model: dict[str, dict[str, Any]] = {}  # id -> name, role, expires_at, revoked_at
    now = 1000.0

    def usable(entry: dict[str, Any]) -> bool:
        return entry["revoked_at"] is None and (
            entry["expires_at"] is None or now < entry["expires_at"]
        )

    for step in plan:
        if step[0] == "wait":
            now += step[1]
            continue
        if step[0] == "create":
            _, name, role, ttl = step
            n = len(model)
            cmd: CreateToken | RevokeToken = create(n, name, role, ttl, now)
            taken = any(e["name"] == name and usable(e) for e in model.values())
        else:
            ref = step[1]
            cmd = RevokeToken(now=now, ref=ref)
            target = model.get(ref) or next(
                (e for e in model.values() if e["name"] == ref and usable(e)), None
            )
            taken = target is None or target["revoked_at"] is not None
        try:
            m.apply(cmd)
        except RunleaseError:
            assert taken, step
            continue
        assert not taken, step
        journal.append(encode_record(cmd))
        if isinstance(cmd, CreateToken):
            model[cmd.token_id] = {
                "id": cmd.token_id,
                "name": cmd.name,
                "role": cmd.role,
                "expires_at": None if cmd.ttl_seconds is None else now + cmd.ttl_seconds,
                "revoked_at": None,
            }
        else:
            assert target is not None
            target["revoked_at"] = now

    def view(machine: Machine) -> dict[str, tuple[Any, ...]]:
        return {
            t.id: (t.name, t.role, t.expires_at, t.revoked_at, t.usable(now))
            for t in machine.access_tokens.values()
        }

    expected = {
        e["id"]: (e["name"], e["role"], e["expires_at"], e["revoked_at"], usable(e))
        for e in model.values()
    }
    assert view(m) == expected
    replayed = Machine()
    for record in journal:
        replayed.apply(decode_command(record))
    assert view(replayed) == expected
    restored = decode_snapshot(encode_snapshot(m))
    assert view(restored) == expected
    assert restored.access_token_by_hash == m.access_token_by_hash


# ------------------------------------------------------------ through the runtime
async def test_tokens_survive_a_restart_and_the_secret_is_never_stored(tmp_path: Any) -> None:
    async with open_runtime(data_dir=tmp_path) as rt:
        kept, secret = await rt.create_token(name="ci", role="agent")
        _, revoked_secret = await rt.create_token(name="old", role="reader")
        await rt.revoke_token("old")
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert secret.encode() not in data, path
            assert revoked_secret.encode() not in data, path
    async with open_runtime(data_dir=tmp_path) as rt:
        assert rt.authenticate(secret) == kept
        with pytest.raises(LeaseRefused) as info:
            rt.authenticate(revoked_secret)
        assert info.value.code == AUTH_TOKEN_REFUSED
        assert [t.name for t in rt.access_tokens()] == ["ci", "old"]
