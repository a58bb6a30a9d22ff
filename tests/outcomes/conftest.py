"""Fixtures for decisions by outcomes: a few labelled demo days and a project whose nights run for real."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

#: Six labelled days of 600 customers: small enough for nights of a few seconds, and 600 labelled entities a
#: night against the 785 a paired test needs (effect size 0.1, two metrics): one night is not enough evidence,
#: two are.
D1 = date(2026, 11, 1)
DAYS = 6
ROWS = 600


@pytest.fixture(scope="session")
def outcome_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nightshift.demo import generate

    root = tmp_path_factory.mktemp("outcomes")
    generate(root / "features", root / "labels", start=D1, days=DAYS, rows_per_day=ROWS, files_per_day=2, seed=9)
    return root


class Project:
    """A project on a private copy of the outcome data, with the nights of nightshift.nightly."""

    def __init__(self, settings: Any, client: Any) -> None:
        from nightshift.db import open_store
        from nightshift.rollout import Rollouts

        self.settings = settings
        self.client = client
        self.store = open_store(settings)
        self.rollouts = Rollouts(settings, self.store)
        self.registry = self.rollouts.registry

    def night(self, ds: date, **kw: Any) -> Any:
        from nightshift.nightly import run_night

        return run_night(self.settings, "churn", ds, client=self.client, store=self.store, by="test", **kw)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.rollouts.history("churn") if name is None or e["event"] == name]

    def register_bad(self, until: date, seed: int = 0) -> int:
        """A version trained on shuffled labels, registered (not promoted): its features are the data's own."""
        from nightshift.demo.loop import _bad_candidate

        cfg = self.settings.model("churn")
        tset, trained = _bad_candidate(self.settings, "churn", until, 2, seed)
        mv = self.registry.register_trained(
            "churn", trained, cfg.contract, training_data=tset.record(), decision_threshold=cfg.decision_threshold
        )
        return int(mv.version)


@pytest.fixture
def project(outcome_data: Path, tmp_path: Path, store_url: str, dask_client: Any) -> Iterator[Callable[[str], Project]]:
    """Build a Project with extra TOML for model churn (on a copy of the outcome data)."""
    from nightshift.config import load_settings
    from tests.conftest import write_project

    data = tmp_path / "data"
    shutil.copytree(outcome_data, data)
    made: list[Project] = []

    def _make(extra: str = "") -> Project:
        settings = load_settings(write_project(tmp_path, store_url, data, extra_model=extra))
        made.append(Project(settings, dask_client))
        return made[-1]

    yield _make
    for p in made:
        p.store.dispose()


def day(i: int) -> date:
    """The i-th outcome day (0-based)."""
    return D1 + timedelta(days=i)
