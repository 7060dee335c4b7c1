"""A store in one JSON file, safe for several processes on one machine.

Files, beside each other:

``<path>``
    The snapshot: readable JSON with ``format``, ``schema_version``, ``generation`` and
    the lists ``users``, ``sessions``, ``subscriptions`` and ``events`` (one record a line),
    and, in a store upgraded from before schema 4 that held two users the current email
    rule takes for one address, ``legacy_email_keys``: the user that lost the key, mapped
    to the key it keeps (see below).
    It is only ever replaced whole, atomically (temp file, fsync, ``os.replace``, fsync of
    the directory). A snapshot of an older ``schema_version`` is read with the newer
    fields' defaults and rewritten as current when the store opens.
``<path>.journal``
    Append-only JSON lines. Each line is one committed change (the records it puts and
    the sessions it deletes) tagged ``"g"`` with the snapshot generation it applies to.
    A change is written with a single ``write()`` and fdatasync'ed before the call
    returns, so a write costs the same at 10 users and at 100,000.
``<path>.lock``
    An advisory ``flock``: shared for reads, exclusive for writes.

Every operation takes the flock and first catches up with what other processes did:
if the snapshot was replaced (its inode, size or mtime changed) it is reloaded, and
journal lines beyond the ones this process has read are applied. Each process keeps the
snapshot it loaded open, so that file's inode cannot be reused for a later snapshot:
a replaced snapshot is always noticed. The rules are then
checked against up-to-date tables and the change appended while the exclusive lock is
held, so the conditional write, ``record_event`` and ``ingest_event`` (inbox row and
conditional write: one journal line) are atomic across processes too.

When the journal holds more than ``compact_after`` lines *and* more bytes than the
snapshot, the writer compacts: a new snapshot with ``generation + 1``, then the journal
is truncated. A crash between the two leaves old-generation lines in the journal; they
are already in the snapshot and are skipped on replay. Other processes may have read
them, so their read positions point into that journal: the next write does not merely
truncate it (those processes would then read the lines appended after as if they
continued the old ones, or skip them) but compacts again, and the replaced snapshot
sends every process back to the start of the journal. The journal is only ever emptied
right after the snapshot was replaced; the only other truncation drops a torn last line,
past every complete line any process has read.

Crash safety: a torn last journal line (no trailing newline, or not valid JSON) is an
uncommitted write. It is skipped on read and truncated away by the next write; every
earlier line is kept. An unreadable line *followed by* other lines is corruption and
raises :class:`~kavach.errors.StoreCorruptError` naming the file and line number.

Two users stored before schema 4 whose emails only the NFKC step of
:func:`~kavach.stores.base.normalize_email` unifies: the store decides which one keeps the
key when it first loads them, on the users as the snapshot and the journal leave them
(as the SQL store's migration decides on the rows as they are), and writes the
decision to the snapshot at once (``legacy_email_keys``), so it is never made again. A
user who later takes a key the winner gave up keeps it; the loser does not get it back.

Open the store after forking worker processes (a forked child would share the
parent's lock file description); the store notices a fork and reopens its files.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any

from kavach.errors import StoreCorruptError, StoreError
from kavach.records import (
    InboxEvent,
    SessionRecord,
    SubscriptionState,
    UserRecord,
)
from kavach.stores._codec import Record, from_json, to_json
from kavach.stores._table_store import TableStore
from kavach.stores._tables import Change, Tables
from kavach.stores.base import SCHEMA_VERSION

logger = logging.getLogger(__name__)

#: The ``format`` marker of a snapshot file.
SNAPSHOT_FORMAT = "kavach-json-store"
#: Compact once the journal has more lines than this (and more bytes than the snapshot).
DEFAULT_COMPACT_AFTER = 1000

_FileId = tuple[int, int, int, int]


def _file_id(st: os.stat_result) -> _FileId:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _encode_change(change: Change, generation: int) -> bytes:
    """One journal line (with its newline) for ``change``."""
    entry: dict[str, Any] = {"g": generation}
    if change.users:
        entry["users"] = [to_json(user) for user in change.users]
    if change.sessions:
        entry["sessions"] = [to_json(session) for session in change.sessions]
    if change.deleted_sessions:
        entry["deleted_sessions"] = list(change.deleted_sessions)
    if change.subscriptions:
        entry["subscriptions"] = [to_json(state) for state in change.subscriptions]
    if change.events:
        entry["events"] = [to_json(event) for event in change.events]
    return json.dumps(entry, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _section(entry: Mapping[str, Any], name: str) -> list[Any]:
    """The list ``entry`` holds under ``name`` (empty when absent)."""
    items = entry.get(name, [])
    if type(items) is not list:
        raise ValueError(f"{name!r} is not a list")
    return items


def _decode_change(entry: Mapping[str, Any]) -> Change:
    """The :class:`Change` a journal line holds (raises on malformed content)."""
    deleted = tuple(_section(entry, "deleted_sessions"))
    if not all(type(token_hash) is str for token_hash in deleted):
        raise ValueError("'deleted_sessions' holds something other than text")
    return Change(
        users=tuple(from_json(UserRecord, d) for d in _section(entry, "users")),
        sessions=tuple(from_json(SessionRecord, d) for d in _section(entry, "sessions")),
        deleted_sessions=deleted,
        subscriptions=tuple(
            from_json(SubscriptionState, d) for d in _section(entry, "subscriptions")
        ),
        events=tuple(from_json(InboxEvent, d) for d in _section(entry, "events")),
    )


class JsonFileStore(TableStore):
    """A :class:`~kavach.stores.base.Store` kept in a JSON snapshot plus a JSON-lines journal.

    ``path`` is the snapshot file; its directory must exist. ``compact_after`` is the
    journal length (in lines) past which a writer compacts.
    """

    kind = "json"

    def __init__(
        self, path: str | os.PathLike[str], *, compact_after: int = DEFAULT_COMPACT_AFTER
    ) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.journal_path = self.path + ".journal"
        self.lock_path = self.path + ".lock"
        self._directory = os.path.dirname(self.path)
        if not os.path.isdir(self._directory):
            raise StoreError(f"cannot open JSON store {self.path}: directory does not exist")
        self._compact_after = compact_after
        self._lock = threading.RLock()
        self._closed = False
        # What this process has read; reset by _load_snapshot.
        self._tables = Tables()
        self._generation = 0
        self._schema_version = SCHEMA_VERSION
        self._snapshot_id: _FileId | None = None
        self._snapshot_fd: int | None = None  # the loaded snapshot, held open (see above)
        self._snapshot_size = 0
        self._journal_offset = 0  # bytes of complete lines read so far
        self._journal_lines = 0  # complete lines read so far (stale ones included)
        self._journal_size = 0  # journal size at the last catch-up
        self._journal_stale = False  # the journal holds lines of an older generation
        self._journal_readable = True  # the last journal read raised no StoreCorruptError
        self._open_files()
        try:
            with self._locked(writing=True):
                if self._schema_version < SCHEMA_VERSION:
                    # Upgrade: records of older versions read with the new fields' defaults
                    # (version 2 added InboxEvent.claimed_until); mirrors picked by the
                    # relevance rule of version 4 (an ending subscription no longer hides
                    # a renewing one); which of two users the NFKC rule of version 4 takes
                    # for one address keeps the key; rewrite them as current.
                    self._tables.recompute_mirrors()
                    self._compact()
                elif self._tables.undecided_email_keys:
                    # Upgraded before the decision was kept in the file: keep it now.
                    self._compact()
            _fsync_directory(self._directory)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"JsonFileStore({self.path!r})"

    def _open_files(self) -> None:
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        self._pid = os.getpid()
        try:
            self._lock_fd = os.open(self.lock_path, flags, 0o600)
            self._journal_fd = os.open(self.journal_path, flags | os.O_APPEND, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot open JSON store {self.path}: {exc}") from exc

    # -- lifecycle ----------------------------------------------------------------------
    def schema_version(self) -> int:
        """The schema version recorded in the snapshot."""
        with self._locked(writing=False):
            return self._schema_version

    def close(self) -> None:
        """Close the files; later calls raise ``StoreError``. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            files = ("_journal_fd", "_lock_fd", "_snapshot_fd")
            for fd in (getattr(self, name, None) for name in files):
                if fd is not None:
                    with suppress(OSError):
                        os.close(fd)

    def compact(self) -> None:
        """Write a fresh snapshot and empty the journal now (normally automatic)."""
        with self._locked(writing=True):
            self._compact()

    # -- locking and catching up -----------------------------------------------------
    @contextmanager
    def _locked(self, *, writing: bool) -> Iterator[Tables]:
        """Hold the thread lock and the file lock, with the tables caught up."""
        with self._lock:
            if self._closed:
                raise StoreError(f"the JSON store {self.path} is closed")
            if os.getpid() != self._pid:  # forked: get our own lock file description
                os.close(self._lock_fd)
                os.close(self._journal_fd)
                self._open_files()
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX if writing else fcntl.LOCK_SH)
            try:
                self._catch_up(writing=writing)
                yield self._tables
            except OSError as exc:  # reading, compacting: the files failed us
                raise StoreError(f"JSON store {self.path}: {exc}") from exc
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _catch_up(self, *, writing: bool) -> None:
        """Bring the tables up to date with the files (the file lock is held)."""
        try:
            snapshot = os.stat(self.path)
        except FileNotFoundError:
            self._create_snapshot(writing=writing)
            return
        reloaded = _file_id(snapshot) != self._snapshot_id
        if reloaded:
            self._load_snapshot()
        size = os.fstat(self._journal_fd).st_size
        if size < self._journal_offset:  # truncated under us: read everything again
            self._load_snapshot()
            reloaded = True
        if size > self._journal_offset:
            resumed = self._journal_readable and not reloaded
            try:
                self._read_journal(size)
            except StoreCorruptError:
                self._journal_readable = False
                if not resumed:
                    raise
                # Read from where this process had stopped: had the journal been
                # rewritten since (which the rules above prevent), that would not be the
                # start of a line. The files may be fine: read them from the start.
                self._load_snapshot()
                self._read_journal(size)
            self._journal_readable = True
        # Keys decided while loading: decide them on the users as the journal left them.
        self._tables.settle_email_keys()
        self._journal_size = size

    def _create_snapshot(self, *, writing: bool) -> None:
        if not writing or os.fstat(self._journal_fd).st_size > 0:
            raise StoreCorruptError(f"{self.path}: snapshot file is missing")
        self._tables = Tables()
        self._write_snapshot(generation=1)
        self._journal_offset = self._journal_lines = self._journal_size = 0
        self._journal_stale = False

    def _load_snapshot(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise StoreError(f"cannot read {self.path}: {exc}") from exc
        try:
            try:
                snapshot_id = _file_id(os.fstat(fd))
                with open(fd, "rb", closefd=False) as file:
                    data = json.loads(file.read())
            except OSError as exc:
                raise StoreError(f"cannot read {self.path}: {exc}") from exc
            except ValueError as exc:
                raise StoreCorruptError(f"{self.path}: not valid JSON ({exc})") from exc
            tables, generation, version = self._parse_snapshot(data)
        except BaseException:
            os.close(fd)
            raise
        self._tables = tables
        self._generation = generation
        self._schema_version = version
        self._hold_snapshot(fd, snapshot_id)
        self._journal_offset = self._journal_lines = 0
        self._journal_stale = False

    def _hold_snapshot(self, fd: int, snapshot_id: _FileId) -> None:
        """Keep ``fd``, the snapshot now loaded, open: while it is, its inode is not
        reused, so another snapshot can never carry the same file id."""
        previous, self._snapshot_fd = self._snapshot_fd, fd
        self._snapshot_id = snapshot_id
        self._snapshot_size = snapshot_id[2]
        if previous is not None:
            os.close(previous)

    def _parse_snapshot(self, data: object) -> tuple[Tables, int, int]:
        """The tables, generation and schema version of a decoded snapshot."""
        if not isinstance(data, dict) or data.get("format") != SNAPSHOT_FORMAT:
            raise StoreCorruptError(f"{self.path}: not a kavach JSON store snapshot")
        version = data.get("schema_version")
        if type(version) is not int or version < 1:
            raise StoreCorruptError(f"{self.path}: bad schema_version {version!r}")
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this kavach "
                f"supports ({SCHEMA_VERSION}); upgrade kavach"
            )
        generation = data.get("generation")
        if type(generation) is not int or generation < 1:
            raise StoreCorruptError(f"{self.path}: bad generation {generation!r}")
        for name in ("users", "sessions", "subscriptions", "events"):
            if type(data.get(name)) is not list:
                raise StoreCorruptError(f"{self.path}: {name!r} is not a list of records")
        legacy_keys = data.get("legacy_email_keys", {})
        if type(legacy_keys) is not dict or not all(
            type(key) is str for key in legacy_keys.values()
        ):
            raise StoreCorruptError(f"{self.path}: 'legacy_email_keys' is not an object of text")
        tables = Tables()
        tables.legacy_email_keys.update(legacy_keys)  # before the users: they are indexed so
        try:
            tables.apply(
                Change(
                    users=tuple(from_json(UserRecord, d) for d in data["users"]),
                    sessions=tuple(from_json(SessionRecord, d) for d in data["sessions"]),
                    subscriptions=tuple(
                        from_json(SubscriptionState, d) for d in data["subscriptions"]
                    ),
                    events=tuple(from_json(InboxEvent, d) for d in data["events"]),
                )
            )
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise StoreCorruptError(f"{self.path}: malformed record: {exc}") from exc
        tables.drop_unknown_legacy_keys()
        return tables, generation, version

    def _read_journal(self, size: int) -> None:
        """Apply the complete journal lines between what was read and ``size``."""
        start = self._journal_offset
        data = os.pread(self._journal_fd, size - start, start)
        position = 0
        while (end := data.find(b"\n", position)) >= 0:
            number = self._journal_lines + 1
            try:
                entry = json.loads(data[position:end])
            except (ValueError, RecursionError) as exc:  # deep nesting: RecursionError
                if end + 1 == len(data):
                    return  # a torn last line: an uncommitted write, skipped
                raise StoreCorruptError(
                    f"{self.journal_path}: line {number} is not valid JSON ({exc})"
                ) from exc
            self._replay(entry, number)
            position = end + 1
            self._journal_offset = start + position
            self._journal_lines = number
        # Bytes after the last newline are a torn write; the next writer truncates them.

    def _replay(self, entry: object, number: int) -> None:
        where = f"{self.journal_path}: line {number}"
        generation = entry.get("g") if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or not isinstance(generation, int):
            raise StoreCorruptError(f"{where} is not a kavach journal entry")
        if generation < self._generation:
            self._journal_stale = True  # already in the snapshot (crash mid-compaction)
            return
        if generation > self._generation:
            raise StoreCorruptError(f"{where} belongs to a snapshot that is not there")
        try:
            change = _decode_change(entry)
            self._tables.apply(change)  # wrong-typed fields (an int email) fail here
        # OverflowError: an aware time before datetime.min once in UTC (0001-01-01T00:00+01:00)
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise StoreCorruptError(f"{where}: malformed record: {exc}") from exc

    # -- writing --------------------------------------------------------------------------
    def _commit(self, change: Change) -> None:
        """Append ``change`` to the journal, fsync, then apply it (exclusive lock held)."""
        if self._journal_stale or self._tables.undecided_email_keys:
            # The journal's lines are in the snapshot (a compaction stopped before it
            # emptied the journal), but other processes may have read them: emptying
            # it alone would leave their read positions pointing into what is appended
            # next. Compacting replaces the snapshot first, which makes them all reload.
            # (Or a snapshot written without legacy_email_keys was reloaded: keep the
            # decision made on loading it, before this change can depend on it.)
            self._compact()
        line = _encode_change(change, self._generation)
        fd = self._journal_fd
        try:
            if self._journal_size != self._journal_offset:
                os.ftruncate(fd, self._journal_offset)  # drop a torn last line
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(f"short write ({written} of {len(line)} bytes)")
            os.fdatasync(fd)
        except OSError as exc:
            with suppress(OSError):
                os.ftruncate(fd, self._journal_offset)
            self._journal_size = self._journal_offset
            raise StoreError(f"cannot write {self.journal_path}: {exc}") from exc
        self._tables.apply(change)
        self._journal_offset += len(line)
        self._journal_size = self._journal_offset
        self._journal_lines += 1
        if self._journal_lines > self._compact_after and self._journal_offset > self._snapshot_size:
            try:
                self._compact()
            except OSError as exc:  # the change is committed; compaction can wait
                logger.warning("kavach: compacting %s failed: %s", self.path, exc)

    def _compact(self) -> None:
        self._write_snapshot(generation=self._generation + 1)
        # From here the journal's lines are in the snapshot: stale until truncated.
        self._journal_stale = True
        os.ftruncate(self._journal_fd, 0)
        os.fsync(self._journal_fd)
        self._journal_offset = self._journal_lines = self._journal_size = 0
        self._journal_stale = False

    def _write_snapshot(self, *, generation: int) -> None:
        temp_path = self.path + ".tmp"
        data = self._snapshot_bytes(generation)
        fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            os.replace(temp_path, self.path)
            _fsync_directory(self._directory)
            snapshot_id = _file_id(os.fstat(fd))
        except BaseException:
            os.close(fd)
            raise
        self._hold_snapshot(fd, snapshot_id)
        self._generation = generation
        self._schema_version = SCHEMA_VERSION
        self._tables.undecided_email_keys = False  # written with the rest

    def _snapshot_bytes(self, generation: int) -> bytes:
        tables = self._tables
        sections: list[tuple[str, Sequence[Record]]] = [
            ("users", list(tables.users.values())),
            ("sessions", list(tables.sessions.values())),
            ("subscriptions", list(tables.subscriptions.values())),
            ("events", list(tables.events.values())),
        ]
        parts = [
            f'{{\n"format": "{SNAPSHOT_FORMAT}",\n"schema_version": {SCHEMA_VERSION},\n'
            f'"generation": {generation}'
        ]
        for name, records in sections:
            rows = ",\n".join(json.dumps(to_json(r), ensure_ascii=False) for r in records)
            parts.append(f',\n"{name}": [\n{rows}\n]' if rows else f',\n"{name}": []')
        if tables.legacy_email_keys:
            legacy = json.dumps(tables.legacy_email_keys, ensure_ascii=False, sort_keys=True)
            parts.append(f',\n"legacy_email_keys": {legacy}')
        parts.append("\n}\n")
        return "".join(parts).encode()
