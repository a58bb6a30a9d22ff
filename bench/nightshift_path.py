"""nightshift's real path: `score_partition` with a registered model, into a fresh PostgreSQL or SQLite store."""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import (
    PG_ADMIN_URL,
    RssSampler,
    create_database,
    drop_database,
    libpq,
    with_database,
    worker_pids,
)
from bench.data import MODEL_NAME, BroughtArtifact, Dataset, ModelArtifacts


def make_settings(
    state_dir: Path,
    store_url: str,
    data: Dataset,
    art: ModelArtifacts | BroughtArtifact,
    *,
    names: Sequence[str] = (MODEL_NAME,),
    explain_top_k: int | None = None,
    **dask: Any,
) -> Any:
    """nightshift Settings for `names` (each a model of `art`'s kind and task) over `data`, built in code
    (as a project file would give them). Several names: several models reading the same dataset.
    `explain_top_k`: score with reasons (`[models.explain] enabled = true`, that top_k)."""
    from nightshift.config import DaskSettings, EstimatorSettings, ExplainSettings, ModelSettings, Settings
    from nightshift.demo import demo_contract

    explain = ExplainSettings(enabled=explain_top_k is not None, top_k=explain_top_k or 3)
    models = [
        ModelSettings(
            name=name,
            dataset=str(data.features_root),
            contract=demo_contract(),
            estimator=EstimatorSettings(kind=art.kind, task=art.task),
            decision_threshold=0.5,
            explain=explain,
        )
        for name in names
    ]
    return Settings(
        state_dir=str(state_dir),
        store_url=store_url,
        artifacts=str(state_dir / "models"),
        dask=DaskSettings(**dask),
        models=models,
    )


def register(settings: Any, art: ModelArtifacts, name: str = MODEL_NAME) -> Any:
    """Register the model's ONNX artifact as `name`'s version 1, champion, as `nightshift train` would;
    returns the ModelVersion."""
    from nightshift.models import open_registry

    trained = art.trained()
    registry = open_registry(settings)
    mv = registry.register_trained(
        name,
        trained,
        settings.model(name).contract,
        training_data={"rows": trained.train_rows},
        decision_threshold=0.5,
    )
    registry.set_alias(name, "champion", mv.version, reason="benchmark")
    registry.store.dispose()
    return mv


def register_brought_model(settings: Any, art: BroughtArtifact, ds: Any, name: str = MODEL_NAME) -> Any:
    """Register a model its user brings, the way `nightshift models register --from` does: load, convert to
    ONNX, check the contract and parity on real rows of partition `ds`, register, promote. Returns the
    ModelVersion (its artifact is the ONNX graph nightshift scores)."""
    from nightshift.models import open_registry
    from nightshift.models.bring import register_brought

    # Our own registry, disposed after: register_brought leaves the store it opens itself connected.
    registry = open_registry(settings)
    try:
        brought = register_brought(
            settings,
            name,
            str(art.path),
            ds=ds,
            class_names=list(art.class_names) if art.class_names else None,
            promote="always",
            registry=registry,
        )
    finally:
        registry.store.dispose()
    if not brought.parity.passed:
        raise RuntimeError(f"{art.path}: parity {brought.parity.describe()}")
    return brought.version


class NightshiftRunner:
    """Scores a dataset with `nightshift.scoring.score_partition`, each call into a fresh, migrated store
    holding the registered model, so every call is a nightly first commit of its partition.

    `setup` and `teardown` (a new store from a template, dropped afterwards) are not timed; everything `score_partition`
    does (model hash and schema check, contract check of every footer, run lock, Dask scoring,
    staging, commit, cleanup) is inside it.
    """

    def __init__(
        self,
        dialect: str,
        workdir: Path,
        art: ModelArtifacts | BroughtArtifact,
        admin_url: str = PG_ADMIN_URL,
        *,
        names: Sequence[str] = (MODEL_NAME,),
        data: Dataset | None = None,
        explain_top_k: int | None = None,
    ) -> None:
        """`names`: the models the template holds, each `art` registered under its own name (several models
        of one dataset). A BroughtArtifact is registered with `register_brought`, whose parity check reads
        `data` (required then). `versions` keeps each name's registered ModelVersion. `explain_top_k`: every
        run scores with reasons (`[models.explain]`, that top_k)."""
        from nightshift.db.store import Store

        self.dialect = dialect
        self.workdir = workdir
        self.art = art
        self.admin_url = admin_url
        self.names = tuple(names)
        self.explain_top_k = explain_top_k
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
        self.versions: dict[str, Any] = {}
        if isinstance(art, BroughtArtifact):
            if data is None:
                raise ValueError("a brought model's parity check needs real rows: pass data=")
            settings = make_settings(workdir, url, data, art, names=self.names, explain_top_k=explain_top_k)
            for name in self.names:
                self.versions[name] = register_brought_model(settings, art, data.ds, name)
        else:
            # The dataset does not matter for registering; any Dataset-shaped value will do.
            settings = make_settings(workdir, url, data or _NO_DATA, art, names=self.names, explain_top_k=explain_top_k)
            for name in self.names:
                self.versions[name] = register(settings, art, name)

    def artifact(self, name: str = MODEL_NAME) -> tuple[bytes, dict[str, Any]]:
        """The registered version's ONNX bytes (what nightshift scores) and its signature ({} for nightshift's own)."""
        from nightshift.models.registry import read_artifact

        mv = self.versions[name]
        return read_artifact(mv.artifact_uri, mv.sha256), dict(mv.signature or {})

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

    def score(self, data: Dataset, client: Any = None, *, store_size: bool = False, **dask: Any) -> dict[str, Any]:
        """One `score_partition` call (time it around this); returns its timings and peak worker RSS.

        `store_size`: also the committed partition's size on disk (pg_total_relation_size: heap, primary
        key, TOAST), measured after the call; its time is then the call's own ("seconds" in the extras),
        without that query."""
        from nightshift.scoring import score_partition

        settings = make_settings(
            self.workdir, self.store_url, data, self.art, names=self.names, explain_top_k=self.explain_top_k, **dask
        )
        with RssSampler(worker_pids(client) if client is not None else None) as rss:
            t = time.perf_counter()
            summary = score_partition(settings, self.names[0], data.ds, client=client, run_key="bench")
            seconds = time.perf_counter() - t
        if summary.rows != data.rows:
            raise RuntimeError(f"nightshift committed {summary.rows} rows, expected {data.rows}")
        extras = {
            "tasks": summary.tasks,
            "run_id": summary.run_id,
            "timings": summary.timings,
            "peak_worker_rss_bytes": rss.peak(),
            "ru_maxrss_worker_bytes": summary.peak_worker_rss_bytes,
        }
        if store_size:
            extras["seconds"] = seconds
            extras["store_bytes"] = self.partition_bytes(summary.run_id)
        return extras

    def score_many(self, data: Dataset, client: Any = None, *, one_pass: bool = True, **dask: Any) -> dict[str, Any]:
        """Every model of `names` over `data`: in ONE `score_partitions` pass (each file read once, every model's
        session run on each batch, each model committed on its own), or (`one_pass=False`) one `score_partition`
        call after another. Raises unless every model committed `data.rows` rows."""
        from nightshift.scoring import score_partition, score_partitions

        settings = make_settings(
            self.workdir, self.store_url, data, self.art, names=self.names, explain_top_k=self.explain_top_k, **dask
        )
        with RssSampler(worker_pids(client) if client is not None else None) as rss:
            if one_pass:
                targets = [(name, None, None) for name in self.names]
                out = score_partitions(settings, targets, data.ds, client=client, run_key="bench")
                summaries = {model: s for (model, _), s in out.items()}
            else:
                summaries = {
                    name: score_partition(settings, name, data.ds, client=client, run_key="bench")
                    for name in self.names
                }
        for name in self.names:
            got = summaries.get(name)
            if got is None or isinstance(got, BaseException):
                raise RuntimeError(f"model {name}: nothing committed ({got!r})")
            if got.rows != data.rows:
                raise RuntimeError(f"model {name}: nightshift committed {got.rows} rows, expected {data.rows}")
        done = [s for s in summaries.values() if not isinstance(s, BaseException)]
        return {
            "models": len(done),
            "rows_committed": {s.model: s.rows for s in done},
            "timings": {s.model: s.timings for s in done},
            "peak_worker_rss_bytes": rss.peak(),
            "ru_maxrss_worker_bytes": max(s.peak_worker_rss_bytes for s in done),
        }

    def partition_bytes(self, run_id: int) -> int:
        """The committed partition's size on disk: heap + primary key + TOAST (PostgreSQL), or the SQLite file."""
        if self.dialect != "postgresql":
            return Path(self.store_url.removeprefix("sqlite:///")).stat().st_size
        import psycopg

        from nightshift.db.staging import staging_table

        with psycopg.connect(libpq(self.store_url)) as conn:
            row = conn.execute("SELECT pg_total_relation_size(%s::regclass)", (staging_table(run_id),)).fetchone()
        return int(row[0]) if row else 0


class _NoData:
    features_root = Path("/nonexistent")


_NO_DATA: Any = _NoData()
