"""Settings: one project file (nightshift.toml) with environment-variable overrides."""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from nightshift.contracts import FeatureContract
from nightshift.errors import ConfigError, ModelNotFound

CONFIG_ENV = "NIGHTSHIFT_CONFIG"
DEFAULT_CONFIG_NAME = "nightshift.toml"

_toml_path: ContextVar[Path | None] = ContextVar("nightshift_toml_path", default=None)

_MODEL_NAME = r"^[a-z][a-z0-9_]{0,62}$"


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (what a container's cpuset allows), else the machine's."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores)


class DaskSettings(BaseModel):
    """Where scoring runs: a local cluster (default) or an existing scheduler."""

    model_config = ConfigDict(extra="forbid")

    scheduler_address: str | None = Field(
        default=None, description="tcp://host:8786 of an existing Dask scheduler; unset starts a local cluster"
    )
    connect_timeout_s: float = Field(
        default=30.0, gt=0, le=3600, description="how long a run tries to reach scheduler_address before it fails"
    )
    n_workers: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="local worker processes; default: one per core (with SQLite the driver writes the rows "
        "and workers wait whenever they get ahead of it)",
    )
    threads_per_worker: int = Field(default=1, ge=1, le=64)
    memory_limit: str = Field(default="2GiB", description="per local worker, Dask syntax ('2GiB', 'auto')")
    processes: bool = Field(default=True, description="local workers as processes (True) or threads (False)")
    start_method: Literal["fork", "spawn", "forkserver"] = Field(
        default="fork",
        description="how local worker processes start; 'fork' also works inside an Airflow task, 'spawn' does not",
    )

    log_level: Literal["INFO", "WARNING", "ERROR"] = Field(
        default="WARNING",
        description="level of Dask's own loggers (`distributed.*`) while a local cluster runs; its start/stop "
        "chatter is INFO, so the default keeps a run's log to the night's facts",
    )

    ort_intra_op_threads: int = Field(
        default=1,
        ge=1,
        le=64,
        description="ONNX Runtime threads per task; each Dask worker thread runs one task, so 1 keeps "
        "the cores busy without oversubscribing them",
    )
    task_min_rows: int = Field(
        default=65_536,
        ge=1,
        le=1_000_000,
        description="small files are scored together, in tasks of at least this many rows (one read, one staged "
        "chunk, one ledger row each): a partition of 1,000 files of 4,000 rows costs a task per 16 files, not "
        "per file; 1 gives every file its own task",
    )

    def local_workers(self) -> int:
        """How many local workers to start (see n_workers)."""
        if self.n_workers is not None:
            return self.n_workers
        return usable_cores()

    @field_validator("scheduler_address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        assert v is not None
        if "://" not in v:
            raise ValueError(f"expected a scheduler address such as tcp://host:8786, got {v!r}")
        return v


class EstimatorSettings(BaseModel):
    """The estimator at the end of the model's pipeline (nightshift's own training), and its task."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["logistic_regression", "random_forest", "gradient_boosting", "lightgbm", "xgboost"] = Field(
        default="logistic_regression",
        description="the estimator; for a regression logistic_regression means Ridge, the trees their regressors",
    )
    task: Literal["binary", "multiclass", "regression"] = Field(
        default="binary", description="what the model predicts from the label column: 0/1, one of K classes, a value"
    )
    params: dict[str, Any] = Field(default_factory=dict)


class TrainingSettings(BaseModel):
    """Which labelled partitions a training run reads, and how it is checked."""

    model_config = ConfigDict(extra="forbid")

    window_days: int = Field(default=3, ge=1, description="labelled days up to the training ds")
    max_rows: int = Field(default=200_000, ge=100, description="deterministic sample cap on training rows")
    validation_fraction: float = Field(default=0.2, gt=0, lt=1)
    parity_tolerance: float = Field(default=1e-4, gt=0, description="max |ONNX - sklearn| on probabilities")
    parity_rows: int = Field(default=5000, ge=10)
    seed: int = 0
    regime_window: bool = Field(
        default=True,
        description="a retrain triggered by a sustained shift trains on the days since the detected onset "
        "(when there are at least min_regime_days of them), so the candidate and its reference see the new regime",
    )
    min_regime_days: int = Field(default=1, ge=1, description="labelled days since the onset needed to use them alone")


class GateSettings(BaseModel):
    """What a retrained candidate must prove before it can roll out."""

    model_config = ConfigDict(extra="forbid")

    metric: Literal["roc_auc", "log_loss", "brier", "accuracy", "f1", "macro_f1", "rmse", "mae", "r2"] = Field(
        default="roc_auc",
        description="the metric the gates judge, on the confidence test set; it must be one of the model's task: "
        "binary roc_auc/log_loss/brier/accuracy/f1, multiclass log_loss/accuracy/macro_f1, regression rmse/mae/r2",
    )
    min: float | None = Field(default=0.65, description="acceptable range: lowest value (None: no bound)")
    max: float | None = Field(default=None, description="acceptable range: highest value (None: no bound)")
    champion_tolerance: float = Field(
        default=0.01, ge=0, description="the candidate may be this much worse than the champion on the same data"
    )
    test_days: int = Field(default=1, ge=1, description="newest labelled days held out as the confidence test set")
    e2e_rows: int = Field(default=256, ge=16, le=100_000, description="rows in the end-to-end test set")
    e2e_tolerance: float = Field(default=1e-4, gt=0, description="max |score - expected| on the end-to-end set")


OutcomeMetric = Literal["log_loss", "brier", "accuracy", "squared_error", "absolute_error", "reward"]


class OutcomeSettings(BaseModel):
    """How labelled outcomes decide promotions and rollbacks (`[models.rollout.outcomes]`, rollout/stats.py)."""

    model_config = ConfigDict(extra="forbid")

    metrics: list[OutcomeMetric] | None = Field(
        default=None,
        description="per-entity outcome metrics tested (Holm-Bonferroni over them); default by task: binary and "
        "multiclass log_loss + accuracy, regression squared_error + absolute_error",
    )
    alpha: float = Field(default=0.05, gt=0, lt=0.5, description="family-wise error rate over the metrics")
    power: float = Field(default=0.8, gt=0.5, lt=1, description="power of the tests at the minimum sample size")
    effect_size: float = Field(
        default=0.05,
        gt=0,
        le=2,
        description="the smallest standardized difference that matters (Cohen's d / d_z / h): the non-inferiority "
        "margin, and the effect the minimum sample size is powered for",
    )
    paired_test: Literal["t", "wilcoxon"] = Field(
        default="t", description="shadow (same entities): paired t-test or Wilcoxon signed-rank"
    )


class BanditSettings(BaseModel):
    """Thompson sampling among versions (`[models.rollout.bandit]`, rollout/bandit.py)."""

    model_config = ConfigDict(extra="forbid")

    reward: str = Field(
        default="correct",
        description="'correct' (the served decision matched the label; a regression: minus the absolute error) or "
        "the name of a numeric column of the labels holding a business reward",
    )
    floor: float = Field(default=0.05, ge=0, lt=0.5, description="the smallest share of entities any arm gets")
    promote_probability: float = Field(
        default=0.95,
        gt=0.5,
        lt=1,
        description="promote the candidate arm once P(it is the best arm) reaches this and its outcome tests "
        "support it (rollout.outcomes)",
    )
    draws: int = Field(default=20_000, ge=1_000, le=1_000_000, description="posterior draws per reallocation")


class RolloutSettings(BaseModel):
    """How a candidate that passed its gates reaches the business apps."""

    model_config = ConfigDict(extra="forbid")

    strategy: Literal["direct", "shadow", "canary", "blue_green", "bandit"] = "direct"
    require_approval: bool = Field(default=False, description="wait for `nightshift approve` (or Airflow HITL)")
    canary_share: float = Field(default=0.1, gt=0, lt=1, description="share of entities served by the challenger")
    promote_after_nights: int = Field(
        default=3,
        ge=1,
        description="nights a shadow/canary challenger runs at least; it promotes on a night whose labelled "
        "outcomes support it (rollout.outcomes), never on drift checks",
    )
    rollback_window_days: int = Field(
        default=3,
        ge=0,
        description="nights `previous` is scored beside a new champion; the champion is rolled back when its "
        "labelled outcomes in them breach its acceptable range or are significantly worse than previous",
    )
    label_delay_days: int = Field(
        default=0,
        ge=0,
        le=365,
        description="nights after a ds its labels land: outcome rollbacks stay possible this long after the window",
    )
    outcomes: OutcomeSettings = Field(default_factory=OutcomeSettings)
    bandit: BanditSettings = Field(default_factory=BanditSettings)


class ScheduleSettings(BaseModel):
    """When the model's nightly DAG runs and how long it waits for its data (`[models.schedule]`)."""

    model_config = ConfigDict(extra="forbid")

    cron: str = Field(
        default="0 0 * * *", description="score_<model> runs at this cron (UTC) for the day its interval starts"
    )
    wait_timeout_s: float = Field(
        default=6 * 3600, gt=0, description="how long a run waits for its partition's success marker, then fails"
    )
    poke_interval_s: float = Field(default=60, gt=0, description="how often the triggerer looks for the marker")
    labels_timeout_s: float = Field(
        default=7 * 24 * 3600, gt=0, description="how long quality_<model> waits for a day's labels"
    )
    labels_poke_interval_s: float = Field(default=15 * 60, gt=0, description="how often it looks for them")
    group: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_]+$",
        description="models with the same group (same dataset, partition key and cron) are scored in ONE read of "
        "each night's partition, by one DAG score_<group>, and each committed on its own",
    )


DriftMethod = Literal["wasserstein", "jensenshannon", "psi"]


def _default_drift_thresholds() -> dict[DriftMethod, float]:
    # Evidently's defaults for these statistics.
    return {"wasserstein": 0.1, "jensenshannon": 0.1, "psi": 0.1}


class ColumnMonitoring(BaseModel):
    """Per-column overrides of the monitoring thresholds (`[models.monitoring.columns.<name>]`)."""

    model_config = ConfigDict(extra="forbid")

    drift: bool = Field(default=True, description="check this column's drift (false: quality checks only)")
    method: DriftMethod | None = Field(default=None, description="drift statistic; default: by column type")
    drift_threshold: float | None = Field(default=None, gt=0, description="default: the method's threshold")
    max_missing_share: float | None = Field(default=None, ge=0, le=1)
    max_missing_increase: float | None = Field(default=None, ge=0, le=1)
    max_out_of_range_share: float | None = Field(default=None, ge=0, le=1)
    max_new_category_share: float | None = Field(default=None, ge=0, le=1)


class MonitoringSettings(BaseModel):
    """Data-quality and drift checks per committed partition, label quality, and when to ask for retraining."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    # Sampling: drift is measured on a deterministic sample keyed by a seeded hash of the entity id.
    sample_rows: int = Field(default=100_000, ge=1_000, description="cap on the night's drift sample")
    reference_rows: int = Field(default=100_000, ge=1_000, description="cap on the version's reference sample")
    report_rows: int = Field(default=5_000, ge=100, description="rows of the sample the Evidently HTML report shows")
    sample_seed: int = Field(default=0, ge=0)
    min_rows: int = Field(default=500, ge=1, description="fewer sampled rows than this: drift is insufficient_data")
    report: bool = Field(default=True, description="write the Evidently HTML report of each night")
    # Drift: distances, not p-values (at 1M rows every p-value test flags trivial differences).
    num_method: DriftMethod = "wasserstein"
    cat_method: Literal["jensenshannon", "psi"] = "jensenshannon"
    score_method: DriftMethod = "wasserstein"
    drift_thresholds: dict[DriftMethod, float] = Field(
        default_factory=_default_drift_thresholds,
        description="threshold per statistic: a column drifts when its distance is >= this",
    )
    score_threshold: float | None = Field(default=None, gt=0, description="default: score_method's threshold")
    drift_share: float = Field(default=0.5, gt=0, le=1, description="dataset drift: share of drifted features")
    column_drift: Literal["fail", "warn"] = Field(
        default="fail", description="a single drifted feature fails the night ('fail') or is only reported ('warn')"
    )
    # Data quality, on every row of the partition.
    max_missing_share: float | None = Field(default=None, ge=0, le=1, description="absolute cap; unset: none")
    max_missing_increase: float = Field(default=0.05, ge=0, le=1, description="over the reference's missing share")
    max_out_of_range_share: float = Field(default=0.001, ge=0, le=1, description="outside the contract's min/max")
    max_new_category_share: float = Field(default=0.001, ge=0, le=1, description="categories unseen in training")
    volume_window_days: int = Field(default=7, ge=1, description="usual volume: median of these committed days")
    volume_min_history: int = Field(default=3, ge=1, description="fewer committed days: volume is insufficient_data")
    min_volume_ratio: float = Field(default=0.5, ge=0, description="rows / usual volume below this fails")
    max_volume_ratio: float = Field(default=2.0, gt=0, description="rows / usual volume above this fails")
    # Quality once labels arrive.
    min_labelled_rows: int = Field(default=200, ge=1, description="fewer joined rows: insufficient_data")
    label_rows: int = Field(default=200_000, ge=1_000, description="cap on rows of the label-quality join")
    min_roc_auc: float | None = Field(default=None, ge=0, le=1)
    max_roc_auc_drop: float | None = Field(
        default=0.05, ge=0, le=1, description="below the version's validation ROC AUC by more than this fails"
    )
    max_log_loss: float | None = Field(default=None, gt=0)
    min_precision: float | None = Field(default=None, ge=0, le=1)
    min_recall: float | None = Field(default=None, ge=0, le=1)
    max_macro_f1_drop: float | None = Field(
        default=0.05,
        ge=0,
        le=1,
        description="multiclass: below the version's recorded macro F1 by more than this fails",
    )
    max_rmse_increase: float | None = Field(
        default=0.25, ge=0, description="regression: above the version's recorded RMSE by more than this share fails"
    )
    seasonality: Literal["none", "weekly"] = Field(
        default="none",
        description="'weekly': check each night against the reference days of its own weekday (monitoring/"
        "seasonal.py), so a weekly rhythm is not drift; the training window should then cover whole weeks",
    )
    estimate_performance: bool = Field(
        default=True,
        description="each night, a label-free estimate of the champion's quality from its calibrated probabilities "
        "(CBPE: expected ROC AUC, accuracy, ...), compared with the realized value once labels land",
    )
    # Retraining decision: hysteresis (N failing of the last M nights) and cooldown.
    retrain_failing_nights: int = Field(default=2, ge=1, description="N: failing nights needed ...")
    retrain_window_nights: int = Field(default=3, ge=1, description="... among the last M nights")
    retrain_cooldown_days: int = Field(default=7, ge=0, description="no new trigger within K days of the last")
    columns: dict[str, ColumnMonitoring] = Field(default_factory=dict, description="per-column overrides")

    @model_validator(mode="after")
    def _hysteresis(self) -> MonitoringSettings:
        if self.retrain_failing_nights > self.retrain_window_nights:
            raise ValueError(
                f"retrain_failing_nights ({self.retrain_failing_nights}) must not exceed "
                f"retrain_window_nights ({self.retrain_window_nights})"
            )
        if self.min_volume_ratio >= self.max_volume_ratio:
            raise ValueError("min_volume_ratio must be below max_volume_ratio")
        return self


#: Estimator kinds whose scores nightshift can explain exactly (`[models.explain]`): the linear pipeline in closed
#: form, LightGBM and XGBoost by their own TreeSHAP. Random forests and scikit-learn gradient boosting have no exact
#: explainer here.
EXPLAINABLE_KINDS = ("logistic_regression", "lightgbm", "xgboost")


class ExplainSettings(BaseModel):
    """Reasons for each score (opt-in): the top-k feature contributions of every prediction, computed at scoring
    time beside the ONNX session and committed with the predictions (`?explain=true` in the API,
    `nightshift predictions --explain`)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        default=False,
        description="store the top-k feature contributions of every prediction (exact: closed form for the linear "
        "pipeline, TreeSHAP for LightGBM and XGBoost); off: scoring computes and stores nothing extra; training "
        "and registration record the explainer either way (for LightGBM/XGBoost, a copy of the booster beside the "
        "artifact), so reasons can be turned on without retraining",
    )
    top_k: int = Field(
        default=3,
        ge=1,
        le=32,
        description="how many contributions each prediction keeps, largest |contribution| first (at most the "
        "number of features)",
    )


class ModelSettings(BaseModel):
    """One model: its data, contract, estimator and scoring knobs."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_MODEL_NAME)
    description: str = ""
    dataset: str = Field(description="root of the feature partitions: a path or an fsspec URI")
    labels: str | None = Field(default=None, description="root of the label partitions, same layout")
    label_column: str = "label"
    partition_key: str = "ds"
    success_marker: str = "_SUCCESS"
    contract: FeatureContract
    estimator: EstimatorSettings = Field(default_factory=EstimatorSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    gates: GateSettings = Field(default_factory=GateSettings)
    rollout: RolloutSettings = Field(default_factory=RolloutSettings)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    decision_threshold: float = Field(default=0.5, gt=0, lt=1)
    batch_rows: int = Field(
        default=16_384,
        ge=1_024,
        le=4_194_304,
        description="rows per ONNX Runtime call (16,384: measured faster than 65,536 for both bench models, "
        "with less memory per worker)",
    )
    empty_partition: Literal["error", "commit"] = Field(
        default="error",
        description="a ready partition without rows: fail loudly (default) or commit it empty",
    )
    retention_days: int | None = Field(
        default=None, ge=1, description="`nightshift gc` removes committed days older than this; unset keeps all"
    )
    history_days: float = Field(
        default=0,
        ge=0,
        description="a re-scored day's replaced predictions stay readable this many days (the API's ?as_of=); 0, "
        "the default, removes them at the commit that replaces them",
    )
    explain: ExplainSettings = Field(
        default_factory=ExplainSettings, description="reasons for each score (top-k feature contributions), opt-in"
    )
    owner: str = "nightshift"

    @model_validator(mode="after")
    def _explainable(self) -> ModelSettings:
        if self.explain.enabled and self.estimator.kind not in EXPLAINABLE_KINDS:
            raise ValueError(
                f"model {self.name!r}: explain.enabled needs an estimator nightshift can explain exactly "
                f"({', '.join(EXPLAINABLE_KINDS)}); {self.estimator.kind!r} has no exact per-row explainer here"
            )
        return self

    def dataset_uri(self, settings: Settings) -> str:
        return settings.resolve(self.dataset)

    def labels_uri(self, settings: Settings) -> str | None:
        return settings.resolve(self.labels) if self.labels else None


class NotifySettings(BaseModel):
    """Where alerts go besides the log."""

    model_config = ConfigDict(extra="forbid")

    webhook_url: str | None = Field(default=None, description="POSTed a JSON body per alert; unset: log only")
    timeout_s: float = Field(default=5.0, gt=0, le=60)


class ApiSettings(BaseModel):
    """The lookup API (`nightshift api`)."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    docs_enabled: bool = Field(default=True, description="serve /docs and /openapi.json; switch off in production")
    max_batch_ids: int = Field(default=1000, ge=1, le=100_000)
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    rate_limit_per_minute: int = Field(default=6000, ge=1, description="per API key")
    freshness_limit_hours: float = Field(default=36.0, gt=0, description="readiness fails past this age")
    workers: int = Field(default=1, ge=1, le=64, description="uvicorn worker processes (`nightshift api`)")
    store_url: str | None = Field(
        default=None, description="read from this SQLAlchemy URL (e.g. a read replica); default: the store's"
    )
    pool_size: int = Field(default=4, ge=1, le=100, description="database connections per worker process")
    db_timeout_s: float = Field(
        default=5.0, gt=0, le=300, description="wait for a pooled connection, and PostgreSQL statement timeout"
    )
    rate_limit_burst: int = Field(default=200, ge=1, description="requests a key may save up (token bucket size)")
    key_cache_ttl_s: float = Field(
        default=5.0, ge=0, le=300, description="how long a worker trusts a key lookup: revocation takes this long"
    )
    resolve_cache_ttl_s: float = Field(
        default=0.0,
        ge=0,
        le=300,
        description="how long a worker trusts model/alias -> (version, newest ds); 0 (default) disables the "
        "cache, which measured no gain (docs/api.md)",
    )
    coalesce_lookups: bool = Field(
        default=True, description="concurrent single lookups of one partition share one statement"
    )
    cache_entries: int = Field(
        default=0,
        ge=0,
        le=50_000_000,
        description="answers cached per worker process, keyed by committed run and entity (LRU; 0, the default: "
        "off; it pays only on skewed batch traffic, docs/api.md); the run that answers is still resolved per "
        "request, so a commit is seen at once",
    )
    redis_url: str | None = Field(
        default=None,
        description="a Redis shared by all API workers as a second cache tier, e.g. redis://cache:6379/0 "
        "(needs the `redis` package); default: none",
    )
    redis_ttl_s: int = Field(
        default=172_800, ge=1, description="how long Redis keeps a cached answer (keys of replaced runs expire)"
    )
    redis_timeout_s: float = Field(
        default=0.05, gt=0, le=10, description="Redis socket timeout; after an error Redis is skipped for 5 s"
    )
    redis_prefix: str | None = Field(
        default=None,
        max_length=200,
        description="key prefix in Redis; default: nightshift:<hash of the store URL>: (one store per prefix)",
    )


class LineageSettings(BaseModel):
    """What each run records of its inputs, and where its OpenLineage run events go (`[lineage]`)."""

    model_config = ConfigDict(extra="forbid")

    fingerprint: Literal["footer", "content"] = Field(
        default="footer",
        description="each input file's fingerprint: SHA-256 of its Parquet footer ('footer': two small reads a "
        "file, whatever its size) or of all its bytes ('content': reads every byte)",
    )
    openlineage_url: str | None = Field(
        default=None,
        description="base URL of an OpenLineage endpoint (e.g. Marquez, http://marquez:5000): each scoring and "
        "training run POSTs START and COMPLETE/FAIL events there; unset: where openlineage-python's own "
        "configuration sends them (OPENLINEAGE_URL, openlineage.yml), else none are sent",
    )
    openlineage_endpoint: str = Field(default="api/v1/lineage", description="path of the endpoint under the URL")
    openlineage_api_key: SecretStr | None = Field(
        default=None, description="sent as 'Authorization: Bearer <key>' when set"
    )
    namespace: str = Field(default="nightshift", min_length=1, description="the OpenLineage namespace of the jobs")
    timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description="the longest a run waits for each event, whatever the transport, and for the client to close "
        "(send what it still queues) after the run's last event; an endpoint that is down or slow never fails a run",
    )


class MetricsSettings(BaseModel):
    """Job metrics for operators (`[metrics]`): rows, seconds, rows/s, peak memory of each job run."""

    model_config = ConfigDict(extra="forbid")

    textfile_dir: str | None = Field(
        default=None,
        description="folder of node_exporter's textfile collector: one <job>_<model>.prom file per job kind and "
        "model, rewritten atomically after each run; unset: none is written",
    )
    pushgateway_url: str | None = Field(
        default=None, description="a Prometheus Pushgateway (http://host:9091): each run pushes its group there"
    )
    timeout_s: float = Field(default=5.0, gt=0, le=60, description="for the push; a failed push never fails a run")


class Settings(BaseSettings):
    """Everything nightshift needs, read from the project file then overridden by NIGHTSHIFT_* variables."""

    model_config = SettingsConfigDict(
        env_prefix="NIGHTSHIFT_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    state_dir: str = Field(default=".nightshift", description="local state: SQLite store, artifacts, reports")
    store_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the prediction store; default sqlite:///<state_dir>/store.db"
    )
    artifacts: str | None = Field(default=None, description="where model artifacts live; default <state_dir>/models")
    reports: str | None = Field(default=None, description="where reports live; default <state_dir>/reports")
    run_lock_timeout_s: float = Field(default=3600.0, ge=0)
    connect_retries: int = Field(default=3, ge=0, le=20, description="attempts to reach the store before failing")
    dask: DaskSettings = Field(default_factory=DaskSettings)
    notify: NotifySettings = Field(default_factory=NotifySettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    lineage: LineageSettings = Field(default_factory=LineageSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    models: list[ModelSettings] = Field(default_factory=list)

    # Set by load_settings, not by the file: the folder relative paths are resolved against.
    project_dir: str = Field(default=".", exclude=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _toml_path.get()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @model_validator(mode="after")
    def _unique_models(self) -> Settings:
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model name(s) declared twice: {', '.join(dupes)}")
        for group, members in self.groups().items():
            if group in names:
                raise ValueError(f"schedule group {group!r} has the name of a model: DAG score_{group} would be both")
            first = members[0]
            for m in members[1:]:
                for what in ("dataset", "partition_key", "success_marker"):
                    if getattr(m, what) != getattr(first, what):
                        raise ValueError(
                            f"models {first.name!r} and {m.name!r} of schedule group {group!r} differ in {what} "
                            f"({getattr(first, what)!r} vs {getattr(m, what)!r}): a group shares one read of one "
                            "partition"
                        )
                if m.schedule.cron != first.schedule.cron:
                    raise ValueError(
                        f"models {first.name!r} and {m.name!r} of schedule group {group!r} differ in schedule.cron "
                        f"({first.schedule.cron!r} vs {m.schedule.cron!r}): a group runs as one DAG"
                    )
        return self

    def groups(self) -> dict[str, list[ModelSettings]]:
        """Schedule group → its models (in file order); models without a group are not listed."""
        out: dict[str, list[ModelSettings]] = {}
        for m in self.models:
            if m.schedule.group:
                out.setdefault(m.schedule.group, []).append(m)
        return out

    # -- resolved locations -------------------------------------------------------------

    def resolve(self, location: str) -> str:
        """A path relative to the project file, or a URI, as an absolute location."""
        if "://" in location:
            return location
        p = Path(location).expanduser()
        if not p.is_absolute():
            p = Path(self.project_dir) / p
        return str(p.resolve())

    @property
    def state_path(self) -> Path:
        return Path(self.resolve(self.state_dir))

    @property
    def resolved_store_url(self) -> str:
        url = self.store_url or f"sqlite:///{self.state_path / 'store.db'}"
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            rel = url.removeprefix("sqlite:///")
            if rel and rel != ":memory:":
                url = "sqlite:///" + self.resolve(rel)
        return url

    @property
    def artifacts_uri(self) -> str:
        return self.resolve(self.artifacts or str(self.state_path / "models"))

    @property
    def reports_uri(self) -> str:
        return self.resolve(self.reports or str(self.state_path / "reports"))

    def model(self, name: str) -> ModelSettings:
        for m in self.models:
            if m.name == name:
                return m
        known = ", ".join(m.name for m in self.models) or "none"
        raise ModelNotFound(f"model {name!r} is not declared in the project file (declared: {known})")


def find_config(path: str | Path | None = None) -> Path:
    """The project file: the given path, $NIGHTSHIFT_CONFIG, or ./nightshift.toml."""
    if path is None:
        path = os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_NAME
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(
            f"project file {str(p)!r} not found: pass --config, set {CONFIG_ENV}, "
            f"or run from a folder holding {DEFAULT_CONFIG_NAME}"
        )
    return p.resolve()


def _format_validation_error(exc: ValidationError, source: str, raw: dict[str, Any]) -> str:
    lines = [f"{source}: invalid settings"]
    for err in exc.errors():
        key = ""
        node: Any = raw
        for item in err.get("loc", ()):
            if isinstance(item, int):
                key += f"[{item}]"
                node = node[item] if isinstance(node, list) and item < len(node) else None
                if isinstance(node, dict) and isinstance(node.get("name"), str):
                    key += f" ({node['name']})"
            else:
                key += ("." if key else "") + str(item)
                node = node.get(item) if isinstance(node, dict) else None
        key = key or "(top level)"
        msg = err.get("msg", "invalid")
        got = err.get("input")
        got_s = "" if err.get("type") == "missing" else f" (got {got!r})"
        if len(got_s) > 120:
            got_s = got_s[:117] + "...)"
        lines.append(f"  {key}: {msg}{got_s}")
    return "\n".join(lines)


#: NIGHTSHIFT_* variables the project uses that are not settings: the project file, the audit trail's user,
#: tests, benchmarks, the docker images and their init scripts, and the local Airflow (NIGHTSHIFT_AIRFLOW_*).
PROJECT_VARIABLES = frozenset(
    {
        CONFIG_ENV,
        "NIGHTSHIFT_USER",
        "NIGHTSHIFT_SESSION_CACHE",
        "NIGHTSHIFT_TEST_PG_URL",
        "NIGHTSHIFT_TEST_SCHEMATHESIS_CASES",
        "NIGHTSHIFT_BENCH_PG_URL",
        "NIGHTSHIFT_SOAK_S",
        "NIGHTSHIFT_KEEP_AIRFLOW_LOG",
        "NIGHTSHIFT_UPDATE_DOCS_SCREENSHOT",
        "NIGHTSHIFT_IMAGE_TAG",
        "NIGHTSHIFT_IMAGE_REPO",
        "NIGHTSHIFT_PROJECT_FILE",
        "NIGHTSHIFT_ENTRYPOINT_DRY_RUN",
        "NIGHTSHIFT_ALLOW_PLACEHOLDER_SECRETS",
        "NIGHTSHIFT_DB_NAME",
        "NIGHTSHIFT_DB_USER",
        "NIGHTSHIFT_DB_PASSWORD",
        "NIGHTSHIFT_API_DB_USER",
        "NIGHTSHIFT_API_DB_PASSWORD",
        "NIGHTSHIFT_API_DB_ROLE",
        "NIGHTSHIFT_API_STATEMENT_TIMEOUT",
        "NIGHTSHIFT_API_GRANTS_SQL",
    }
)
PROJECT_VARIABLE_PREFIXES = ("NIGHTSHIFT_AIRFLOW_",)
_ENV_PREFIX = "NIGHTSHIFT_"


def _sections() -> dict[str, type[BaseModel]]:
    """The settings that are tables of their own ([dask], [api], [notify]): NIGHTSHIFT_<SECTION>__<KEY>."""
    out: dict[str, type[BaseModel]] = {}
    for name, info in Settings.model_fields.items():
        kind = info.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            out[name] = kind
    return out


def _variable_problem(key: str) -> str | None:
    """Why NIGHTSHIFT_<key> (lower case) is not a setting although it looks like one; None when it is a
    setting, or does not look like one."""
    import difflib

    top = [n for n in Settings.model_fields if n != "project_dir"]
    sections = _sections()
    if key in top:
        return None
    if "__" in key:
        section, _, rest = key.partition("__")
        if section in sections:
            fields = list(sections[section].model_fields)
            if rest in fields:
                return None
            guess = difflib.get_close_matches(rest, fields, n=1, cutoff=0.6)
            if guess:
                return (
                    f"[{section}] has no key {rest!r}: did you mean {_ENV_PREFIX}{section.upper()}__{guess[0].upper()}?"
                )
            return f"[{section}] has no key {rest!r} (its keys: {', '.join(fields)})"
        guess = difflib.get_close_matches(section, list(sections), n=1, cutoff=0.6)
        return f"no settings table {section!r}" + (
            f": did you mean {_ENV_PREFIX}{guess[0].upper()}__{rest.upper()}?"
            if guess
            else f" (tables: {', '.join(sections)})"
        )
    for section, model in sections.items():
        if key.startswith(section + "_"):
            rest = key[len(section) + 1 :]
            fields = list(model.model_fields)
            guess = [rest] if rest in fields else difflib.get_close_matches(rest, fields, n=1, cutoff=0.8)
            if guess:
                return (
                    f"not a setting: did you mean {_ENV_PREFIX}{section.upper()}__{guess[0].upper()} "
                    f"({section}.{guess[0]})? A key of a settings table takes two underscores after the table's name"
                )
    guess = difflib.get_close_matches(key, top, n=1, cutoff=0.85)
    if guess:
        return f"not a setting: did you mean {_ENV_PREFIX}{guess[0].upper()}?"
    return None


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Refuse NIGHTSHIFT_* variables that look like settings but are none: pydantic-settings would ignore a
    misspelled one silently (NIGHTSHIFT_DASK_SCHEDULER_ADDRESS would start a local cluster instead)."""
    env = os.environ if environ is None else environ
    problems = []
    for name in sorted(env):
        upper = name.upper()
        if (
            not upper.startswith(_ENV_PREFIX)
            or upper in PROJECT_VARIABLES
            or upper.startswith(PROJECT_VARIABLE_PREFIXES)
        ):
            continue
        problem = _variable_problem(upper[len(_ENV_PREFIX) :].lower())
        if problem is not None:
            problems.append(f"{name}: {problem}")
    if len(problems) == 1:
        raise ConfigError(f"environment variable {problems[0]}")
    if problems:
        raise ConfigError("environment variables that are no settings:\n  " + "\n  ".join(problems))


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Read the project file and environment; raise ConfigError naming each bad key or misspelled variable."""
    import tomllib

    check_environment()
    config_path = find_config(path)
    try:
        raw = tomllib.loads(config_path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{config_path}: not valid TOML: {exc}") from exc
    token = _toml_path.set(config_path)
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, str(config_path), raw)) from exc
    finally:
        _toml_path.reset(token)
    settings.project_dir = str(config_path.parent)
    return settings
