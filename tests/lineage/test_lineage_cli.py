"""`nightshift lineage` end to end, as users run it (a subprocess): a served entity's prediction → the run that
wrote it → its input files → the model version → the days it was trained on → who approved and promoted it."""

from __future__ import annotations

import hashlib
import json
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from nightshift.db import Store, open_store
from nightshift.nightly import run_night
from nightshift.rollout import Rollouts
from nightshift.training import train_and_register
from tests.cli.conftest import commit_rows, run_cli
from tests.conftest import DEMO_FILES, DEMO_ROWS, SCORE_DS

FIRST_TRAIN_DS = date(2026, 11, 17)
AIRFLOW_RUN = "scheduled__2026-11-19T00:00:00+00:00"


def _footer_sha(path: Path) -> str:
    data = path.read_bytes()
    n = int.from_bytes(data[-8:-4], "little")
    return hashlib.sha256(data[-(n + 8) :]).hexdigest()


def _serve_night(store_url: str, make_settings: Any, dask_client: Any, tmp_path: Path) -> dict[str, Any]:
    """v1 trained by carol; a retrain by alice (v2) approved by bob and promoted; the night of SCORE_DS run
    (as Airflow runs it) with v2 serving, and job metrics written to a textfile folder."""
    metrics = tmp_path / "textfiles"
    settings = make_settings(
        store_url,
        extra_model="\n[models.rollout]\nrequire_approval = true\n",
        dask=f'\n[metrics]\ntextfile_dir = "{metrics}"\n',
    )
    train_and_register(settings, "churn", FIRST_TRAIN_DS, created_by="carol")
    rollouts = Rollouts(settings)
    out = rollouts.retrain("churn", SCORE_DS, trigger={"kind": "manual", "reason": "quarterly refresh"}, by="alice")
    assert out.status == "pending_approval", out.reason
    assert out.version == 2
    rollouts.approve("churn", 2, by="bob", note="checked the gates")
    report = run_night(settings, "churn", SCORE_DS, run_key=AIRFLOW_RUN, client=dask_client)
    assert report.plan.versions == {"champion": 2}
    config = str(Path(settings.project_dir) / "nightshift.toml")
    return {"settings": settings, "report": report, "config": config, "metrics": metrics}


@pytest.fixture
def served_night(store_url: str, make_settings: Any, dask_client: Any, tmp_path: Path) -> dict[str, Any]:
    """The served night on SQLite and on PostgreSQL."""
    return _serve_night(store_url, make_settings, dask_client, tmp_path)


@pytest.fixture
def served_night_sqlite(sqlite_url: str, make_settings: Any, dask_client: Any, tmp_path: Path) -> dict[str, Any]:
    """The served night on SQLite only (what does not depend on the store)."""
    return _serve_night(sqlite_url, make_settings, dask_client, tmp_path)


def _assert_job_metrics(folder: Path) -> None:
    """The night's textfiles: one per job type, each series with sane values."""
    from prometheus_client.parser import text_string_to_metric_families

    assert sorted(p.name for p in folder.glob("*.prom")) == [
        "nightshift_monitor_churn.prom",
        "nightshift_score_churn.prom",
        "nightshift_train_churn.prom",
    ]
    values: dict[tuple[str, str, str], float] = {}
    for path in folder.glob("*.prom"):
        for family in text_string_to_metric_families(path.read_text()):
            for s in family.samples:
                key = (s.name, s.labels["job_type"], s.labels["version"] + s.labels.get("process", ""))
                values[key] = s.value
    assert values[("nightshift_job_rows", "score", "2")] == DEMO_ROWS
    assert values[("nightshift_job_rows", "monitor", "2")] == DEMO_ROWS
    assert values[("nightshift_job_success", "train", "1")] == values[("nightshift_job_success", "train", "2")] == 1
    assert 0 < values[("nightshift_job_rows", "train", "2")] <= 2 * DEMO_ROWS
    for job in ("score", "monitor", "train"):
        seconds = values[("nightshift_job_duration_seconds", job, "2")]
        assert 0 < seconds < 600
        rate = values[("nightshift_job_rows_per_second", job, "2")]
        assert rate == pytest.approx(values[("nightshift_job_rows", job, "2")] / seconds, rel=1e-6)
        assert 50 * 2**20 < values[("nightshift_job_peak_memory_bytes", job, "2driver")] < 64 * 2**30
    assert 20 * 2**20 < values[("nightshift_job_peak_memory_bytes", "score", "2workers")] < 64 * 2**30


def test_lineage_answers_for_a_served_entity_end_to_end_in_json_and_the_night_left_job_metrics(
    served_night: dict[str, Any], data_root: Path
) -> None:
    settings, night = served_night["settings"], served_night["report"]
    store = open_store(settings)
    [pred] = store.lookup("churn", 2, SCORE_DS, ["42"])
    r = run_cli(
        "lineage", "-m", "churn", "--ds", SCORE_DS.isoformat(), "--entity", "42", "--json", "-c", served_night["config"]
    )
    assert r.returncode == 0, r.stderr
    answer = json.loads(r.stdout)
    steps = answer["steps"]
    assert (answer["model"], answer["ds"], answer["entity"], answer["version"]) == ("churn", "2026-11-18", "42", 2)
    assert all(s["answered"] for s in steps.values()), {k: s["why"] for k, s in steps.items() if not s["answered"]}

    # served: the night recorded v2 as the champion serving every entity.
    assert [(s["role"], s["version"], s["share"]) for s in steps["served"]["served"]] == [("champion", 2, 1.0)]
    # prediction: exactly the committed row.
    assert steps["prediction"]["score"] == pytest.approx(pred.score)
    assert steps["prediction"]["label"] == pred.label
    run_id = night.scored["champion"]["store_run_id"]
    assert steps["prediction"]["run_id"] == run_id == steps["served"]["served"][0]["run_id"]
    # run: Airflow's run id, where and when.
    run = steps["run"]
    assert (run["run_id"], run["run_key"], run["status"]) == (run_id, AIRFLOW_RUN, "committed")
    assert run["host"]
    assert run["started_at"] <= run["finished_at"]
    assert run["input_rows"] == DEMO_ROWS
    # inputs: every file with its bytes, rows and footer fingerprint.
    files = sorted((data_root / "features" / f"ds={SCORE_DS.isoformat()}").glob("*.parquet"))
    assert len(files) == DEMO_FILES
    assert [(f["uri"], f["size_bytes"], f["rows"], f["sha256"]) for f in steps["inputs"]["files"]] == [
        (str(p), p.stat().st_size, pq.ParquetFile(p).metadata.num_rows, _footer_sha(p)) for p in files
    ]
    # model: the artifact and its SHA-256, the same the run recorded; registered by alice's retrain.
    model = steps["model"]
    assert (
        model["sha256"] == hashlib.sha256(Path(model["artifact_uri"]).read_bytes()).hexdigest() == model["run_sha256"]
    )
    assert (model["version"], model["registered_by"], model["source"]) == (2, "alice", None)
    # training: the retrain's window (up to the day before the held-out test day) and the set's hash.
    training = steps["training"]
    assert [p["ds"] for p in training["partitions"]] == ["2026-11-16", "2026-11-17"]
    assert len(training["content_sha256"]) == 64
    assert training["confidence_test"]["days"] == ["2026-11-18"]
    # approval: the candidate, bob's approval, the promotion to champion.
    approval = steps["approval"]
    [cand] = approval["candidates"]
    assert cand["created_by"] == "alice"
    assert cand["trigger"]["reason"] == "quarterly refresh"
    assert all(g["passed"] for g in cand["gates"])
    assert approval["approved_by"] == "bob"
    assert approval["approved_at"] is not None
    assert approval["promoted_by"] == "bob"
    assert ("champion", 1, 2) in {(m["alias"], m["from_version"], m["to_version"]) for m in approval["alias_moves"]}
    assert "approved" in [a["event"] for a in approval["audit"]]
    # The same night left its job metrics for operators: training, scoring and monitoring.
    _assert_job_metrics(served_night["metrics"])


def test_lineage_in_text_names_each_step_and_verify_spots_a_changed_file(
    served_night_sqlite: dict[str, Any], data_root: Path
) -> None:
    config = served_night_sqlite["config"]
    r = run_cli("lineage", "-m", "churn", "--ds", SCORE_DS.isoformat(), "-e", "42", "-c", config)
    assert r.returncode == 0, r.stderr
    text = r.stdout
    assert text.startswith("churn ds=2026-11-18 entity 42: v2")
    for title in ("served", "prediction", "run", "input files", "model version", "training data", "approval"):
        assert f"\n  {title}" in text, title
    assert "unanswered" not in text
    assert AIRFLOW_RUN in text
    assert "approved by bob" in text
    assert "trained on 2026-11-16" in text
    victim = sorted((data_root / "features" / f"ds={SCORE_DS.isoformat()}").glob("*.parquet"))[0]
    victim.unlink()
    r = run_cli("lineage", "-m", "churn", "--ds", SCORE_DS.isoformat(), "--verify", "-c", config)
    assert r.returncode == 0, r.stderr
    assert f"{victim}" in r.stdout
    assert "[missing]" in r.stdout
    assert "note: 1 file(s) differ from what run" in r.stdout
    # No entity: the lineage of the whole partition; the prediction step says why it has none.
    assert "unanswered: no entity asked for" in r.stdout


def test_a_run_that_predates_lineage_says_so(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = commit_rows(sqlite_url, "churn", 1, SCORE_DS, ["1", "2", "3"], run_key="old-run")
    project = tmp_path / "p.toml"
    from tests.conftest import model_block

    project.write_text(
        f'state_dir = "{tmp_path / "state"}"\nstore_url = "{sqlite_url}"\n' + model_block("churn", tmp_path)
    )
    r = run_cli("lineage", "-m", "churn", "--ds", SCORE_DS.isoformat(), "-e", "2", "--json", "-c", str(project))
    assert r.returncode == 0, r.stderr
    steps = json.loads(r.stdout)["steps"]
    assert steps["prediction"]["answered"]
    assert steps["run"]["run_id"] == run
    assert not steps["inputs"]["answered"]
    assert steps["inputs"]["why"].startswith(f"run {run} predates lineage recording (migration 0009)")
    assert not steps["served"]["answered"]
    assert "recorded what served" in steps["served"]["why"]
    assert not steps["model"]["answered"]
    assert "no version 1" in steps["model"]["why"]
    # An entity the day does not hold, and a model the project does not declare (in process: same entry point).
    from nightshift.cli import main

    with pytest.raises(SystemExit) as done:
        main(["lineage", "-m", "churn", "--ds", SCORE_DS.isoformat(), "-e", "nobody", "-c", str(project)])
    assert done.value.code == 0
    assert "unanswered: entity 'nobody' is not among the 3 rows" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(["lineage", "-m", "nope", "--ds", SCORE_DS.isoformat(), "--json", "-c", str(project)])
    assert done.value.code == 1
    assert json.loads(capsys.readouterr().out)["error"] == "ModelNotFound"


def test_the_answer_is_about_the_version_that_served_the_day(sqlite_url: str, tmp_path: Path) -> None:
    """Not today's champion, nor the newest committed version: the one the `served` table recorded for that day,
    and, inside a canary's share, the challenger for the entities it answered."""
    from nightshift.config import load_settings
    from nightshift.lineage import trace
    from nightshift.nightly import NightPlan, record_served
    from nightshift.rollout.canary import serves_challenger
    from tests.conftest import model_block

    ids = [str(i) for i in range(200)]
    v1 = commit_rows(sqlite_url, "churn", 1, SCORE_DS, ids)
    v2 = commit_rows(sqlite_url, "churn", 2, SCORE_DS, ids)
    project = tmp_path / "p.toml"
    project.write_text(
        f'state_dir = "{tmp_path / "state"}"\nstore_url = "{sqlite_url}"\n' + model_block("churn", tmp_path)
    )
    settings = load_settings(project)
    store = Store(sqlite_url)
    try:
        # Nothing recorded as serving: two committed versions, the newest shown, and the answer says why.
        answer = trace(settings, "churn", SCORE_DS, store=store)
        assert answer.version == 2
        assert not answer.steps["served"].answered
        assert "versions v1, v2 are committed" in answer.steps["served"].facts["reason"]
        # The night recorded v1 as the champion serving everyone: that is the answer, whatever came since.
        record_served(
            store, NightPlan("churn", SCORE_DS, "nightly", "test", {"champion": 1}, {"champion": 1.0}), {"champion": v1}
        )
        answer = trace(settings, "churn", SCORE_DS, entity="7", store=store)
        assert answer.version == 1
        assert answer.steps["prediction"].facts["run_id"] == v1
        assert answer.steps["served"].answered
        # A canary: v2 answered 30% of entities, each entity's lineage follows its own version.
        plan = NightPlan(
            "churn", SCORE_DS, "nightly", "t", {"champion": 1, "challenger": 2}, {"champion": 0.7, "challenger": 0.3}
        )
        record_served(store, plan, {"champion": v1, "challenger": v2})
        canary = next(i for i in ids if serves_challenger("churn", i, 0.3))
        other = next(i for i in ids if not serves_challenger("churn", i, 0.3))
        inside = trace(settings, "churn", SCORE_DS, entity=canary, store=store)
        outside = trace(settings, "churn", SCORE_DS, entity=other, store=store)
        assert (inside.version, inside.steps["prediction"].facts["run_id"]) == (2, v2)
        assert (outside.version, outside.steps["prediction"].facts["run_id"]) == (1, v1)
        assert "inside the canary's 30% share" in inside.steps["served"].facts["reason"]
        # --version explains another version, and says it is not what served.
        asked = trace(settings, "churn", SCORE_DS, entity=other, version=2, store=store)
        assert asked.version == 2
        assert asked.steps["served"].why is None  # v2 did serve (the canary's share)
    finally:
        store.dispose()
