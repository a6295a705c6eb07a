"""services.common.faust_fixes' reads of faust-streaming's private attributes: each one still
exists in the pinned release and behaves as the hub relies on. A faust upgrade that changes
them fails here first."""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Any

import faust
import pytest
from faust.stores import rocksdb as faust_rocksdb

from services.common import faust_fixes

#: sha256 of the source of the faust functions whose behaviour the prefix scan depends on:
#: ``Store._set`` writes to the db of the current event's partition, ``_db_for_partition``
#: keeps each open db in ``Store._dbs``, ``Table.on_key_set`` changelogs to that partition.
SOURCES: dict[str, Any] = {
    "Store._set": faust_rocksdb.Store._set,
    "Store._db_for_partition": faust_rocksdb.Store._db_for_partition,
    "Table.on_key_set": faust.Table.on_key_set,
}


def _digest(fn: Any) -> str:
    return hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()[:16]


EXPECTED = {
    "Store._set": "4227e561e288d941",
    "Store._db_for_partition": "cb7e67d5f9efc4bc",
    "Table.on_key_set": "a370e35ca55c2c7e",
}


def test_the_pinned_release_is_installed() -> None:
    assert faust.__version__ == faust_fixes.PINNED_FAUST_VERSION
    faust_fixes.require_pinned_faust()


def test_another_release_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faust, "__version__", "0.16.0")
    with pytest.raises(RuntimeError, match=r"0\.15\.3"):
        faust_fixes.require_pinned_faust()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_private_functions_the_scan_relies_on_are_unchanged(name: str) -> None:
    assert _digest(SOURCES[name]) == EXPECTED[name], (
        f"faust-streaming's {name} changed: check that a table write still goes to the "
        "RocksDB store of the current event's partition, then update the digest"
    )


def test_the_store_keeps_its_open_databases_by_partition() -> None:
    store_init = inspect.getsource(faust_rocksdb.Store.__init__)
    assert "self._dbs = {}" in store_init
    assert faust_rocksdb.Store.offset_key.startswith(b"__faust")


@pytest.fixture
def table(tmp_path: Path) -> Any:
    app = faust.App("compat-test", store="rocksdb://", datadir=str(tmp_path))
    return app.Table("results", partitions=3, key_type=bytes, value_type=bytes)


def test_a_prefix_scan_reads_one_patients_entries_from_a_real_rocksdb(table: Any) -> None:
    store = table.data
    db = store._db_for_partition(1)  # what faust opens when the partition is assigned
    other = store._db_for_partition(2)
    for i in range(5):
        db.put(f"MPaaaa|r{i}".encode(), f"v{i}".encode())
    db.put(b"MPaaab|r0", b"someone else")
    db.put(b"MPaaa|r9", b"a shorter master")
    other.put(b"MPaaaa|elsewhere", b"not this partition")
    store.set_persisted_offset(faust.types.TP("t", 1), 42)  # faust's own offset key

    got = faust_fixes.scan_prefix(table, 1, b"MPaaaa|")
    assert got == [(f"MPaaaa|r{i}".encode(), f"v{i}".encode()) for i in range(5)]
    assert faust_fixes.scan_prefix(table, 1, b"MPaaaa|", limit=2) == got[:2]
    assert faust_fixes.scan_prefix(table, 1, b"MPzzzz|") == []
    assert faust_fixes.scan_prefix(table, 0, b"MPaaaa|") == []  # not opened here: nothing
    db.delete(b"MPaaaa|r3")
    assert [k for k, _ in faust_fixes.scan_prefix(table, 1, b"MPaaaa|")] == [
        f"MPaaaa|r{i}".encode() for i in (0, 1, 2, 4)
    ]
    with pytest.raises(ValueError, match="prefix"):
        faust_fixes.scan_prefix(table, 1, b"")
