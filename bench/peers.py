"""Peers: the programs a user would write instead of nightshift, each small and plain.

Every peer reads the same Parquet files, scores them with the same trained scikit-learn
pipeline nightshift exported to ONNX, and writes (run_id, entity_id, score, label) rows.
"""

from __future__ import annotations

import io
import pickle
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import libpq, local_cluster
from bench.limits import MISSING, feature_columns


def model_frame(df: Any) -> Any:
    """The pipeline's input from a pandas frame: the feature columns, null categories as nightshift feeds them."""
    _, numeric, categorical = feature_columns()
    x = df[numeric + categorical].copy()
    for name in categorical:
        x[name] = x[name].astype(object).fillna(MISSING)
    return x


def predictions_frame(ids: Any, proba: Any) -> Any:
    import numpy as np
    import pandas as pd

    scores = np.asarray(proba[:, 1], dtype=np.float32)
    return pd.DataFrame(
        {
            "run_id": np.ones(len(scores), np.int64),
            "entity_id": np.asarray(ids).astype(str),
            "score": scores,
            "label": (scores >= 0.5).astype(np.int16),
        }
    )


def naive(paths: Sequence[str], pipeline: Any, url: str, table: str) -> int:
    """The naive peer, one process: per file `pandas.read_parquet` -> `predict_proba` -> `DataFrame.to_sql`
    (SQLAlchemy, pandas' default insert method) appending into a plain table. `url`: PostgreSQL or SQLite."""
    import pandas as pd
    import sqlalchemy as sa

    from nightshift.db.engine import normalize_url

    entity, _, _ = feature_columns()
    engine = sa.create_engine(normalize_url(url))
    rows = 0
    try:
        for path in paths:
            df = pd.read_parquet(path)
            out = predictions_frame(df[entity], pipeline.predict_proba(model_frame(df)))
            out.to_sql(table, engine, if_exists="append", index=False)
            rows += len(out)
    finally:
        engine.dispose()
    return rows


def copy_csv(url: str, table: str, frame: Any) -> int:
    """Bulk-load a pandas frame with COPY ... (FORMAT csv), as pandas' documentation suggests for PostgreSQL."""
    import psycopg

    buf = io.StringIO()
    frame.to_csv(buf, index=False, header=False)
    copy = f"COPY {table} ({', '.join(frame.columns)}) FROM STDIN WITH (FORMAT csv)"
    with psycopg.connect(libpq(url)) as conn, conn.cursor() as cur, cur.copy(copy) as cp:
        cp.write(buf.getvalue())
    return len(frame)


def _score_and_copy(df: Any, pipeline: Any, url: str, table: str) -> Any:
    import pandas as pd

    entity, _, _ = feature_columns()
    out = predictions_frame(df[entity], pipeline.predict_proba(model_frame(df)))
    return pd.Series([copy_csv(url, table, out)], dtype="int64")


def load_pipeline(pipeline: Any) -> Any:
    """A fitted pipeline, or the path of its pickle (what the peers' own processes are handed)."""
    if isinstance(pipeline, str | Path):
        with Path(pipeline).open("rb") as f:
            return pickle.load(f)  # the benchmark's own cache file
    return pipeline


def dask_map_partitions(paths: Sequence[str], pipeline: Any, url: str, table: str, workers: int = 2) -> int:
    """The Dask peer: a local cluster like nightshift's, `dask.dataframe.read_parquet` -> `map_partitions`
    (scikit-learn `predict_proba`, then COPY of each partition from its worker). Cluster start included."""
    import dask.dataframe as dd

    pipeline = load_pipeline(pipeline)
    entity, numeric, categorical = feature_columns()
    with local_cluster(workers), warnings.catch_warnings():
        # The forest's pipeline travels in the task graph, as a user's would; Dask warns that it is large.
        warnings.filterwarnings("ignore", message="Sending large graph")
        ddf = dd.read_parquet(
            list(paths), columns=[entity, *numeric, *categorical], split_row_groups=False, blocksize=None
        )
        counts = ddf.map_partitions(_score_and_copy, pipeline, url, table, meta=("rows", "int64")).compute()
    return int(counts.sum())


def _with_ids(df: Any) -> Any:
    entity, _, _ = feature_columns()
    x = model_frame(df)
    x.insert(0, entity, df[entity])
    return x


def _copy_scores(ids: Any, proba: Any, url: str, table: str) -> int:
    return copy_csv(url, table, predictions_frame(ids, proba))


def dask_ml_parallel_post_fit(paths: Sequence[str], pipeline: Any, url: str, table: str, workers: int = 2) -> int:
    """The dask-ml peer: `ParallelPostFit(pipeline).predict_proba` over a Dask DataFrame on a local cluster
    like nightshift's, each block of probabilities joined to its ids and COPYed. Cluster start included."""
    import dask
    import dask.dataframe as dd
    import numpy as np
    from dask_ml.wrappers import ParallelPostFit

    pipeline = load_pipeline(pipeline)
    entity, numeric, categorical = feature_columns()
    with local_cluster(workers), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sending large graph")
        ddf = dd.read_parquet(
            list(paths), columns=[entity, *numeric, *categorical], split_row_groups=False, blocksize=None
        )
        # Prepared once per partition, then split: ids and probabilities stay aligned block by block.
        frame = ddf.map_partitions(_with_ids)
        clf = ParallelPostFit(estimator=pipeline, predict_proba_meta=np.empty((0, 2)))
        blocks = clf.predict_proba(frame[numeric + categorical]).to_delayed().ravel()
        ids = frame[entity].to_delayed()
        if len(ids) != len(blocks):
            raise RuntimeError(f"{len(ids)} id partitions but {len(blocks)} probability blocks")
        writes = [dask.delayed(_copy_scores)(i, p, url, table) for i, p in zip(ids, blocks, strict=True)]
        return int(sum(dask.compute(*writes)))


def dask_ml_available() -> str | None:
    """None when dask-ml imports, else why not."""
    try:
        import dask_ml.wrappers  # noqa: F401
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None
