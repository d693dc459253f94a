"""SlotStore: physical slots kept crash-safely inside the WAL directory.

(That pg_receivewal and walstream's receiver ignore the slots directory is
checked with the real programs in tests/test_sender_source.py.)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from walstream.lsn import LSN
from walstream.sender.source import DirectorySource
from walstream.storage.directory import WalDirectory
from walstream.storage.slots import SLOTS_DIR, SavedSlot, SlotStore, SlotStoreError


def test_slots_persist_across_a_new_store(tmp_path: Path) -> None:
    store = SlotStore(tmp_path)
    assert store.load() == {}
    store.save(SavedSlot("standby1"))  # CREATE_REPLICATION_SLOT without RESERVE_WAL
    store.save(SavedSlot("standby2", LSN.parse("0/3000000")))
    store.save(SavedSlot("standby1", LSN.parse("1/A0000028"), xmin=731, catalog_xmin=None))
    assert SlotStore(tmp_path).load() == {
        "standby1": SavedSlot("standby1", LSN.parse("1/A0000028"), xmin=731),
        "standby2": SavedSlot("standby2", LSN.parse("0/3000000")),
    }
    assert sorted(os.listdir(tmp_path / SLOTS_DIR)) == ["standby1", "standby2"]
    assert (tmp_path / SLOTS_DIR / "standby1").stat().st_mode & 0o777 == 0o600


def test_a_save_interrupted_by_a_crash_leaves_the_previous_state(tmp_path: Path) -> None:
    store = SlotStore(tmp_path)
    store.save(SavedSlot("s", LSN.parse("0/1000000")))
    # What a crash between writing NAME.tmp and its rename leaves (half written, even).
    (tmp_path / SLOTS_DIR / "s.tmp").write_bytes(b'{"format": 1, "name": "s", "rest')
    (tmp_path / SLOTS_DIR / "t.tmp").write_bytes(b"")  # a slot whose first save never finished
    assert SlotStore(tmp_path).load() == {"s": SavedSlot("s", LSN.parse("0/1000000"))}
    assert os.listdir(tmp_path / SLOTS_DIR) == ["s"]  # the leftovers are gone


def test_drop(tmp_path: Path) -> None:
    store = SlotStore(tmp_path)
    store.save(SavedSlot("a", LSN(0)))
    store.save(SavedSlot("b"))
    store.drop("a")
    assert SlotStore(tmp_path).load() == {"b": SavedSlot("b")}
    with pytest.raises(KeyError):
        store.drop("a")


def test_names_that_are_not_slot_names_never_become_paths(tmp_path: Path) -> None:
    store = SlotStore(tmp_path)
    for name in ("", "../x", "A", "a.b", "x" * 64, "a/b"):
        with pytest.raises(ValueError, match="replication slot name"):
            store.save(SavedSlot(name))
    store.save(SavedSlot("x" * 63))
    assert list(SlotStore(tmp_path).load()) == ["x" * 63]


def test_a_damaged_slot_file_is_an_error_naming_it(tmp_path: Path) -> None:
    store = SlotStore(tmp_path)
    store.save(SavedSlot("s"))
    (tmp_path / SLOTS_DIR / "s").write_text('{"format": 1, "name": "s", "restart_lsn": "zz"}')
    with pytest.raises(SlotStoreError, match=r"slots/s\" is damaged"):
        store.load()
    (tmp_path / SLOTS_DIR / "s").write_text('{"format": 1, "name": "other"}')
    with pytest.raises(SlotStoreError, match="is damaged"):
        store.load()


def test_the_slots_are_invisible_to_the_resume_scan_and_the_source(tmp_path: Path) -> None:
    SlotStore(tmp_path).save(SavedSlot("s", LSN.parse("0/5000000")))
    assert WalDirectory(tmp_path, 1024 * 1024).find_start() is None
    with pytest.raises(Exception, match="no WAL"):
        DirectorySource(tmp_path)
