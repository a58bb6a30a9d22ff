"""bench.report_bench over several night sizes: one summary per size, each judged on its own rounds, in one table.

The timed CLI runs are replaced by recorded rounds (`measure`); what is tested is what the bench makes of them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import report_bench


def _rounds(rows: int, score: list[float], report: list[float]) -> list[dict[str, Any]]:
    return [
        {
            "rows": rows,
            "round": i + 1,
            "load_before": 0.0,
            "score_s": s,
            "monitor_s": 1.0,
            "report_s": r,
            "report_rebuilt_s": r + 1.0,
            "report_vs_score": r / s,
            "rebuilt_vs_score": (r + 1.0) / s,
        }
        for i, (s, r) in enumerate(zip(score, report, strict=True))
    ]


def test_each_night_size_is_summarized_and_judged_on_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fixed = {"import nightshift.cli": 0.1, "import evidently": 4.0}
    recorded = {
        50_000: _rounds(50_000, [1.5, 1.6, 1.4], [7.0, 7.2, 7.1]),
        4_000_000: _rounds(4_000_000, [8.0, 8.4, 7.0], [7.2, 7.9, 7.4]),
    }
    calls: list[tuple[int, int]] = []

    def measure(rows: int, rounds: int) -> tuple[list[dict[str, Any]], dict[str, float]]:
        calls.append((rows, rounds))
        return recorded[rows], fixed

    monkeypatch.setattr(report_bench, "measure", measure)
    report_bench.main(["--rows", "50000", "4000000", "--rounds", "3", "--out", str(tmp_path)])

    assert calls == [(50_000, 3), (4_000_000, 3)]
    lines = [json.loads(line) for line in (tmp_path / "report_bench.jsonl").read_text().splitlines()]
    assert [line["kind"] for line in lines] == ["meta", *["round"] * 3, "summary", *["round"] * 3, "summary"]
    small, large = (line for line in lines if line["kind"] == "summary")
    assert small["rows"] == 50_000
    assert small["median_s"] == {"score_s": 1.5, "monitor_s": 1.0, "report_s": 7.1, "report_rebuilt_s": 8.1}
    # The median of the rounds' ratios (each round's report over the same round's scoring), not of the times.
    assert small["report_vs_score_median"] == round(sorted([7.0 / 1.5, 7.2 / 1.6, 7.1 / 1.4])[1], 2)
    assert small["target_report_le_1x_score"] is False
    # Ratios 0.90, 0.94, 1.06: the median, the least and the most round apart.
    assert large["report_vs_score_median"] == round(7.9 / 8.4, 2)
    assert large["report_vs_score_range"] == [round(7.2 / 8.0, 2), round(7.4 / 7.0, 2)]
    assert large["target_report_le_1x_score"] is True
    md = (tmp_path / "report_bench.md").read_text()
    assert "| 50,000 | 1.5 | 1.0 | 7.1 | 8.1 | **4.67×** [4.50–5.07] | NOT met | 5.33× | 0.1 / 4.0 |" in md
    assert "| 4,000,000 | 8.0 | 1.0 | 7.4 | 8.4 | **0.94×** [0.90–1.06] | met | 1.06× | 0.1 / 4.0 |" in md


def test_a_size_that_fails_keeps_the_sizes_measured_before(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def measure(rows: int, rounds: int) -> tuple[list[dict[str, Any]], dict[str, float]]:
        if rows > 50_000:
            raise RuntimeError("demo-data ran out of disk")
        return _rounds(rows, [1.5], [7.0]), {"import nightshift.cli": 0.1, "import evidently": 4.0}

    monkeypatch.setattr(report_bench, "measure", measure)
    with pytest.raises(RuntimeError, match="out of disk"):
        report_bench.main(["--rows", "50000", "4000000", "--rounds", "1", "--out", str(tmp_path)])
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "report_bench.jsonl").read_text().splitlines()]
    assert kinds == ["meta", "round", "summary"]
    assert "| 50,000 |" in (tmp_path / "report_bench.md").read_text()


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--rows", "50000", "0"], "--rows: a night needs at least one row; got 50000 0"),
        (["--rounds", "0"], "--rounds: at least one round; got 0"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, args: list[str], error: str
) -> None:
    def measure(rows: int, rounds: int) -> Any:
        raise AssertionError("measured despite bad arguments")

    monkeypatch.setattr(report_bench, "measure", measure)
    with pytest.raises(SystemExit) as exc:
        report_bench.main([*args, "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert error in capsys.readouterr().err
    assert not (tmp_path / "report_bench.jsonl").exists()
