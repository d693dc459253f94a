"""Physical replication slots kept in the WAL directory, across sender restarts.

PostgreSQL keeps a slot in ``pg_replslot/NAME/state``; walstream keeps it in
``DIR/.walstream/slots/NAME``, inside the WAL directory it serves, where
pg_receivewal's and walstream's resume scans never look (they read only
names shaped like segments and history files). One small JSON file a slot,
so an operator can read it.

Crash-safe as PostgreSQL's SaveSlotToPath: the new state goes to
``NAME.tmp``, is fsynced, renamed over ``NAME``, and the directory is
fsynced; a ``.tmp`` left by a crash is ignored (and removed) by
:meth:`SlotStore.load`, so a slot is either its old state or its new one.

What is kept is what a physical slot needs across a restart: its name and
``restart_lsn`` (None until WAL is reserved). READ_REPLICATION_SLOT derives
``restart_tli`` from the timeline history, so it is not stored. The xmin
and catalog_xmin a standby's hot-standby feedback sets on a slot
(pg_replication_slots shows them) are kept too, though walstream has no
tuples for them to hold back.

How often to save: a save is two fsyncs (the file, then the directory),
measured at about 0.7 ms on this machine's disk (next to 0.17 ms for one
fdatasync). PostgreSQL writes a physical slot's state only at checkpoints
and keeps it dirty in memory in between (after a crash the slot is older:
more WAL kept, never less). The sender should do the same: save a slot when
it is created (and drop it at once), then at most every few seconds while
replies advance it, and at shutdown, rather than on every standby reply
(a walreceiver replies after every write and flush: hundreds a second under
load).

Used from one thread at a time.

Errors: :class:`SlotStoreError` (a slot file that cannot be read or written;
names the file).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from walstream.errors import Error
from walstream.lsn import LSN

__all__ = ["SLOTS_DIR", "SavedSlot", "SlotStore", "SlotStoreError"]

log = logging.getLogger("walstream.storage.slots")

SLOTS_DIR: Final = Path(".walstream") / "slots"
_FORMAT: Final = 1
_TMP: Final = ".tmp"
# ReplicationSlotValidateName's rule (the grammar gives PostgreSQL's errors
# first): lower case letters, digits and underscores, 1 to NAMEDATALEN - 1
# bytes. It also keeps a name a plain file name: no "/", "." or "..".
_NAME_RE: Final = re.compile(r"[a-z0-9_]{1,63}")


class SlotStoreError(Error):
    """A slot file that cannot be read or written; names the file and the cause."""


@dataclass(frozen=True, slots=True)
class SavedSlot:
    """What a physical replication slot keeps across restarts."""

    name: str
    restart_lsn: LSN | None = None  # None: no WAL reserved yet
    xmin: int | None = None  # from hot-standby feedback (pg_replication_slots.xmin)
    catalog_xmin: int | None = None


class SlotStore:
    """The physical slots of one WAL directory, one file each under ``DIR/.walstream/slots``."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self.path = self.directory / SLOTS_DIR

    def load(self) -> dict[str, SavedSlot]:
        """Every saved slot by name; leftovers of an interrupted save are removed."""
        try:
            entries = sorted(os.listdir(self.path))
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise SlotStoreError(f'could not open directory "{self.path}": {e.strerror}') from e
        slots: dict[str, SavedSlot] = {}
        for name in entries:
            path = self.path / name
            if name.endswith(_TMP):
                # A save interrupted before its rename: the slot is its previous state.
                log.info('removing "%s", left by an interrupted save', path)
                try:
                    path.unlink()
                except OSError as e:
                    log.warning('could not remove "%s": %s', path, e.strerror)
                continue
            if not _NAME_RE.fullmatch(name):
                log.warning('ignoring "%s": not a replication slot name', path)
                continue
            slots[name] = self._read(path, name)
        return slots

    def save(self, slot: SavedSlot) -> None:
        """Write ``slot`` durably, replacing its previous state (see the module on how often)."""
        self._check_name(slot.name)
        created = self._make_dirs()
        final = self.path / slot.name
        tmp = self.path / (slot.name + _TMP)
        state: dict[str, Any] = {
            "format": _FORMAT,
            "name": slot.name,
            "restart_lsn": None if slot.restart_lsn is None else str(LSN(slot.restart_lsn)),
            "xmin": slot.xmin,
            "catalog_xmin": slot.catalog_xmin,
        }
        data = (json.dumps(state, indent=1) + "\n").encode()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, final)
            _fsync_dir(self.path)
            if created:
                _fsync_dir(self.path.parent)
                _fsync_dir(self.directory)
        except OSError as e:
            raise SlotStoreError(
                f'could not write replication slot file "{final}": {e.strerror}'
            ) from e

    def drop(self, name: str) -> None:
        """Remove a slot durably; KeyError if there is none of that name."""
        self._check_name(name)
        path = self.path / name
        try:
            path.unlink()
        except FileNotFoundError:
            raise KeyError(name) from None
        except OSError as e:
            raise SlotStoreError(
                f'could not remove replication slot file "{path}": {e.strerror}'
            ) from e
        try:
            _fsync_dir(self.path)
        except OSError as e:
            raise SlotStoreError(f'could not fsync directory "{self.path}": {e.strerror}') from e

    @staticmethod
    def _check_name(name: str) -> None:
        if not _NAME_RE.fullmatch(name):
            raise ValueError(f'replication slot name "{name}" is not valid')  # the grammar's job

    def _make_dirs(self) -> bool:
        """Create ``.walstream/slots`` if missing; True if it was created (parents to fsync)."""
        if self.path.is_dir():
            return False
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise SlotStoreError(f'could not create directory "{self.path}": {e.strerror}') from e
        return True

    @staticmethod
    def _read(path: Path, name: str) -> SavedSlot:
        try:
            state = json.loads(path.read_bytes())
            if not isinstance(state, dict) or state.get("name") != name:
                raise ValueError("not a slot of this name")
            if state.get("format") != _FORMAT:
                raise ValueError(f"unsupported format {state.get('format')!r}")
            lsn = state.get("restart_lsn")
            xmin, catalog_xmin = state.get("xmin"), state.get("catalog_xmin")
            for value in (xmin, catalog_xmin):
                if value is not None and not isinstance(value, int):
                    raise ValueError(f"invalid xmin {value!r}")
            return SavedSlot(name, None if lsn is None else LSN.parse(lsn), xmin, catalog_xmin)
        except OSError as e:
            raise SlotStoreError(
                f'could not read replication slot file "{path}": {e.strerror}'
            ) from e
        except (ValueError, TypeError, AttributeError) as e:
            raise SlotStoreError(f'replication slot file "{path}" is damaged: {e}') from None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
