"""The summary lists the noise floor of a paired ratio: the limit + primary key timed twice in each round."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench.common import LIMIT_PK_AGAIN, Measurement

from bench import report


def test_the_summary_lists_the_limit_against_itself_as_the_noise_floor(tmp_path: Path) -> None:
    def timed(name: str, seconds: list[float]) -> dict[str, object]:
        return Measurement(name, "postgres", 4_000_000, seconds, model="linear", block="b").record()

    records = [
        {"kind": "environment", "command": "python -m bench", "size": {"name": "default", "repeats": 3}},
        {"kind": "plan", "skipped": {}},
        timed("pipelined limit + primary key", [4.0, 4.0, 5.0]),
        timed(LIMIT_PK_AGAIN, [4.4, 3.6, 5.0]),  # paired by round: 4.0/4.4, 4.0/3.6, 5.0/5.0
        {"kind": "finished", "seconds": 1.0},
    ]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = report.write(tmp_path)
    row = next(line for line in summary.splitlines() if "noise floor" in line)
    assert "| 1 [0.909–1.11] |" in row, row  # rates 4/4.4, 4/3.6, 5/5 of the first run's: median 1
    assert "| — | (info) |" in row, row


def test_quiesce_without_a_server_to_checkpoint_says_so_once_and_still_syncs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No PostgreSQL at the URL (or no right to CHECKPOINT): the timed runs go on from a sync, and the bench says
    once why it skipped the checkpoint, naming the error, instead of failing or retrying before every run."""
    import socket

    from bench import common

    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://nobody@127.0.0.1:{port}/postgres"
    monkeypatch.setenv(common.QUIESCE_ENV, url)
    monkeypatch.setattr(common, "_NO_CHECKPOINT", set())
    syncs: list[int] = []
    monkeypatch.setattr(common.os, "sync", lambda: syncs.append(1))
    common.quiesce()
    common.quiesce()
    out = capsys.readouterr().out
    assert out.count("CHECKPOINT before timed runs skipped (OperationalError") == 1, out
    assert syncs == [1, 1]
    monkeypatch.setenv(common.QUIESCE_ENV, "")  # the suite found no server: sync only, nothing said
    common.quiesce()
    assert capsys.readouterr().out == ""
    assert syncs == [1, 1, 1]
