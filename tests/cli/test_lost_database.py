"""The database lost mid-command is one line (StoreUnavailable), not a traceback with the statement it ran."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
import sqlalchemy.exc as sa_exc

from nightshift.cli import _lost_database, main
from nightshift.db.engine import StoreUnavailable

GONE = "consuming input failed: server closed the connection unexpectedly\n\tThis probably means the server terminated"


def test_a_lost_connection_becomes_one_store_unavailable_line() -> None:
    wrapped = sa_exc.OperationalError("SELECT a_long_statement", {"p": 1}, psycopg.OperationalError(GONE))
    for exc in (wrapped, psycopg.OperationalError(GONE)):
        lost = _lost_database(exc)
        assert isinstance(lost, StoreUnavailable)
        assert "\n" not in str(lost)
        assert "server closed the connection unexpectedly" in str(lost)
        assert "SELECT" not in str(lost)


def test_other_errors_stay_bugs_with_their_traceback() -> None:
    assert _lost_database(ValueError("a bug")) is None
    assert _lost_database(sa_exc.IntegrityError("INSERT", {}, psycopg.IntegrityError("dup"))) is None


def test_a_lock_timeout_is_not_called_a_lost_connection() -> None:
    """A lock timeout, a cancelled statement, a deadlock: OperationalErrors of a live connection."""
    from psycopg import errors

    for kind in (errors.LockNotAvailable, errors.QueryCanceled, errors.DeadlockDetected):
        assert _lost_database(sa_exc.OperationalError("UPDATE", {}, kind("busy"))) is None
    assert isinstance(_lost_database(errors.AdminShutdown("terminating connection")), StoreUnavailable)


def test_a_full_sqlite_disk_anywhere_is_one_store_error_line() -> None:
    import sqlite3

    from nightshift.db.engine import StoreError

    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorname = "SQLITE_FULL"  # type: ignore[attr-defined] - as sqlite3 sets it on a raised error
    lost = _lost_database(sa_exc.OperationalError("INSERT", {}, full))
    assert type(lost) is StoreError
    assert str(lost) == "SQLite refused the command: database or disk is full"


def test_a_sqlite_statement_error_stays_a_bug_with_its_traceback(tmp_path: Path) -> None:
    """A missing column or table, a syntax error: the code's or an unmigrated store's, not the disk's."""
    import sqlite3

    conn = sqlite3.connect(tmp_path / "x.db")
    for statement in ("SELECT nope FROM sqlite_master", "SELECT * FROM no_such_table", "SELEC 1"):
        with pytest.raises(sqlite3.OperationalError) as raised:
            conn.execute(statement)
        assert _lost_database(raised.value) is None, statement
    conn.close()


def test_the_cli_prints_it_in_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import nightshift.cli.scoring as scoring

    def runs_cmd(*args: object, **kwargs: object) -> None:
        raise sa_exc.OperationalError("SELECT 1", {}, psycopg.OperationalError(GONE))

    monkeypatch.setattr(scoring, "settings_from", runs_cmd)
    with pytest.raises(SystemExit) as code:
        main(["runs", "-m", "churn"])
    assert code.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: StoreUnavailable: the database connection was lost mid-command: consuming input")
