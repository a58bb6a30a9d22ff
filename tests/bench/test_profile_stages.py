"""The profile's stages name functions that exist where they say: a renamed or moved function would otherwise
send its samples to "other" without a word (it did, after the package was split into subpackages)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from bench.profiling import STAGES, stage_breakdown

JOBS = Path(__file__).resolve().parents[2] / "jobs"


def test_every_stage_key_of_nightshift_names_a_function_in_its_module() -> None:
    checked = 0
    for _stage, keys in STAGES:
        for key in keys:
            if re.fullmatch(r"[A-Z]\w*\.", key):  # a class's methods ("ChunkWriter."): the class exists in nightshift
                assert any(re.search(rf"^class {key[:-1]}\b", f.read_text(), re.M) for f in JOBS.rglob("*.py")), key
                checked += 1
                continue
            found = re.fullmatch(r"(?:(\w+) )?\((nightshift/[\w/]+\.py)", key)
            if found is None:
                continue  # a library's frames (onnxruntime, distributed)
            function, module = found.groups()
            source = (JOBS / module).read_text()
            assert function is None or re.search(rf"^\s*def {function}\(", source, re.M), f"{key}: no such function"
            checked += 1
    assert checked >= 8


def test_a_sample_counts_for_the_innermost_stage_it_is_in() -> None:
    stacks = Counter(
        {
            ("score_chunk (nightshift/scoring/chunk.py:200)", "sqlite_image (nightshift/db/staging.py:120)"): 3,
            ("score_chunk (nightshift/scoring/chunk.py:200)", "run (onnxruntime/capi/x.py:1)"): 1,
            ("_stage_sqlite (nightshift/db/staging.py:300)",): 4,
        }
    )
    stages = stage_breakdown(stacks)["stages"]
    assert stages == {
        "SQLite inserts (staging._stage_sqlite)": 0.5,
        "SQLite image on the worker (staging.sqlite_image)": 0.375,
        "ONNX Runtime (session.run)": 0.125,
    }
