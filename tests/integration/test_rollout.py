"""Retraining gates and rollout strategies on real stores: what readers see, and the audit trail."""

from __future__ import annotations

import threading
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nightshift.db import open_store
from nightshift.models.registry import CHAMPION
from nightshift.rollout import CHALLENGER, PREVIOUS, RolloutError, Rollouts, canary_bucket, compare_versions
from nightshift.scoring import score_partition
from nightshift.training import train_and_register
from tests.conftest import SCORE_DS

FIRST_TRAIN_DS = date(2026, 11, 17)
#: The first night a move decided for the night of SCORE_DS applies to.
NEXT_NIGHT = SCORE_DS + timedelta(days=1)


def _events(r: Rollouts, cid: int) -> list[str]:
    return [e["event"] for e in r.history("churn", cid)]


def _with_champion(make_settings: Any, store_url: str, rollout: str = "") -> tuple[Any, Rollouts]:
    extra = f"\n[models.rollout]\n{rollout}\n" if rollout else ""
    settings = make_settings(store_url, extra_model=extra)
    train_and_register(settings, "churn", FIRST_TRAIN_DS)  # v1, champion
    return settings, Rollouts(settings)


def test_a_good_retrain_passes_every_gate_and_is_promoted(store_url: str, make_settings: Any) -> None:
    _settings, r = _with_champion(make_settings, store_url)
    out = r.retrain("churn", SCORE_DS, trigger={"kind": "manual", "by": "test"}, by="alice")
    assert out.status == "promoted", out.reason
    assert [g["name"] for g in out.gates] == [
        "onnx_parity",
        "acceptable_range",
        "end_to_end",
        "not_worse_than_champion",
    ]
    assert all(g["passed"] for g in out.gates)
    assert r.registry.aliases("churn") == {CHAMPION: 2, PREVIOUS: 1}
    cand = r.candidate(out.candidate_id)
    assert cand["trigger"] == {"kind": "manual", "by": "test"}
    assert cand["training_data"]["confidence_test"]["partitions"][0]["ds"] == SCORE_DS.isoformat()
    assert cand["training_data"]["train_until"] == FIRST_TRAIN_DS.isoformat()
    assert _events(r, out.candidate_id) == ["candidate_created", "registered", "gates_evaluated", "promoted"]
    assert {e["by"] for e in r.history("churn", out.candidate_id)} == {"alice"}
    # The end-to-end set is versioned with the model, beside its artifact.
    mv = r.registry.get("churn", 2)
    assert Path(mv.artifact_uri).with_name("e2e.parquet").is_file()


def _shuffle_training_labels(data_root: Path) -> None:
    rng = np.random.default_rng(0)
    for day in ("2026-11-16", "2026-11-17"):
        for f in (data_root / "labels" / f"ds={day}").glob("*.parquet"):
            t = pq.read_table(f)
            shuffled = rng.permutation(t.column("churned").to_numpy())
            pq.write_table(t.set_column(1, "churned", pa.array(shuffled, t.schema.field("churned").type)), f)


def test_a_retrain_on_shuffled_labels_is_blocked_and_readers_see_no_change(
    store_url: str, make_settings: Any, data_root: Path, dask_client: Any
) -> None:
    settings, r = _with_champion(make_settings, store_url)
    score_partition(settings, "churn", SCORE_DS, client=dask_client)
    store = open_store(settings)
    before = store.lookup("churn", 1, SCORE_DS, ["1", "2", "3"])
    _shuffle_training_labels(data_root)
    out = r.retrain("churn", SCORE_DS, trigger={"kind": "drift", "ds": "2026-11-18"})
    assert out.status == "rejected"
    failed = {g["name"] for g in out.gates if not g["passed"]}
    assert {"acceptable_range", "not_worse_than_champion"} <= failed
    assert "acceptable_range failed" in out.reason
    assert r.registry.aliases("churn") == {CHAMPION: 1}
    assert store.lookup("churn", 1, SCORE_DS, ["1", "2", "3"]) == before
    assert _events(r, out.candidate_id)[-1] == "rejected"
    assert r.candidate(out.candidate_id)["status"] == "rejected"


def test_approval_is_required_when_the_model_says_so(store_url: str, make_settings: Any) -> None:
    _settings, r = _with_champion(make_settings, store_url, "require_approval = true")
    out = r.retrain("churn", SCORE_DS, trigger={"kind": "schedule"})
    assert out.status == "pending_approval"
    assert r.registry.aliases("churn") == {CHAMPION: 1}
    with pytest.raises(RolloutError, match="not waiting for approval"):
        r.approve("churn", 1, by="bob")
    assert out.version is not None
    r.approve("churn", out.version, by="bob", note="looks good")
    assert r.registry.aliases("churn")[CHAMPION] == out.version
    cand = r.candidate(out.candidate_id)
    assert cand["approved_by"] == "bob"
    assert cand["approved_at"] is not None
    assert "approved" in _events(r, out.candidate_id)


def test_shadow_scores_beside_the_champion_and_is_promoted_after_healthy_nights(
    store_url: str, make_settings: Any, dask_client: Any
) -> None:
    settings, r = _with_champion(make_settings, store_url, 'strategy = "shadow"\npromote_after_nights = 2')
    out = r.retrain("churn", SCORE_DS, trigger={"kind": "manual"})
    assert out.status == "shadow"
    assert r.registry.aliases("churn") == {CHAMPION: 1, CHALLENGER: 2}
    assert r.versions_to_score("churn", SCORE_DS) == {CHAMPION: 1, CHALLENGER: 2}
    for version in (1, 2):
        score_partition(settings, "churn", SCORE_DS, version=version, client=dask_client)
    store = open_store(settings)
    # Both versions are stored; the champion's rows are what readers get by default.
    assert store.partition("churn", 2, SCORE_DS) is not None
    assert r.registry.resolve("churn").version == 1
    report = compare_versions(settings, "churn", [SCORE_DS])
    assert report["n"] == store.partition("churn", 1, SCORE_DS).row_count  # type: ignore[union-attr]
    assert report["paired_test"]["test"].startswith("paired t-test")
    assert 0 <= report["paired_test"]["p_value"] <= 1
    assert 0 <= report["agreement"] <= 1
    assert r.advance("churn", date(2026, 11, 19), champion_ok=True, challenger_ok=True) == "healthy"
    assert r.advance("churn", date(2026, 11, 19), champion_ok=True, challenger_ok=True) == "unchanged"
    assert r.advance("churn", date(2026, 11, 20), champion_ok=True, challenger_ok=True) == "promoted"
    assert r.registry.aliases("churn") == {CHAMPION: 2, PREVIOUS: 1}
    assert r.active("churn") is None


def test_a_failing_challenger_aborts_the_canary(store_url: str, make_settings: Any) -> None:
    _settings, r = _with_champion(make_settings, store_url, 'strategy = "canary"\ncanary_share = 0.2')
    out = r.retrain("churn", SCORE_DS, trigger={"kind": "manual"})
    assert out.status == "canary"
    active = r.active("churn")
    assert active is not None
    assert active["canary_share"] == pytest.approx(0.2)
    assert r.advance("churn", date(2026, 11, 19), champion_ok=True, challenger_ok=False) == "aborted"
    assert r.registry.aliases("churn") == {CHAMPION: 1}
    assert r.candidate(out.candidate_id)["status"] == "aborted"


def test_the_canary_share_is_stable_and_close_to_the_configured_share() -> None:
    ids = [str(i) for i in range(200_000)]
    share = 0.1
    chosen = [i for i in ids if canary_bucket("churn", i) < share]
    assert abs(len(chosen) / len(ids) - share) < 0.005
    # Stable from night to night (a pure function of model and id), and independent per model.
    assert chosen == [i for i in ids if canary_bucket("churn", i) < share]
    other = {i for i in ids if canary_bucket("other", i) < share}
    assert len(other & set(chosen)) / len(chosen) < 0.2


def test_automatic_rollback_when_a_new_champion_fails_its_monitoring(store_url: str, make_settings: Any) -> None:
    _settings, r = _with_champion(make_settings, store_url, "rollback_window_days = 3")
    out = r.retrain("churn", SCORE_DS, trigger={"kind": "manual"})
    assert out.status == "promoted"
    # Decided for the night of SCORE_DS, the promotion applies from the next night: SCORE_DS itself
    # was served by v1, the three nights after it are v2's rollback window (counted in nights).
    assert r.versions_to_score("churn", SCORE_DS) == {CHAMPION: 2}
    assert r.versions_to_score("churn", NEXT_NIGHT) == {CHAMPION: 2, PREVIOUS: 1}
    assert r.versions_to_score("churn", NEXT_NIGHT + timedelta(days=3)) == {CHAMPION: 2}
    assert r.advance("churn", NEXT_NIGHT, champion_ok=False, challenger_ok=None) == "rolled_back"
    assert r.registry.aliases("churn") == {CHAMPION: 1, PREVIOUS: 2}
    assert r.candidate(out.candidate_id)["status"] == "rolled_back"
    last = r.history("churn")[-1]
    assert last["event"] == "rolled_back"
    assert last["detail"]["automatic"] is True
    # By hand, the other way (blue/green-like toggle), and a clear error without a previous version.
    assert r.rollback("churn", by="carol") == 2
    with pytest.raises(RolloutError, match="already the champion"):
        r.promote("churn", 2)


def test_the_blue_green_switch_is_atomic_for_concurrent_readers(store_url: str, make_settings: Any) -> None:
    settings, r = _with_champion(make_settings, store_url, 'strategy = "blue_green"')
    train_and_register(settings, "churn", SCORE_DS, promote="never")  # v2
    seen: set[tuple[int | None, int | None]] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            a = r.registry.aliases("churn")
            seen.add((a.get(CHAMPION), a.get(PREVIOUS)))

    t = threading.Thread(target=read)
    t.start()
    for _ in range(5):
        r.promote("churn", 2, reason="switch to green")
        r.rollback("churn", reason="back to blue")
    stop.set()
    t.join()
    # Only whole states: (1, None) at first, then (2, 1) and (1, 2); never a half switch.
    assert seen <= {(1, None), (2, 1), (1, 2)}


def test_no_rollback_when_the_previous_version_fails_the_same_night(store_url: str, make_settings: Any) -> None:
    _settings, r = _with_champion(make_settings, store_url, "rollback_window_days = 3")
    assert r.retrain("churn", SCORE_DS, trigger={"kind": "manual"}).status == "promoted"
    # The data moved: both versions fail their monitoring, so going back would not help.
    assert r.advance("churn", NEXT_NIGHT, champion_ok=False, challenger_ok=None, previous_ok=False) == "unchanged"
    assert r.registry.aliases("churn") == {CHAMPION: 2, PREVIOUS: 1}


def test_a_broken_or_missing_end_to_end_set_fails_the_gate_naming_it(store_url: str, make_settings: Any) -> None:
    """A failure inside the end-to-end gate is a failed gate that names the set, never a crash of the retrain."""
    import pyarrow.parquet as pq

    from nightshift.training.gates import EXPECTED_COLUMN, e2e_gate

    settings, r = _with_champion(make_settings, store_url)
    out = r.retrain("churn", SCORE_DS, trigger={"kind": "manual", "by": "test"}, by="alice")
    mv = r.registry.get("churn", 2)
    e2e = Path(mv.artifact_uri).with_name("e2e.parquet")
    contract = settings.model("churn").contract
    ok = e2e_gate(mv.artifact_uri, mv.sha256, str(e2e), contract, 1e-5)
    assert ok.passed, (out.reason, ok.detail)
    # The same set with an id column that cannot be read as the contract's: scoring it fails.
    broken = e2e.with_name("broken.parquet")
    table = pq.read_table(e2e)
    pq.write_table(table.drop_columns([contract.columns[0].name]), broken)
    failed = e2e_gate(mv.artifact_uri, mv.sha256, str(broken), contract, 1e-5)
    assert not failed.passed
    assert str(broken) in failed.detail
    missing = e2e.with_name("missing.parquet")
    gone = e2e_gate(mv.artifact_uri, mv.sha256, str(missing), contract, 1e-5)
    assert not gone.passed
    assert str(missing) in gone.detail
    assert EXPECTED_COLUMN in table.column_names
