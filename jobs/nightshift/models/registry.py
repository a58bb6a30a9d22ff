"""Model registry: versions with their full metadata, verified artifacts, aliases and their history."""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import fsspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from nightshift.db import schema
from nightshift.db.engine import as_utc, utcnow
from nightshift.db.store import Store
from nightshift.errors import ArtifactIntegrityError, ModelNotFound, NightshiftError
from nightshift.jsonsafe import json_safe

if TYPE_CHECKING:  # pragma: no cover
    from nightshift.contracts import FeatureContract
    from nightshift.training import TrainedModel

CHAMPION = "champion"
#: The model's file name inside its content-addressed folder; per-version cards go under CARDS_FOLDER.
ARTIFACT_FILE = "model.onnx"
CARDS_FOLDER = "cards"
#: Files an exact explainer needs (a booster for TreeSHAP), content-addressed: `explainer/<sha256>-<name>`.
EXPLAINER_FOLDER = "explainer"
#: Names an extra file may not take: the model, the cards, the monitoring reference (monitoring/reference.py),
#: the explainer's files.
_RESERVED_NAMES = (ARTIFACT_FILE, CARDS_FOLDER, "monitoring", EXPLAINER_FOLDER)
#: Version numbers tried before a registration gives up (each racing registration takes one).
_VERSION_ATTEMPTS = 20
_ALIAS_PATTERN = "abcdefghijklmnopqrstuvwxyz0123456789_-"


@dataclass(frozen=True)
class ModelVersion:
    """One registered version of a model, as recorded in the registry."""

    model: str
    version: int
    created_at: datetime
    created_by: str
    algorithm: str
    hyperparameters: dict[str, Any]
    libraries: dict[str, str]
    features: list[dict[str, Any]]
    input_schema: list[dict[str, Any]]
    output_schema: list[dict[str, Any]]
    training_data: dict[str, Any]
    metrics: dict[str, float]
    parity: dict[str, Any]
    feature_importance: dict[str, float]
    decision_threshold: float
    artifact_uri: str
    sha256: str
    size_bytes: int
    description: str
    #: binary, multiclass or regression.
    task: str = "binary"
    #: How the ONNX graph is fed and read (nightshift.models.signature); None: nightshift's own layout.
    signature: dict[str, Any] | None = None
    #: Where a model brought by its user came from (flavour, library, original URI and SHA-256); None: trained here.
    source: dict[str, Any] | None = None
    #: How its scores are explained exactly (nightshift.models.explainers); None: no exact explainer.
    explainer: dict[str, Any] | None = None

    def card(self) -> dict[str, Any]:
        """Everything known about this version, JSON-safe."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["created_at"] = self.created_at.isoformat()
        return out


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def current_user() -> str:
    for var in ("NIGHTSHIFT_USER", "AIRFLOW_CTX_DAG_OWNER"):
        if os.environ.get(var):
            return os.environ[var]
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        return "unknown"


def read_artifact(uri: str, expected_sha256: str) -> bytes:
    """The artifact's bytes, refused unless their SHA-256 matches the registry."""
    try:
        with fsspec.open(uri, "rb") as f:
            data: bytes = f.read()
    except FileNotFoundError:
        raise ArtifactIntegrityError(f"model artifact {uri} is missing") from None
    actual = sha256_bytes(data)
    if actual != expected_sha256:
        raise ArtifactIntegrityError(
            f"model artifact {uri} has SHA-256 {actual[:16]}…, the registry recorded {expected_sha256[:16]}…: "
            "the file was changed after registration; refusing to load it"
        )
    return data


def bundle_digest(onnx_sha256: str, extra_files: dict[str, bytes] | None = None) -> str:
    """The SHA-256 a version's folder is named by (see `Registry.artifact_folder`)."""
    if not extra_files:
        return onnx_sha256
    lines = [f"{ARTIFACT_FILE} {onnx_sha256}"]
    lines += [f"{name} {sha256_bytes(data)}" for name, data in sorted(extra_files.items())]
    return sha256_bytes("\n".join(lines).encode())


def write_once(uri: str, data: bytes) -> None:
    """Write `data` at a content-addressed `uri` unless it is there already: never replace a file.

    The bytes go to a temporary name first and are moved into place only if nothing is there
    (a hard link on local disks, which fails if the name exists), so a reader never sees half a
    file and two writers never clobber each other. A file already there with the same bytes is
    reused; one with other bytes was changed after it was written, and is refused loudly.
    """
    from fsspec.implementations.local import LocalFileSystem

    fs, path = fsspec.core.url_to_fs(uri)
    parent, name = path.rsplit("/", 1)
    fs.makedirs(parent, exist_ok=True)
    if fs.exists(path):
        _check_existing(fs, path, uri, data)
        return
    tmp = f"{parent}/.{name}.tmp-{os.getpid()}-{uuid.uuid4().hex}"
    with fs.open(tmp, "wb") as f:
        f.write(data)
    try:
        if isinstance(fs, LocalFileSystem):
            try:
                os.link(tmp, path)
            except FileExistsError:
                _check_existing(fs, path, uri, data)
            except OSError:  # a file system without hard links: the name is the content, a rename is safe
                os.replace(tmp, path)
        else:  # object storage has no "create if absent"; a concurrent writer of this name wrote these bytes
            fs.mv(tmp, path)
    finally:
        if fs.exists(tmp):
            fs.rm(tmp)


def _check_existing(fs: Any, path: str, uri: str, data: bytes) -> None:
    existing = sha256_bytes(fs.cat_file(path))
    if existing != sha256_bytes(data):
        raise ArtifactIntegrityError(
            f"{uri} already exists with other bytes (SHA-256 {existing[:16]}…, expected {sha256_bytes(data)[:16]}…): "
            "it was changed after it was written; refusing to replace it"
        )


def _row_to_version(row: Any) -> ModelVersion:
    return ModelVersion(
        model=row["model"],
        version=int(row["version"]),
        created_at=as_utc(row["created_at"]),
        created_by=row["created_by"],
        algorithm=row["algorithm"],
        hyperparameters=row["hyperparameters"],
        libraries=row["libraries"],
        features=row["features"],
        input_schema=row["input_schema"],
        output_schema=row["output_schema"],
        training_data=row["training_data"],
        metrics=row["metrics"],
        parity=row["parity"],
        feature_importance=row["feature_importance"],
        decision_threshold=float(row["decision_threshold"]),
        artifact_uri=row["artifact_uri"],
        sha256=row["sha256"],
        size_bytes=int(row["size_bytes"]),
        description=row["description"] or "",
        task=str(row.get("task") or "binary"),
        signature=row.get("signature"),
        source=row.get("source"),
        explainer=row.get("explainer"),
    )


class Registry:
    """Model versions and aliases in the store's database; artifacts under an fsspec location."""

    def __init__(self, store: Store, artifacts_uri: str) -> None:
        self.store = store
        self.artifacts_uri = artifacts_uri.rstrip("/")

    # -- writing --------------------------------------------------------------------------

    def register_trained(
        self,
        model: str,
        trained: TrainedModel,
        contract: FeatureContract,
        *,
        training_data: dict[str, Any],
        decision_threshold: float,
        description: str = "",
        created_by: str | None = None,
        extra_files: dict[str, bytes] | None = None,
    ) -> ModelVersion:
        """`register` a model fresh from `training.train`, with the metadata it carries.

        How its feature importance was measured goes into `training_data` (`feature_importance_method`,
        None when it could not be measured and `feature_importance` is {}): it was measured on these rows.
        """
        training_data = {"feature_importance_method": trained.feature_importance_method, **training_data}
        return self.register(
            model,
            trained.onnx_bytes,
            algorithm=trained.algorithm,
            hyperparameters=trained.hyperparameters,
            libraries=trained.libraries,
            features=[c.model_dump(mode="json") for c in contract.columns],
            input_schema=trained.input_schema,
            output_schema=trained.output_schema,
            training_data=training_data,
            metrics=trained.metrics,
            parity=trained.parity.as_dict(),
            feature_importance=trained.feature_importance,
            decision_threshold=decision_threshold,
            description=description,
            created_by=created_by,
            extra_files=extra_files,
            task=getattr(trained, "task", "binary"),
            signature=trained.signature() if hasattr(trained, "signature") else None,
            explainer=getattr(trained, "explainer", None),
            explainer_files=getattr(trained, "explainer_files", None),
        )

    def register(
        self,
        model: str,
        onnx_bytes: bytes,
        *,
        algorithm: str,
        hyperparameters: dict[str, Any],
        libraries: dict[str, str],
        features: list[dict[str, Any]],
        input_schema: list[dict[str, Any]],
        output_schema: list[dict[str, Any]],
        training_data: dict[str, Any],
        metrics: dict[str, float],
        parity: dict[str, Any],
        feature_importance: dict[str, float],
        decision_threshold: float,
        description: str = "",
        created_by: str | None = None,
        extra_files: dict[str, bytes] | None = None,
        task: str = "binary",
        signature: dict[str, Any] | None = None,
        source: dict[str, Any] | None = None,
        explainer: dict[str, Any] | None = None,
        explainer_files: dict[str, bytes] | None = None,
    ) -> ModelVersion:
        """Store the artifact, then record the version.

        `task`, `signature` (how the graph is fed and read) and `source` (where a model brought by its
        user came from) default to what nightshift's own training produces. `explainer` (how its scores
        are explained exactly, nightshift.models.explainers) names the `explainer_files` it needs in its
        "files"; each is written once under `explainer/<sha256>-<name>` and recorded with its URI and SHA-256.

        Files are addressed by content (`artifact_folder`) and written once, so the artifact exists
        before its row and no registration, racing or from another store sharing the folder, can
        replace another's files. The row keeps the artifact's exact URI.
        """
        mv = schema.model_versions
        sha = sha256_bytes(onnx_bytes)
        extras = dict(extra_files or {})
        folder = self.artifact_folder(model, sha, extras)
        uri = f"{folder}/{ARTIFACT_FILE}"
        write_once(uri, onnx_bytes)
        for name, data in sorted(extras.items()):
            write_once(f"{folder}/{name}", data)
        if explainer is not None:
            explainer = dict(explainer)
            files: dict[str, Any] = {}
            for name, data in sorted((explainer_files or {}).items()):
                digest = sha256_bytes(data)
                file_uri = f"{folder}/{EXPLAINER_FOLDER}/{digest}-{name}"
                write_once(file_uri, data)
                files[name] = {"uri": file_uri, "sha256": digest}
            if files:
                explainer["files"] = files
        for _attempt in range(_VERSION_ATTEMPTS):
            with self.store.connect() as conn:
                latest = conn.execute(sa.select(sa.func.max(mv.c.version)).where(mv.c.model == model)).scalar()
                conn.rollback()
            version = int(latest or 0) + 1
            row = {
                "model": model,
                "version": version,
                "created_at": utcnow(),
                "created_by": created_by or current_user(),
                "algorithm": algorithm,
                "hyperparameters": json_safe(hyperparameters),
                "libraries": json_safe(libraries),
                "features": json_safe(features),
                "input_schema": json_safe(input_schema),
                "output_schema": json_safe(output_schema),
                "training_data": json_safe(training_data),
                "metrics": json_safe(metrics),
                "parity": json_safe(parity),
                "feature_importance": json_safe(feature_importance),
                "decision_threshold": float(decision_threshold),
                "artifact_uri": uri,
                "sha256": sha,
                "size_bytes": len(onnx_bytes),
                "description": description,
                "task": task,
                "signature": json_safe(signature) if signature is not None else None,
                "source": json_safe(source) if source is not None else None,
                "explainer": json_safe(explainer) if explainer is not None else None,
            }
            try:
                with self.store.begin() as conn:
                    conn.execute(mv.insert().values(**row))
            except IntegrityError:
                continue  # another registration took this version number; take the next
            card = _row_to_version(row)
            text = json.dumps(json_safe(card.card()), indent=2, sort_keys=True, allow_nan=False).encode()
            write_once(f"{folder}/{CARDS_FOLDER}/v{version}-{sha256_bytes(text)}.json", text)
            return card
        raise NightshiftError(
            f"could not allocate a version number for model {model!r} after {_VERSION_ATTEMPTS} attempts"
        )

    def artifact_folder(self, model: str, onnx_sha256: str, extra_files: dict[str, bytes] | None = None) -> str:
        """`<artifacts>/<model>/sha256/<digest>`: the folder a version's files are written to, named by content.

        The digest is the model's own SHA-256 when the model is all the folder holds; with extra
        files (the end-to-end set a retrain versions with its model) it is the SHA-256 of the
        manifest of every file (`name sha256` lines, sorted), so the files beside a model are always
        the ones registered with it. Same content, same folder: nothing there is ever replaced.
        """
        for name in extra_files or {}:
            if not name or "/" in name or name.startswith(".") or name in _RESERVED_NAMES:
                raise ValueError(f"extra file name {name!r} must be a plain file name other than {_RESERVED_NAMES}")
        return f"{self.artifacts_uri}/{model}/sha256/{bundle_digest(onnx_sha256, extra_files)}"

    def set_alias(
        self,
        model: str,
        alias: str,
        version: int,
        *,
        reason: str,
        by: str | None = None,
        effective_ds: date | None = None,
    ) -> int | None:
        """Point `alias` at `version` and record the change. Returns the previous version."""
        if not alias or any(ch not in _ALIAS_PATTERN for ch in alias):
            raise ValueError(f"alias {alias!r} must be lowercase letters, digits, '_' or '-'")
        self.get(model, version)  # raises ModelNotFound
        with self.store.begin() as conn:
            old = self.move_aliases(conn, model, {alias: version}, reason=reason, by=by, effective_ds=effective_ds)
        return old[alias]

    def remove_alias(
        self, model: str, alias: str, *, reason: str, by: str | None = None, effective_ds: date | None = None
    ) -> int | None:
        """Drop `alias` (e.g. the challenger after an aborted rollout) and record it. Returns its version."""
        with self.store.begin() as conn:
            old = self.move_aliases(conn, model, {alias: None}, reason=reason, by=by, effective_ds=effective_ds)
        return old[alias]

    def switch_aliases(
        self,
        model: str,
        changes: dict[str, int | None],
        *,
        reason: str,
        by: str | None = None,
        effective_ds: date | None = None,
    ) -> dict[str, int | None]:
        """Point several aliases at once (None removes one), in ONE transaction: a blue/green switch
        (champion → new, previous → old) is seen by readers entirely or not at all."""
        for version in changes.values():
            if version is not None:
                self.get(model, version)
        with self.store.begin() as conn:
            return self.move_aliases(conn, model, changes, reason=reason, by=by, effective_ds=effective_ds)

    def move_aliases(
        self,
        conn: Connection,
        model: str,
        changes: dict[str, int | None],
        *,
        reason: str,
        by: str | None = None,
        effective_ds: date | None = None,
    ) -> dict[str, int | None]:
        """Apply alias `changes` on `conn`, inside the caller's transaction, each with its alias event.

        `effective_ds` is the first night the move applies to (the night after the one that decided it);
        decisions keyed by ds (the rollback window) count from it. Returns each alias's previous version.
        """
        a, ev = schema.model_aliases, schema.alias_events
        who = by or current_user()
        now = utcnow()
        previous: dict[str, int | None] = {}
        for alias, version in changes.items():
            old = conn.execute(sa.select(a.c.version).where(a.c.model == model, a.c.alias == alias)).scalar()
            previous[alias] = int(old) if old is not None else None
            if old == version:
                continue
            if version is None:
                conn.execute(a.delete().where(a.c.model == model, a.c.alias == alias))
            elif old is None:
                conn.execute(
                    a.insert().values(model=model, alias=alias, version=version, updated_at=now, updated_by=who)
                )
            else:
                conn.execute(
                    a.update()
                    .where(a.c.model == model, a.c.alias == alias)
                    .values(version=version, updated_at=now, updated_by=who)
                )
            conn.execute(
                ev.insert().values(
                    model=model,
                    alias=alias,
                    old_version=old,
                    new_version=version,
                    at=now,
                    by=who,
                    reason=reason,
                    effective_ds=effective_ds,
                )
            )
        return previous

    # -- reading --------------------------------------------------------------------------

    def get(self, model: str, version: int) -> ModelVersion:
        mv = schema.model_versions
        with self.store.connect() as conn:
            row = conn.execute(sa.select(mv).where(mv.c.model == model, mv.c.version == version)).mappings().first()
        if row is None:
            raise ModelNotFound(f"model {model!r} has no version {version}")
        return _row_to_version(row)

    def versions(self, model: str | None = None) -> list[ModelVersion]:
        mv = schema.model_versions
        q = sa.select(mv).order_by(mv.c.model, mv.c.version)
        if model:
            q = q.where(mv.c.model == model)
        with self.store.connect() as conn:
            return [_row_to_version(r) for r in conn.execute(q).mappings()]

    def aliases(self, model: str) -> dict[str, int]:
        a = schema.model_aliases
        with self.store.connect() as conn:
            return {r.alias: int(r.version) for r in conn.execute(sa.select(a).where(a.c.model == model))}

    def alias_history(self, model: str) -> list[dict[str, Any]]:
        ev = schema.alias_events
        with self.store.connect() as conn:
            return [
                dict(r)
                for r in conn.execute(sa.select(ev).where(ev.c.model == model).order_by(ev.c.event_id)).mappings()
            ]

    def resolve(self, model: str, *, version: int | None = None, alias: str | None = None) -> ModelVersion:
        """A version by number, or by alias (default: the champion)."""
        if version is not None:
            return self.get(model, version)
        alias = alias or CHAMPION
        found = self.aliases(model).get(alias)
        if found is None:
            known = self.versions(model)
            hint = (
                f"versions {', '.join(str(v.version) for v in known)} exist; promote one"
                if known
                else "no version is registered yet: run `nightshift train`"
            )
            raise ModelNotFound(f"model {model!r} has no {alias!r} alias ({hint})")
        return self.get(model, found)

    def load_bytes(self, mv: ModelVersion) -> bytes:
        """The version's ONNX bytes after the SHA-256 check."""
        return read_artifact(mv.artifact_uri, mv.sha256)
