"""`nightshift db backup | restore` of a SQLite store: a restore refuses while another process has the database open
(its stale pages would undo the restore), and otherwise puts the backup's content in place, nothing stale left."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nightshift.db.backup import BackupError, backup, restore

CLI = Callable[..., subprocess.CompletedProcess[str]]

HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1])
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("SELECT count(*) FROM runs").fetchall()  # a reader, like the lookup API: the files stay open
print("ready", flush=True)
time.sleep(120)
"""


@pytest.fixture
def holder(sqlite_url: str) -> Iterator[Callable[[], subprocess.Popen[str]]]:
    """Start a process that keeps the store open (a running API, say); stopped at the end."""
    started: list[subprocess.Popen[str]] = []

    def start() -> subprocess.Popen[str]:
        db = sqlite_url.removeprefix("sqlite:///")
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, db], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait(10)


def _keys(cli: CLI, project: Path) -> list[str]:
    r = cli("keys", "list", "--json", "-c", str(project))
    assert r.returncode == 0, r.stderr
    return [k["name"] for k in json.loads(r.stdout)]


def test_backup_then_restore_puts_the_backup_back(
    cli: CLI, bare_project: Path, sqlite_url: str, tmp_path: Path
) -> None:
    assert cli("keys", "create", "--name", "before", "--models", "*", "-c", str(bare_project)).returncode == 0
    target = tmp_path / "backups" / "store.db"
    made = cli("db", "backup", "--to", str(target), "-c", str(bare_project), "--json")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["revision"]
    assert target.is_file()
    assert not Path(f"{target}-wal").exists()  # one self-contained file
    again = cli("db", "backup", "--to", str(target), "-c", str(bare_project))
    assert again.returncode == 1
    assert "already exists" in again.stderr
    assert cli("keys", "create", "--name", "after", "--models", "*", "-c", str(bare_project)).returncode == 0
    assert sorted(_keys(cli, bare_project)) == ["after", "before"]
    restored = cli("db", "restore", "--from", str(target), "-c", str(bare_project))
    assert restored.returncode == 0, restored.stderr
    assert "restored" in restored.stdout
    assert _keys(cli, bare_project) == ["before"]
    db = Path(sqlite_url.removeprefix("sqlite:///"))
    assert not Path(f"{db}-wal").exists()
    assert not Path(f"{db}-shm").exists()


def test_restore_refuses_while_a_process_has_the_store_open(
    cli: CLI, bare_project: Path, tmp_path: Path, holder: Callable[[], subprocess.Popen[str]]
) -> None:
    target = tmp_path / "backup.db"
    assert cli("db", "backup", "--to", str(target), "-c", str(bare_project)).returncode == 0
    assert cli("keys", "create", "--name", "after", "--models", "*", "-c", str(bare_project)).returncode == 0
    reader = holder()
    refused = cli("db", "restore", "--from", str(target), "-c", str(bare_project))
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "refusing to restore" in refused.stderr
    assert f"pid {reader.pid}" in refused.stderr
    as_json = cli("db", "restore", "--from", str(target), "-c", str(bare_project), "--json")
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["error"] == "BackupError"
    assert _keys(cli, bare_project) == ["after"]  # nothing changed
    reader.kill()
    reader.wait(10)
    done = cli("db", "restore", "--from", str(target), "-c", str(bare_project))
    assert done.returncode == 0, done.stderr
    assert _keys(cli, bare_project) == []


def test_restore_checks_its_input_and_postgres_has_its_own_tools(sqlite_url: str, tmp_path: Path) -> None:
    with pytest.raises(BackupError, match="does not exist"):
        restore(sqlite_url, tmp_path / "missing.db")
    junk = tmp_path / "junk.db"
    junk.write_text("not a database")
    with pytest.raises(BackupError, match="is not a nightshift store"):
        restore(sqlite_url, junk)
    with pytest.raises(BackupError, match="pg_restore"):
        restore("postgresql://nightshift:pw@127.0.0.1:1/nightshift", junk)
    with pytest.raises(BackupError, match="pg_dump"):
        backup("postgresql://nightshift:pw@127.0.0.1:1/nightshift", tmp_path / "x.db")
    with pytest.raises(BackupError, match="live store itself"):
        restore(sqlite_url, sqlite_url.removeprefix("sqlite:///"))
