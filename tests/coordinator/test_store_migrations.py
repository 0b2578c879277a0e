"""The migration plan: a pure function of (database version, known migrations)."""

from __future__ import annotations

import pytest

from coordinator.store.base import SchemaTooNewError
from coordinator.store.migrations import MIGRATIONS, Migration, latest_version, pending, validate

ONE = Migration(1, "one", "CREATE TABLE one (x INTEGER)")
TWO = Migration(2, "two", "CREATE TABLE two (x INTEGER)")
THREE = Migration(3, "three", "CREATE TABLE three (x INTEGER)")


def test_shipped_migrations_are_numbered_1_to_n() -> None:
    validate(MIGRATIONS)

    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert latest_version() == len(MIGRATIONS)


@pytest.mark.parametrize(
    ("current", "expected"),
    [
        (0, [ONE, TWO, THREE]),
        (1, [TWO, THREE]),
        (2, [THREE]),
        (3, []),
    ],
)
def test_pending_is_everything_newer_in_order(current: int, expected: list[Migration]) -> None:
    assert pending(current, [ONE, TWO, THREE]) == expected


def test_a_database_newer_than_the_code_is_refused() -> None:
    with pytest.raises(SchemaTooNewError, match="version 4.*up to 3"):
        pending(4, [ONE, TWO, THREE])


def test_an_empty_list_brings_nothing_and_refuses_any_version() -> None:
    assert pending(0, []) == []
    with pytest.raises(SchemaTooNewError):
        pending(1, [])


@pytest.mark.parametrize(
    "migrations",
    [
        [TWO],  # does not start at 1
        [ONE, THREE],  # a gap
        [TWO, ONE],  # out of order
        [ONE, Migration(2, "one", "SELECT 1")],  # a repeated name
    ],
)
def test_a_malformed_list_is_refused(migrations: list[Migration]) -> None:
    with pytest.raises(ValueError):
        pending(0, migrations)


def test_a_step_runs_its_dialects_sql_and_the_shared_sql_elsewhere() -> None:
    step = Migration(1, "x", "SELECT 1", {"postgres": "SELECT 2"})

    assert (step.sql_for("sqlite"), step.sql_for("postgres")) == ("SELECT 1", "SELECT 2")
    assert (ONE.sql_for("sqlite"), ONE.sql_for("postgres")) == (ONE.sql, ONE.sql)


def test_a_step_refuses_an_unknown_dialect() -> None:
    with pytest.raises(ValueError, match="mysql"):
        Migration(1, "x", "SELECT 1", {"mysql": "SELECT 2"})  # type: ignore[dict-item]


def test_the_initial_schema_differs_between_dialects_only_in_collation() -> None:
    initial = MIGRATIONS[0]

    assert 'COLLATE "C"' not in initial.sql_for("sqlite")
    assert initial.sql_for("postgres").replace(' COLLATE "C"', "") == initial.sql_for("sqlite")
