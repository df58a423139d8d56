"""Storage fails closed: identity, missing stores, checksummed records, coded corruption."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio

from cli_helpers import Server
from runlease import open_runtime
from runlease.errors import (
    RESOURCE_EXHAUSTED,
    STORAGE_CORRUPT,
    STORAGE_FAILED,
    STORE_MISSING,
    InvalidInput,
    Unavailable,
)
from runlease.persistence import store as store_module
from runlease.persistence.store import Store
from runlease.runtime.runtime import Durability
from storage_helpers import (
    MAP_SIZE,
    RESULT_MARK,
    START,
    TITLES,
    build_data_dir,
    probe_boot,
    state_digest,
    used_size,
)

DURABILITIES: list[Durability] = ["durable", "relaxed"]


def built(tmp_path: Path, durability: Durability = "durable") -> tuple[Path, str]:
    data_dir = tmp_path / "data"
    build_data_dir(data_dir, durability)
    return data_dir, state_digest(data_dir, durability)


def identity(data_dir: Path) -> dict[str, object]:
    document: dict[str, object] = json.loads((data_dir / "identity").read_text())
    return document


def open_store(data_dir: Path, durability: Durability = "durable", **kw: bool) -> Store:
    return Store.open(data_dir, durability=durability, map_size=MAP_SIZE, **kw)


# ---------------------------------------------------------------------- identity
def test_identity_file_is_private_names_the_store_and_is_not_written_per_commit(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    with open_store(data_dir) as store:
        first = identity(data_dir)
        assert first["store_id"] == store.store_id
        assert first["durable_seq"] == 0
        assert stat.S_IMODE((data_dir / "identity").stat().st_mode) == 0o600
        store.append([b"a", b"b"])
        assert identity(data_dir)["durable_seq"] == 0  # not on the hot path
        store.write_snapshot(2, b"image")
        assert identity(data_dir)["durable_seq"] == 2  # a durable snapshot records it
        store.append([b"c"])
    assert identity(data_dir) == {"store_id": first["store_id"], "format": 3, "durable_seq": 3}


@pytest.mark.parametrize("durability", DURABILITIES)
@pytest.mark.parametrize("wipe", ["truncate", "delete-data", "delete-db"])
def test_a_wiped_database_is_refused_not_served_empty(
    tmp_path: Path, durability: Durability, wipe: str
) -> None:
    data_dir, _ = built(tmp_path, durability)
    old_id = identity(data_dir)["store_id"]
    if wipe == "truncate":
        os.truncate(data_dir / "db" / "data.mdb", 0)
    elif wipe == "delete-data":
        (data_dir / "db" / "data.mdb").unlink()
    else:
        shutil.rmtree(data_dir / "db")
    for _ in range(2):  # refusing changes nothing, so it refuses again
        with pytest.raises(Unavailable) as info:
            open_store(data_dir, durability)
        assert info.value.code == STORE_MISSING
        assert str(data_dir) in info.value.message
        assert "--fresh-store" in info.value.message
    # The explicit fresh start accepts it and gives the directory a new identity.
    with open_store(data_dir, durability, fresh=True) as store:
        assert store.last_seq() == 0
        assert store.store_id != old_id
    assert identity(data_dir)["store_id"] != old_id
    with open_store(data_dir, durability) as store:  # and from now on it is that store
        assert store.last_seq() == 0


def test_fresh_never_discards_a_store_with_data(tmp_path: Path) -> None:
    data_dir, digest = built(tmp_path)
    with pytest.raises(InvalidInput, match="still holds data"):
        open_store(data_dir, fresh=True)
    assert state_digest(data_dir, "durable") == digest


@pytest.mark.parametrize("durability", DURABILITIES)
def test_deleting_lock_mdb_or_the_lock_file_boots_identical_state(
    tmp_path: Path, durability: Durability
) -> None:
    data_dir, digest = built(tmp_path, durability)
    (data_dir / "db" / "lock.mdb").unlink()
    (data_dir / "lock").unlink()
    assert state_digest(data_dir, durability) == digest


def test_a_missing_identity_file_is_recreated_from_the_database(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir, digest = built(tmp_path)
    before = identity(data_dir)
    (data_dir / "identity").unlink()
    with caplog.at_level(logging.WARNING, logger="runlease.persistence.store"):
        assert state_digest(data_dir, "durable") == digest
    assert "identity file" in caplog.text
    assert identity(data_dir) == before


@pytest.mark.parametrize("garbage", [b"", b"\x00\xff garbage", b'{"store_id": "nothex"}'])
def test_a_garbage_identity_file_is_storage_corrupt(tmp_path: Path, garbage: bytes) -> None:
    data_dir, _ = built(tmp_path)
    (data_dir / "identity").write_bytes(garbage)
    with pytest.raises(Unavailable) as info:
        open_store(data_dir)
    assert info.value.code == STORAGE_CORRUPT
    assert str(data_dir / "identity") in info.value.message


def test_a_database_from_another_store_is_refused(tmp_path: Path) -> None:
    data_dir, _ = built(tmp_path)
    with open_store(tmp_path / "other") as other:
        other.append([b"x"])
    shutil.rmtree(data_dir / "db")
    shutil.copytree(tmp_path / "other" / "db", data_dir / "db")
    with pytest.raises(Unavailable, match="replaced by another one") as info:
        open_store(data_dir)
    assert info.value.code == STORAGE_CORRUPT


def test_a_database_that_went_back_in_time_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with open_store(data_dir) as store:
        store.append([b"a"])
    shutil.copytree(data_dir / "db", tmp_path / "older-db")
    with open_store(data_dir) as store:
        store.append([b"b", b"c"])
    shutil.rmtree(data_dir / "db")
    shutil.copytree(tmp_path / "older-db", data_dir / "db")
    with pytest.raises(Unavailable, match="went back in time") as info:
        open_store(data_dir)
    assert info.value.code == STORAGE_CORRUPT
    assert "sequence 1" in info.value.message
    assert "3" in info.value.message


def _make_legacy(data_dir: Path, bare: list[bytes]) -> None:
    """Rewrite a new store into the shape runlease wrote before identities and checksums."""
    with open_store(data_dir) as store, store._env.begin(write=True) as txn:
        for seq, record in enumerate(bare, start=1):
            txn.put(seq.to_bytes(8, "big"), record, db=store._journal)
        txn.put(b"last_seq", len(bare).to_bytes(8, "big"), db=store._meta)
        txn.put(b"store_format", (1).to_bytes(8, "big"), db=store._meta)
        txn.delete(b"store_id", db=store._meta)
        txn.delete(b"checksummed_from", db=store._meta)
    (data_dir / "identity").unlink()


def test_an_old_data_dir_opens_and_its_unchecksummed_records_still_read(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    bare = [b"\x82old-1", b"\x82old-2"]
    _make_legacy(data_dir, bare)
    with open_store(data_dir) as store:
        assert store.store_id == identity(data_dir)["store_id"]
        store.append([b"new-3"])
        assert list(store.iter_journal()) == [(1, bare[0]), (2, bare[1]), (3, b"new-3")]
        store.checkpoint()
        with store._env.begin() as txn:
            stored = txn.get((3).to_bytes(8, "big"), db=store._journal)
        assert stored is not None
        assert stored[0] == 0xC1
    with open_store(data_dir) as store:  # and the upgrade sticks
        assert [seq for seq, _ in store.iter_journal()] == [1, 2, 3]


def _rewrite_record(data_dir: Path, seq: int, change: bytes) -> None:
    with open_store(data_dir) as store, store._env.begin(write=True) as txn:
        key = seq.to_bytes(8, "big")
        stored = txn.get(key, db=store._journal)
        assert stored is not None
        txn.put(key, change + stored[len(change) :], db=store._journal)


def test_a_damaged_frame_never_passes_for_an_unchecked_old_record(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with open_store(data_dir) as store:
        store.append([b"\x82abc"])
    _rewrite_record(data_dir, 1, b"\x82")  # the magic byte, flipped to a msgpack map
    with open_store(data_dir) as store, pytest.raises(Unavailable) as info:
        list(store.iter_journal())
    assert info.value.code == STORAGE_CORRUPT
    assert "record 1" in info.value.message
    assert "no checksum frame" in info.value.message


def test_a_record_under_the_wrong_key_fails_its_checksum(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with open_store(data_dir) as store:
        store.append([b"one", b"two"])
        store.checkpoint()
        with store._env.begin(write=True) as txn:
            first = txn.get((1).to_bytes(8, "big"), db=store._journal)
            assert first is not None
            txn.put((2).to_bytes(8, "big"), first, db=store._journal)
        with pytest.raises(Unavailable, match=r"record 2 .*checksum mismatch") as info:
            list(store.iter_journal())
        assert info.value.code == STORAGE_CORRUPT


# ------------------------------------------------------------------- corruption
def _flip_in_data_file(data_dir: Path, needle: bytes) -> None:
    """Flip a byte in every copy of ``needle`` (free pages may hold stale copies)."""
    path = data_dir / "db" / "data.mdb"
    raw = bytearray(path.read_bytes())
    at = raw.find(needle)
    assert at >= 0, f"{needle!r} not found in {path}"
    while at >= 0:
        raw[at + len(needle) // 2] ^= 0x20
        at = raw.find(needle, at + 1)
    path.write_bytes(raw)


def test_a_flipped_byte_in_a_task_title_refuses_boot_naming_record_and_file(
    tmp_path: Path,
) -> None:
    data_dir, _ = built(tmp_path)
    # The newest task's title is only in the journal after the newest snapshot.
    _flip_in_data_file(data_dir, TITLES[3].encode())

    async def boot() -> None:
        async with open_runtime(lambda: START, data_dir=data_dir, map_size=MAP_SIZE):
            pytest.fail("served a damaged journal")

    with pytest.raises(Unavailable) as info:
        trio.run(boot)
    assert info.value.code == STORAGE_CORRUPT
    assert "checksum mismatch" in info.value.message
    assert str(data_dir / "db" / "data.mdb") in info.value.message
    assert "journal record" in info.value.message


def test_a_flipped_byte_in_a_completion_result_is_caught(tmp_path: Path) -> None:
    data_dir, _ = built(tmp_path, "relaxed")
    _flip_in_data_file(data_dir, RESULT_MARK.encode())
    answer = probe_boot(data_dir, "relaxed")
    assert answer.get("error") == STORAGE_CORRUPT, answer


@pytest.mark.parametrize("durability", DURABILITIES)
def test_a_half_truncated_data_file_is_refused_without_a_crash(
    tmp_path: Path, durability: Durability
) -> None:
    data_dir, _ = built(tmp_path, durability)
    data_path = data_dir / "db" / "data.mdb"
    os.truncate(data_path, used_size(data_path) // 2)
    answer = probe_boot(data_dir, durability)  # a child: a SIGBUS must not end pytest
    assert answer.get("error") == STORAGE_CORRUPT, answer
    assert "truncated" in answer["message"]
    assert str(data_path) in answer["message"]


def test_a_damaged_meta_page_is_refused_before_lmdb_sees_it(tmp_path: Path) -> None:
    data_dir, _ = built(tmp_path, "relaxed")
    data_path = data_dir / "db" / "data.mdb"
    raw = bytearray(data_path.read_bytes())
    raw[16:20] = b"\x00\x00\x00\x00"  # meta page 0's magic
    page_size = int.from_bytes(raw[16 + 24 : 16 + 28], sys.byteorder) or 4096
    raw[page_size + 16 : page_size + 20] = b"\x00\x00\x00\x00"  # and meta page 1's
    data_path.write_bytes(raw)
    with pytest.raises(Unavailable, match="not a usable LMDB file") as info:
        open_store(data_dir, "relaxed")
    assert info.value.code == STORAGE_CORRUPT


def test_cli_serve_refuses_a_wiped_store_with_exit_6_until_fresh_store(tmp_path: Path) -> None:
    data_dir, _ = built(tmp_path, "relaxed")
    os.truncate(data_dir / "db" / "data.mdb", 0)
    sock = tmp_path / "s.sock"
    args = ("--data-dir", str(data_dir), "--socket", str(sock), "--durability", "relaxed")
    refused = Server.serve(*args)
    try:
        assert refused.wait_exit() == 6
    finally:
        refused.kill()
    error = json.loads(refused.out.lines[0])["error"]
    assert error["code"] == STORE_MISSING
    assert str(data_dir) in error["message"]
    fresh = Server.serve(*args, "--fresh-store")
    try:
        fresh.wait_listening()
        assert fresh.stop() == 0
    finally:
        fresh.kill()


# --------------------------------------------------------------- resource limits
def test_a_descriptor_shortage_while_growing_is_transient(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store.open(tmp_path / "d", durability="durable", map_size=64 * 1024) as store:
        store.append([b"first"])
        real = os.posix_fallocate

        def no_descriptors(fd: int, offset: int, length: int) -> None:
            raise OSError(errno.EMFILE, "Too many open files")

        monkeypatch.setattr(os, "posix_fallocate", no_descriptors)
        store.append([b"x" * 4096] * 40)  # the log takes it; its checkpoint needs a bigger map
        with pytest.raises(Unavailable) as info:
            store.checkpoint()
        assert info.value.code == RESOURCE_EXHAUSTED
        assert "retry later" in info.value.message
        monkeypatch.setattr(os, "posix_fallocate", real)
        # Nothing is lost and the next checkpoint goes through.
        assert [seq for seq, _ in store.iter_journal()] == list(range(1, 42))
        assert store.checkpoint() == 41


def test_growing_the_map_needs_no_new_descriptor(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import resource, sys
        from pathlib import Path
        from runlease.persistence.store import Store
        with Store.open(Path(sys.argv[1]), durability="durable", map_size=64 * 1024) as store:
            store.append([b"first"])
            probe = open(sys.argv[1] + "/probe", "w")  # the lowest free descriptor
            limit = probe.fileno()
            probe.close()
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
            try:
                open(sys.argv[1] + "/probe", "w")
            except OSError:
                pass
            else:
                raise SystemExit("the descriptor limit did not take")
            store.append([b"x" * 4096] * 40)
            print(store.checkpoint(), store.stats().map_grows)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    appended, grows = done.stdout.split()
    assert appended == "41"
    assert int(grows) >= 1


def test_no_space_for_the_durable_reservation_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(Unavailable) as info:
        Store.open(tmp_path / "d", durability="durable")
    assert info.value.code == STORAGE_FAILED
    message = info.value.message
    assert "64.0 MiB" in message
    assert "--durability relaxed" in message
    assert "free" in message
    monkeypatch.undo()
    with Store.open(tmp_path / "d", durability="durable") as store:  # nothing was damaged
        assert store.last_seq() == 0


def test_lmdb_errors_with_a_transient_errno_are_resource_exhausted() -> None:
    assert store_module._is_transient(OSError(errno.ENFILE, "x"))
    assert not store_module._is_transient(OSError(errno.EIO, "x"))
