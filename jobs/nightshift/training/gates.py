"""Evaluation gates for a retrained candidate: acceptable range, end-to-end set, not worse than the champion."""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nightshift.config import GateSettings
from nightshift.contracts import FeatureContract
from nightshift.data.features import MISSING_CATEGORY, model_inputs
from nightshift.metrics import LOWER_IS_BETTER

__all__ = ["E2E_FILE", "EXPECTED_COLUMN", "LOWER_IS_BETTER", "GateReport", "GateResult"]
E2E_FILE = "e2e.parquet"
EXPECTED_COLUMN = "__expected_score"


@dataclass
class GateResult:
    name: str
    passed: bool
    value: float | None
    threshold: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GateReport:
    gates: list[GateResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.gates) and all(g.passed for g in self.gates)

    @property
    def failures(self) -> list[GateResult]:
        return [g for g in self.gates if not g.passed]

    def as_list(self) -> list[dict[str, Any]]:
        return [g.as_dict() for g in self.gates]

    def summary(self) -> str:
        if self.passed:
            return "all gates passed: " + ", ".join(g.name for g in self.gates)
        return "; ".join(f"{g.name} failed: {g.detail}" for g in self.failures)


def range_gate(metric: str, value: float, gates: GateSettings) -> GateResult:
    """(a) The candidate's metric on the confidence test set lies in the acceptable range."""
    lo, hi = gates.min, gates.max
    ok = not np.isnan(value) and (lo is None or value >= lo) and (hi is None or value <= hi)
    bounds = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
    return GateResult(
        "acceptable_range",
        bool(ok),
        float(value),
        f"{metric} in {bounds}",
        f"{metric} = {value:.4f} on the confidence test set, acceptable {bounds}",
    )


def champion_gate(metric: str, candidate: float, champion: float | None, tolerance: float) -> GateResult:
    """(c) The candidate is not worse than the champion on the same data, beyond a tolerance."""
    if champion is None:
        return GateResult("not_worse_than_champion", True, candidate, "no champion", "no champion to compare with")
    if metric in LOWER_IS_BETTER:
        ok = candidate <= champion + tolerance
        rule = f"{metric} <= champion {champion:.4f} + {tolerance}"
    else:
        ok = candidate >= champion - tolerance
        rule = f"{metric} >= champion {champion:.4f} - {tolerance}"
    return GateResult(
        "not_worse_than_champion",
        bool(ok),
        float(candidate),
        rule,
        f"candidate {metric} {candidate:.4f} vs champion {champion:.4f} on the same rows (tolerance {tolerance})",
    )


def make_e2e_set(table: pa.Table, contract: FeatureContract, rows: int, seed: int) -> pa.Table:
    """Fixed end-to-end inputs: a seeded sample of real rows plus hard rows (all missing, unseen categories).

    Entity ids are replaced by e2e-000000… so the set is self-contained and versioned with the model.
    """
    n_real = max(1, min(table.num_rows, rows - 8))
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(table.num_rows, size=n_real, replace=False))
    sample = table.select(contract.feature_names).take(pa.array(idx))
    hard: dict[str, pa.Array] = {}
    n_hard = 8
    for col in contract.columns:
        if col.type.is_categorical:
            values = [None, "__never_seen__", MISSING_CATEGORY, None] * 2
            hard[col.name] = pa.array(values, type=sample.schema.field(col.name).type)
        else:
            values = [None] * n_hard
            hard[col.name] = pa.array(values, type=sample.schema.field(col.name).type)
    hard_table = pa.table(hard, schema=sample.schema)
    if any(not c.nullable for c in contract.columns):
        # Nulls are not allowed in some columns: keep only the real rows.
        hard_table = hard_table.slice(0, 0)
    out = pa.concat_tables([sample, hard_table])
    ids = pa.array([f"e2e-{i:06d}" for i in range(out.num_rows)])
    id_type = pa.int64() if contract.entity_id_type == "int64" else pa.string()
    if contract.entity_id_type == "int64":
        ids = pa.array(np.arange(out.num_rows, dtype=np.int64))
    return out.add_column(0, pa.field(contract.entity_id, id_type), ids)


def e2e_bytes(table: pa.Table, expected: np.ndarray) -> bytes:
    """The e2e set with its expected scores, as Parquet bytes (stored beside the model)."""
    out = table.append_column(EXPECTED_COLUMN, pa.array(np.asarray(expected, dtype=np.float64)))
    buf = io.BytesIO()
    pq.write_table(out, buf)
    return buf.getvalue()


def e2e_gate(
    artifact_uri: str,
    sha256: str,
    e2e_uri: str,
    contract: FeatureContract,
    tolerance: float,
    task: str = "binary",
    signature: dict[str, Any] | None = None,
) -> GateResult:
    """(b) The registered artifact, loaded and hash-checked by the production scoring code, reproduces the
    expected scores of the model's end-to-end set."""
    from nightshift.data import TaskSlice, open_parquet
    from nightshift.db.staging import Rows
    from nightshift.scoring import ChunkTask, ModelHandle, score_chunk

    try:
        pf = open_parquet(e2e_uri)
        table = pf.read()
        expected = table.column(EXPECTED_COLUMN).to_numpy()
        from nightshift.scoring import OutputReader

        chunk = ChunkTask.single(
            TaskSlice(e2e_uri, tuple(range(pf.metadata.num_row_groups)), table.num_rows),
            contract,
            ModelHandle(artifact_uri, sha256, 1, 0.5),
            batch_rows=max(1024, table.num_rows),
            run_id=0,
            store_url=None,
            outputs=OutputReader.of(task, signature, 0.5),
        )
        part = score_chunk(chunk).of(0)
        if part.error is not None:
            raise part.error
        if part.data is None:
            raise RuntimeError("the end-to-end run returned no rows")
        if not isinstance(part.data, Rows):  # the task sets no driver_token: never an image
            raise RuntimeError(f"the end-to-end run returned {type(part.data).__name__}, not its rows")
        # score_chunk returns rows sorted by entity id for the driver; align with the file's order.
        file_ids = table.column(contract.entity_id).cast(pa.string()).to_pylist()
        got = dict(zip(part.data.ids.to_pylist(), part.data.scores.tolist(), strict=True))
        lost = [i for i in file_ids if i not in got]
        if lost:
            raise RuntimeError(f"no score for entity id(s) {', '.join(map(repr, lost[:5]))}")
        scores = np.array([got[i] for i in file_ids], dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - any failure of the end-to-end run fails the gate, with its cause
        detail = f"{e2e_uri}: {type(exc).__name__}: {exc}"
        return GateResult("end_to_end", False, None, f"|Δ| <= {tolerance}", detail)
    # A regression's score is its value as float32: compare relative to the value's size.
    scale = np.maximum(1.0, np.abs(expected)) if task == "regression" else 1.0
    diff = float(np.max(np.abs(scores - expected) / scale)) if len(scores) else 0.0
    ok = len(scores) == len(expected) and diff <= tolerance
    return GateResult(
        "end_to_end",
        bool(ok),
        diff,
        f"|Δ| <= {tolerance}",
        f"{len(scores)} fixed rows scored by the production path, max |score - expected| = {diff:.2e}",
    )


def score_with(onnx_bytes: bytes, table: pa.Table, contract: FeatureContract) -> np.ndarray:
    """P(1) of a model on a table, in batches (used for the champion comparison)."""
    return predict_with(onnx_bytes, table, contract)


def predict_with(
    onnx_bytes: bytes,
    table: pa.Table,
    contract: FeatureContract,
    task: str = "binary",
    signature: dict[str, Any] | None = None,
) -> np.ndarray:
    """What a version predicts on a table, in 64k-row batches, fed as scoring feeds it (its signature's
    inputs, or nightshift's own layout): P(1) [N], probabilities [N, K] or values [N], float64."""
    from nightshift.data.features import onnx_feeds
    from nightshift.scoring import OutputReader, make_session

    session = make_session(onnx_bytes, 1)
    reader = OutputReader.of(task, signature, 0.5)
    inputs = (signature or {}).get("inputs")
    names = [i.name for i in session.get_inputs()]
    out = []
    for batch in table.to_batches(max_chunksize=65_536):
        feeds = model_inputs(batch, contract) if inputs is None else onnx_feeds(batch, contract, inputs, "test rows")
        raw = np.asarray(session.run([reader.output], {n: feeds[n] for n in names})[0], dtype=np.float64)
        out.append(raw.reshape(len(raw)) if task == "regression" else (raw[:, 1] if task == "binary" else raw))
    if not out:
        return np.zeros((0, len(reader.classes))) if task == "multiclass" else np.zeros(0)
    return np.concatenate(out)


def expected_scores(pipeline: Any, frame: Any, task: str) -> np.ndarray:
    """The score column scoring will store for each row, from the fitted pipeline (float64): P(1), the
    predicted class's probability, or the value."""
    if task == "regression":
        return np.asarray(pipeline.predict(frame), dtype=np.float64)
    proba = np.asarray(pipeline.predict_proba(frame), dtype=np.float64)
    return proba[:, 1] if task == "binary" else proba.max(axis=1)


def labelled_metrics(
    prediction: np.ndarray,
    raw_labels: Any,
    task: str,
    classes: list[str] | tuple[str, ...],
    threshold: float,
) -> dict[str, float]:
    """A version's metrics on labelled rows, its classes mapping the labels (multiclass)."""
    from nightshift.metrics import task_metrics

    if task == "multiclass":
        index = {str(c): i for i, c in enumerate(classes)}
        names = [str(int(v)) if isinstance(v, float) and v.is_integer() else str(v) for v in list(raw_labels)]
        known = np.array([n in index for n in names])
        y = np.array([index.get(n, -1) for n in names])
        return task_metrics("multiclass", y[known], prediction[known])
    if task == "regression":
        return task_metrics("regression", np.asarray(raw_labels, dtype=np.float64), prediction)
    return task_metrics("binary", np.asarray(raw_labels, dtype=np.int64), prediction, threshold)
