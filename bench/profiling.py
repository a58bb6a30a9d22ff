"""Where nightshift's time goes: py-spy sampling of the Dask workers (or the driver) during one scoring call."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

#: Stages of a scoring task, by the function that does them; a sample counts for the first stage
#: found walking its stack from the innermost frame outwards.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ONNX Runtime (session.run)", ("run (onnxruntime/",)),
    ("Arrow → model inputs (features.model_inputs)", ("model_inputs (nightshift/data/features.py",)),
    ("entity ids (features.entity_ids)", ("entity_ids (nightshift/data/features.py",)),
    ("Parquet read (data.iter_batches)", ("iter_batches (nightshift/data/partitions.py",)),
    ("binary COPY body (staging._binary_copy_body)", ("_binary_copy_body (nightshift/db/staging.py",)),
    (
        "COPY to PostgreSQL (staging.ChunkWriter)",
        ("ChunkWriter.", "chunk_writer (nightshift/db/staging.py", "_stage_postgres (nightshift/db/staging.py"),
    ),
    ("SQLite image on the worker (staging.sqlite_image)", ("sqlite_image (nightshift/db/staging.py",)),
    ("SQLite inserts (staging._stage_sqlite)", ("_stage_sqlite (nightshift/db/staging.py",)),
    ("sort ids for SQLite (chunk._sort_by_id)", ("_sort_by_id (nightshift/scoring/chunk.py",)),
    ("rest of score_chunk", ("(nightshift/scoring/chunk.py",)),
    ("commit (store.commit_run)", ("commit_run (nightshift/db/store.py",)),
    ("Dask worker machinery", ("distributed/",)),
)


def py_spy() -> str | None:
    """The py-spy executable, or None."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return exe if Path(exe).exists() else None


@contextlib.contextmanager
def sampling(pids: Sequence[int], out_dir: Path, tag: str, rate: int = 200) -> Iterator[list[Path]]:
    """py-spy records each pid (raw collapsed stacks, idle frames excluded) for the duration of the block."""
    exe = py_spy()
    if exe is None:
        raise RuntimeError("py-spy is not installed (uv pip install py-spy)")
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [out_dir / f"{tag}-{pid}.txt" for pid in pids]
    options = ["--rate", str(rate), "--format", "raw", "--function", "--nonblocking"]
    procs = [
        subprocess.Popen(
            [exe, "record", "--pid", str(pid), *options, "--output", str(f)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid, f in zip(pids, files, strict=True)
    ]
    try:
        yield files
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def read_raw(files: Sequence[Path]) -> Counter[tuple[str, ...]]:
    """Collapsed stacks (outermost frame first) and their sample counts, over every file."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for f in files:
        if not f.exists():
            continue
        for line in f.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                stacks[tuple(stack.split(";"))] += int(count)
    return stacks


#: Innermost frames of a thread that waits (py-spy --nonblocking counts some of them as active).
IDLE = ("select (selectors.py", "wait (threading.py", "_worker (concurrent/futures/thread.py")


def stage_breakdown(stacks: Counter[tuple[str, ...]]) -> dict[str, Any]:
    """Share of busy samples per stage (see STAGES), plus the top functions by self time.

    `busy` is the share of all samples that were not a thread waiting (event loop select, locks).
    """
    everything = sum(stacks.values())
    stacks = Counter({s: n for s, n in stacks.items() if not any(k in s[-1] for k in IDLE)})
    total = sum(stacks.values())
    by_stage: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    for stack, n in stacks.items():
        self_time[stack[-1]] += n
        for frame in reversed(stack):
            stage = next((name for name, keys in STAGES if any(k in frame for k in keys)), None)
            if stage is not None:
                by_stage[stage] += n
                break
        else:
            by_stage["other"] += n
    return {
        "samples": total,
        "busy": round(total / everything, 4) if everything else 0.0,
        "stages": {k: round(v / total, 4) for k, v in by_stage.most_common()} if total else {},
        "top_self": [(k, round(v / total, 4)) for k, v in self_time.most_common(15)] if total else [],
    }
