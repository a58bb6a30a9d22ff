"""The registry's integrity on real SQLite and PostgreSQL: artifacts never clobbered, JSON that always stores."""

from __future__ import annotations

import contextlib
import math
import shutil
import threading
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from nightshift.config import Settings
from nightshift.db import schema
from nightshift.db.store import Store
from nightshift.models.registry import Registry, sha256_bytes
from nightshift.rollout import Rollouts
from nightshift.training import train_and_register
from tests.conftest import SCORE_DS

META: dict[str, Any] = {
    "algorithm": "a",
    "hyperparameters": {"C": 1.0},
    "libraries": {"x": "1"},
    "features": [{"name": "f", "type": "float64"}],
    "input_schema": [],
    "output_schema": [],
    "training_data": {"rows": 10},
    "metrics": {"roc_auc": 0.8},
    "parity": {"max_abs_diff": 0.0},
    "feature_importance": {"f": 1.0},
    "decision_threshold": 0.5,
}


class _RacingStore(Store):
    """A store that forces the worst interleaving of two registrations, in threads named A and B:
    both read the same latest version, both have written whatever they write before inserting,
    A inserts first, then B tries the same version number."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.a_ready = threading.Event()
        self.b_ready = threading.Event()
        self.a_inserted = threading.Event()
        self._seen: set[tuple[str, str]] = set()
        self._guard = threading.Lock()

    def _first(self, what: str) -> str | None:
        name = threading.current_thread().name
        with self._guard:
            if name not in ("A", "B") or (name, what) in self._seen:
                return None
            self._seen.add((name, what))
        return name

    @contextlib.contextmanager
    def connect(self) -> Iterator[Connection]:
        if self._first("connect") == "B":
            assert self.a_ready.wait(20)  # B reads the latest version only once A has written its files
        with super().connect() as conn:
            yield conn

    @contextlib.contextmanager
    def begin(self) -> Iterator[Connection]:
        who = self._first("begin")
        if who == "A":
            self.a_ready.set()
            assert self.b_ready.wait(20)
            try:
                with super().begin() as conn:
                    yield conn
            finally:
                self.a_inserted.set()
            return
        if who == "B":
            self.b_ready.set()
            assert self.a_inserted.wait(20)
        with super().begin() as conn:
            yield conn


def test_a_version_race_leaves_both_artifacts_intact(store_url: str, tmp_path: Path) -> None:
    store = _RacingStore(store_url)
    registry = Registry(store, str(tmp_path / "models"))
    done: dict[str, Any] = {}

    def register(name: str, data: bytes) -> None:
        try:
            done[name] = registry.register("m", data, **META, extra_files={"e2e.parquet": data * 2})
        except BaseException as exc:
            done[name] = exc

    threads = [
        threading.Thread(target=register, args=("A", b"model-of-A"), name="A"),
        threading.Thread(target=register, args=("B", b"model-of-B"), name="B"),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    a, b = done["A"], done["B"]
    assert not isinstance(a, BaseException), a
    assert not isinstance(b, BaseException), b
    assert (a.version, b.version) == (1, 2)  # A won version 1, B took the next one
    assert registry.load_bytes(registry.get("m", 1)) == b"model-of-A"
    assert registry.load_bytes(registry.get("m", 2)) == b"model-of-B"
    assert a.artifact_uri != b.artifact_uri
    # The files registered with each version are that version's own, beside its artifact.
    assert Path(a.artifact_uri).with_name("e2e.parquet").read_bytes() == b"model-of-A" * 2
    assert Path(b.artifact_uri).with_name("e2e.parquet").read_bytes() == b"model-of-B" * 2
    store.dispose()


def test_many_concurrent_registrations_all_load(store_url: str, tmp_path: Path) -> None:
    registry = Registry(Store(store_url), str(tmp_path / "models"))
    errors: list[BaseException] = []

    def register(i: int) -> None:
        try:
            registry.register("m", f"model-{i}".encode(), **META)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    versions = registry.versions("m")
    assert sorted(v.version for v in versions) == [1, 2, 3, 4]
    assert sorted(registry.load_bytes(v) for v in versions) == [f"model-{i}".encode() for i in range(4)]


def test_the_same_bytes_twice_share_one_file_and_each_version_keeps_its_card(store_url: str, tmp_path: Path) -> None:
    registry = Registry(Store(store_url), str(tmp_path / "models"))
    v1 = registry.register("m", b"same", **META, description="first")
    v2 = registry.register("m", b"same", **META, description="second")
    assert v1.artifact_uri == v2.artifact_uri
    assert Path(v1.artifact_uri).parent.name == sha256_bytes(b"same")
    assert registry.load_bytes(v2) == b"same"
    cards = sorted(p.name for p in (Path(v1.artifact_uri).parent / "cards").glob("*.json"))
    assert [c.split("-")[0] for c in cards] == ["v1", "v2"]


def test_versions_registered_under_the_old_layout_keep_loading(store_url: str, tmp_path: Path) -> None:
    root = tmp_path / "models"
    store = Store(store_url)
    registry = Registry(store, str(root))
    mv = registry.register("m", b"old-model", **META)
    old = root / "m" / "v1" / "model.onnx"  # where versions were written before content addressing
    old.parent.mkdir(parents=True)
    shutil.copy(mv.artifact_uri, old)
    mvt = schema.model_versions
    with store.begin() as conn:
        conn.execute(sa.update(mvt).where(mvt.c.model == "m", mvt.c.version == 1).values(artifact_uri=str(old)))
    assert registry.load_bytes(registry.get("m", 1)) == b"old-model"


@pytest.mark.postgres
def test_two_stores_sharing_an_artifacts_folder_each_keep_their_own_v1(
    sqlite_url: str, pg_url: str, tmp_path: Path
) -> None:
    shared = str(tmp_path / "state" / "models")
    lite = Registry(Store(sqlite_url), shared)
    pg = Registry(Store(pg_url), shared)
    v_lite = lite.register("churn", b"trained-on-sqlite", **META)
    v_pg = pg.register("churn", b"trained-on-postgresql", **META)
    assert (v_lite.version, v_pg.version) == (1, 1)
    assert lite.load_bytes(lite.get("churn", 1)) == b"trained-on-sqlite"
    assert pg.load_bytes(pg.get("churn", 1)) == b"trained-on-postgresql"
    assert v_lite.artifact_uri != v_pg.artifact_uri


# -- one JSON rule ------------------------------------------------------------------------------

NON_FINITE = {
    "roc_auc": float("nan"),
    "log_loss": float("inf"),
    "brier": np.float64("-inf"),
    "accuracy": np.float32(0.5),
}
STORED = {"roc_auc": None, "log_loss": None, "brier": None, "accuracy": 0.5}


def test_a_registration_with_nan_and_inf_metrics_stores_nulls(store_url: str, tmp_path: Path) -> None:
    registry = Registry(Store(store_url), str(tmp_path / "models"))
    mv = registry.register(
        "m",
        b"model",
        **{**META, "metrics": NON_FINITE, "parity": {"max_abs_diff": np.float32("nan"), "rows": np.int64(3)}},
    )
    assert mv.metrics == STORED
    stored = registry.get("m", 1)
    assert stored.metrics == STORED
    assert stored.parity == {"max_abs_diff": None, "rows": 3}


def test_an_audit_event_with_nan_and_inf_stores_nulls(store_url: str, tmp_path: Path) -> None:
    settings = Settings(state_dir=str(tmp_path / "state"), store_url=store_url)
    r = Rollouts(settings, Store(store_url))
    r.audit("m", "gates_evaluated", {"metrics": NON_FINITE, "gates": [{"value": float("nan")}], "ds": date(2026, 1, 2)})
    [event] = r.history("m")
    assert event["detail"] == {"metrics": STORED, "gates": [{"value": None}], "ds": "2026-01-02"}


def _one_class_labels(data_root: Path, day: date) -> None:
    for f in (data_root / "labels" / f"ds={day.isoformat()}").glob("*.parquet"):
        t = pq.read_table(f)
        zeros = pa.array(np.zeros(t.num_rows), t.schema.field("churned").type)
        pq.write_table(t.set_column(t.schema.get_field_index("churned"), "churned", zeros), f)


def test_a_retrain_whose_test_day_has_one_class_is_rejected_not_crashed(
    store_url: str, make_settings: Any, data_root: Path
) -> None:
    settings = make_settings(store_url)
    train_and_register(settings, "churn", date(2026, 11, 17))  # v1, champion
    _one_class_labels(data_root, SCORE_DS)  # the confidence test day: ROC AUC is undefined (NaN)
    r = Rollouts(settings)
    out = r.retrain("churn", SCORE_DS, trigger={"kind": "manual", "score": float("nan")})
    assert out.status == "rejected"
    assert "acceptable_range failed" in out.reason
    cand = r.candidate(out.candidate_id)
    assert cand["status"] == "rejected"
    assert cand["trigger"] == {"kind": "manual", "score": None}
    gate = next(g for g in cand["gates"] if g["name"] == "acceptable_range")
    assert gate["passed"] is False
    assert gate["value"] is None
    events = r.history("churn", out.candidate_id)
    assert events[-1]["event"] == "rejected"
    for event in events:
        for g in event["detail"].get("gates", []):
            assert g["value"] is None or math.isfinite(g["value"])
    assert r.registry.aliases("churn") == {"champion": 1}


def test_a_trained_version_records_how_its_importance_was_measured(
    sqlite_url: str, tmp_path: Path, trained_model: Any
) -> None:
    from nightshift.demo import demo_contract

    registry = Registry(Store(sqlite_url), str(tmp_path / "models"))
    mv = registry.register_trained(
        "churn", trained_model, demo_contract(), training_data={"rows": 1}, decision_threshold=0.5
    )
    assert mv.training_data["feature_importance_method"].startswith("permutation")
    assert registry.get("churn", 1).feature_importance == pytest.approx(trained_model.feature_importance)
