"""Label quality per serving version: a day served by a previous champion, every version that served a day."""

from __future__ import annotations

import json
from typing import Any

import pytest

from nightshift.training import train_and_register
from tests.outcomes.conftest import day


@pytest.mark.timeout(900)
def test_quality_is_measured_for_every_version_that_served_a_day_even_a_previous_champion(project: Any) -> None:
    from typer.testing import CliRunner

    from nightshift.cli import app
    from nightshift.monitoring import label_quality, quality_of_day
    from nightshift.scoring import score_partition

    p = project("[models.rollout]\nrollback_window_days = 2\n")
    train_and_register(p.settings, "churn", day(1))  # v1
    p.night(day(2))  # served by v1
    train_and_register(p.settings, "churn", day(2), promote="never")  # v2
    p.rollouts.promote("churn", 2, by="test", reason="by hand after the night of day 2", ds=day(2))
    p.night(day(3))  # served by v2, v1 scored beside it (previous, rollback window)

    # The day v1 served: measured for v1, although v2 is the champion now (and has no partition that day).
    old = quality_of_day(p.settings, "churn", day(2), store=p.store)
    assert old.versions == {"champion": 1}
    assert old.champion_version == 1
    assert old.results["champion"].version == 1
    assert old.results["champion"].summary["metrics"]["n"] == 600
    assert label_quality(p.settings, "churn", day(2), store=p.store).version == 1  # the day's champion by default

    # Every version that served or shadowed a day, each stored as its own 'quality' result.
    both = quality_of_day(p.settings, "churn", day(3), store=p.store)
    assert both.versions == {"champion": 2, "previous": 1}
    assert {role: r.version for role, r in both.results.items()} == {"champion": 2, "previous": 1}
    assert both.as_dict()["version"] == 2

    # A day no nightly night recorded: every committed version of it.
    score_partition(p.settings, "churn", day(4), version=1, client=p.client, store=p.store)
    manual = quality_of_day(p.settings, "churn", day(4), store=p.store)
    assert manual.source.startswith("committed partitions")
    assert manual.versions == {"v1": 1}

    # The CLI: `nightshift outcomes` measures the day and shows the estimate beside the realized value.
    config = p.settings.project_dir + "/nightshift.toml"
    shown = CliRunner().invoke(app, ["outcomes", "-m", "churn", "--ds", day(3).isoformat(), "-c", config, "--json"])
    assert shown.exit_code == 0, shown.output
    body = json.loads(shown.stdout)
    assert body["quality"]["versions"] == {"champion": 2, "previous": 1}
    estimate = body["quality"]["results"]["champion"]
    assert estimate["version"] == 2
