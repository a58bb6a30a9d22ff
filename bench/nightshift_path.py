"""nightshift's real path: `score_partition` with a registered model, into a fresh PostgreSQL or SQLite store."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from bench.common import PG_ADMIN_URL, RssSampler, create_database, drop_database, with_database, worker_pids
from bench.data import MODEL_NAME, Dataset, ModelArtifacts


def make_settings(state_dir: Path, store_url: str, data: Dataset, art: ModelArtifacts, **dask: Any) -> Any:
    """nightshift Settings for one model over `data`, built in code (as a project file would give them)."""
    from nightshift.config import DaskSettings, EstimatorSettings, ModelSettings, Settings
    from nightshift.demo import demo_contract

    model = ModelSettings(
        name=MODEL_NAME,
        dataset=str(data.features_root),
        contract=demo_contract(),
        estimator=EstimatorSettings(kind=art.kind),
        decision_threshold=0.5,
    )
    return Settings(
        state_dir=str(state_dir),
        store_url=store_url,
        artifacts=str(state_dir / "models"),
        dask=DaskSettings(**dask),
        models=[model],
    )


def register(settings: Any, art: ModelArtifacts) -> None:
    """Register the model's ONNX artifact as version 1, champion, as `nightshift train` would."""
    from nightshift.models import open_registry

    trained = art.trained()
    registry = open_registry(settings)
    mv = registry.register_trained(
        MODEL_NAME,
        trained,
        settings.model(MODEL_NAME).contract,
        training_data={"rows": trained.train_rows},
        decision_threshold=0.5,
    )
    registry.set_alias(MODEL_NAME, "champion", mv.version, reason="benchmark")
    registry.store.dispose()


class NightshiftRunner:
    """Scores a dataset with `nightshift.scoring.score_partition`, each call into a fresh, migrated store
    holding the registered model, so every call is a nightly first commit of its partition.

    `setup` and `teardown` (a new store from a template, dropped afterwards) are not timed; everything `score_partition`
    does (model hash and schema check, contract check of every footer, run lock, Dask scoring,
    staging, commit, cleanup) is inside it.
    """

    def __init__(self, dialect: str, workdir: Path, art: ModelArtifacts, admin_url: str = PG_ADMIN_URL) -> None:
        from nightshift.db.store import Store

        self.dialect = dialect
        self.workdir = workdir
        self.art = art
        self.admin_url = admin_url
        workdir.mkdir(parents=True, exist_ok=True)
        self._current: str | None = None
        self._runs = 0
        self._template: str
        if dialect == "postgresql":
            self._template = create_database(admin_url, prefix="ns_bench_tmpl")
            url = with_database(admin_url, self._template)
        else:
            self._template = str(workdir / "template.db")
            url = f"sqlite:///{self._template}"
        store = Store(url)
        store.upgrade()
        store.dispose()
        # The dataset does not matter for registering; any Dataset-shaped value will do.
        register(make_settings(workdir, url, _NO_DATA, art), art)

    def close(self) -> None:
        self.teardown()
        if self.dialect == "postgresql":
            drop_database(self._template, self.admin_url)

    def setup(self) -> None:
        """A fresh store (a copy of the template) for the next `score` call."""
        self.teardown()
        self._runs += 1
        if self.dialect == "postgresql":
            self._current = create_database(self.admin_url, template=self._template)
        else:
            # A new path each time: nightshift caches one SQLite connection per URL and process.
            folder = self.workdir / f"run{self._runs}"
            folder.mkdir()
            shutil.copyfile(self._template, folder / "store.db")
            self._current = str(folder)

    def teardown(self) -> None:
        if self._current is None:
            return
        if self.dialect == "postgresql":
            drop_database(self._current, self.admin_url)
        else:
            shutil.rmtree(self._current, ignore_errors=True)
        self._current = None

    @property
    def store_url(self) -> str:
        assert self._current is not None, "call setup() first"
        if self.dialect == "postgresql":
            return with_database(self.admin_url, self._current)
        return f"sqlite:///{self._current}/store.db"

    def score(self, data: Dataset, client: Any = None, **dask: Any) -> dict[str, Any]:
        """One `score_partition` call (time it around this); returns its timings and peak worker RSS."""
        from nightshift.scoring import score_partition

        settings = make_settings(self.workdir, self.store_url, data, self.art, **dask)
        with RssSampler(worker_pids(client) if client is not None else None) as rss:
            summary = score_partition(settings, MODEL_NAME, data.ds, client=client, run_key="bench")
        if summary.rows != data.rows:
            raise RuntimeError(f"nightshift committed {summary.rows} rows, expected {data.rows}")
        return {
            "tasks": summary.tasks,
            "timings": summary.timings,
            "peak_worker_rss_bytes": rss.peak(),
            "ru_maxrss_worker_bytes": summary.peak_worker_rss_bytes,
        }


class _NoData:
    features_root = Path("/nonexistent")


_NO_DATA: Any = _NoData()
