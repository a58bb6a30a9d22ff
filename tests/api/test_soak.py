"""A bounded soak of the real `nightshift api` process on loopback: zero errors, stable memory."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.api.conftest import ROWS, Seeded, make_key

#: Seconds of load: short in the default suite; `make soak` (NIGHTSHIFT_SOAK_S=300) gives the few-minute soak.
SOAK_S = float(os.environ.get("NIGHTSHIFT_SOAK_S", "20"))
CLIENTS = 8

pytestmark = [pytest.mark.slow, pytest.mark.timeout(int(SOAK_S) + 180)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_project(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "soak.toml"
    path.write_text(
        f'store_url = "{url}"\nstate_dir = "{tmp_path / "state"}"\n\n[api]\n'
        "rate_limit_per_minute = 100000000\nrate_limit_burst = 1000000\n"
    )
    return path


async def _load(base: str, key: str, seconds: float) -> tuple[int, list[str]]:
    done = 0
    errors: list[str] = []
    deadline = time.monotonic() + seconds
    headers = {"X-API-Key": key}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=10) as client:

        async def worker(n: int) -> None:
            nonlocal done
            i = n
            while time.monotonic() < deadline:
                i = (i + 7919) % ROWS + 1
                if i % 10 == 0:
                    r = await client.post(
                        "/v1/models/churn/predictions/batch", json={"ids": [str((i + k) % ROWS + 1) for k in range(50)]}
                    )
                else:
                    r = await client.get(f"/v1/models/churn/predictions/{i}")
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {r.text[:100]}")
                done += 1

        await asyncio.gather(*(worker(n) for n in range(CLIENTS)))
    return done, errors


def test_soak_has_zero_errors_and_stable_memory(seeded: Seeded, tmp_path: Path) -> None:
    if seeded.store.dialect != "postgresql":
        pytest.skip("the soak runs once, against PostgreSQL (the production store); SQLite is covered by the others")
    port = _free_port()
    project = _write_project(tmp_path, seeded.url)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nightshift.cli",
            "api",
            "--config",
            str(project),
            "--port",
            str(port),
            "--no-access-log",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            pytest.fail(f"the API did not start: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        server = psutil.Process(proc.pid)
        key = make_key(seeded.store, "churn")
        # Warm up (imports, pools, caches), then measure memory across the soak.
        _warm, warm_errors = asyncio.run(_load(base, key, min(5.0, SOAK_S / 5)))
        assert not warm_errors, warm_errors[:5]
        rss_start = server.memory_info().rss
        done, errors = asyncio.run(_load(base, key, SOAK_S))
        rss_end = server.memory_info().rss
        assert not errors, f"{len(errors)} error(s) in {done} requests: {errors[:5]}"
        assert done > SOAK_S * 50, f"only {done} requests in {SOAK_S}s"
        growth = (rss_end - rss_start) / 2**20
        print(
            f"soak: {done} requests in {SOAK_S:.0f}s ({done / SOAK_S:.0f}/s), RSS {rss_start / 2**20:.0f} → "
            f"{rss_end / 2**20:.0f} MiB"
        )
        assert growth < 25, f"server RSS grew by {growth:.1f} MiB during the soak"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
