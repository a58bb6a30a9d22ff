"""The API's SQL: each answer is ONE statement that resolves alias → version, newest ds → run and reads the rows."""

from __future__ import annotations

from dataclasses import dataclass, field

_ALIAS = "(SELECT a.version FROM model_aliases a WHERE a.model = :model AND a.alias = :alias)"
#: The version that held this role on the night asked for (nightshift.nightly records `served`).
_SERVED = "(SELECT s.version FROM served s WHERE s.model = :model AND s.ds = :ds AND s.role = :alias)"
#: While a newly promoted champion has no committed partition yet, the version it replaced answers.
_PREVIOUS = (
    "(SELECT a.version FROM model_aliases a WHERE a.model = :model AND a.alias = 'previous' AND :alias = 'champion')"
)


def _partition(*, by_alias: bool, as_of: bool) -> str:
    """The one committed partition a request selects: (model, version|alias, newest|ds).

    By alias, newest: the alias's version's newest committed partition; for the champion, if the
    version just promoted has none yet, the newest of the version it replaced (`previous`), so a
    promotion never leaves a reader without an answer. By alias, as of a ds: the version that held
    that role on that night (`served`), else the alias's version today.
    """
    if not by_alias:
        version, order = "c0.version = :version", ""
    elif as_of:
        version, order = f"c0.version = COALESCE({_SERVED}, {_ALIAS})", ""
    else:
        version, order = f"c0.version IN ({_ALIAS}, {_PREVIOUS})", f"(c0.version = {_ALIAS}) DESC, "
    ds = " AND c0.ds = :ds" if as_of else ""
    return (
        "SELECT c0.version, c0.ds, c0.run_id, c0.committed_at FROM partitions c0 "
        f"WHERE c0.model = :model AND c0.status = 'committed' AND {version}{ds} "
        f"ORDER BY {order}c0.ds DESC LIMIT 1"
    )


@dataclass(frozen=True)
class Queries:
    """The statements for one dialect, indexed by (by_alias, as_of)."""

    one: dict[tuple[bool, bool], str]
    many: dict[tuple[bool, bool], str]
    models: str
    model_exists: str
    api_key: str
    schema_revision: str
    canary: str
    version_task: str
    #: The partition alone (no prediction rows), by (by_alias, as_of): what the answer cache confirms
    #: its run with (api/cache.py).
    resolve: dict[tuple[bool, bool], str] = field(default_factory=dict)


_KINDS = [(by_alias, as_of) for by_alias in (False, True) for as_of in (False, True)]


def build(dialect: str) -> Queries:
    """The API's statements for "postgresql" or "sqlite".

    One statement sees one snapshot (PostgreSQL, any isolation level; SQLite in WAL), and the
    rows are reached only through the catalog row (`partitions.run_id`), so an answer is the
    complete old set or the complete new set of a partition, never a mix. Values are always
    bound parameters (`:name`); nothing from a request is ever formatted into the text.
    """
    # A batch binds ONE parameter whatever its size: a text[] in PostgreSQL, a JSON array in SQLite.
    in_ids = "= ANY(:ids)" if dialect == "postgresql" else "IN (SELECT value FROM json_each(:ids))"
    one = {
        kind: (
            "SELECT c.version, c.ds, c.run_id, c.committed_at, p.score, p.label, p.value, p.probs "
            f"FROM ({_partition(by_alias=kind[0], as_of=kind[1])}) c "
            "LEFT JOIN predictions p ON p.run_id = c.run_id AND p.entity_id = :entity_id"
        )
        for kind in _KINDS
    }
    # The partition's columns come once (first branch), not repeated on each of up to 1000 rows:
    # parsing them per row was a third of the client's CPU for a full batch.
    many = {
        kind: (
            f"WITH c AS ({_partition(by_alias=kind[0], as_of=kind[1])}) "
            "SELECT c.version, c.ds, c.run_id, c.committed_at, NULL, NULL, NULL, NULL, NULL FROM c "
            "UNION ALL "
            "SELECT NULL, NULL, NULL, NULL, p.entity_id, p.score, p.label, p.value, p.probs FROM c "
            f"JOIN predictions p ON p.run_id = c.run_id AND p.entity_id {in_ids}"
        )
        for kind in _KINDS
    }
    models = (
        "SELECT a.model, a.alias, a.version, c.ds, c.committed_at, c.row_count "
        "FROM model_aliases a "
        "LEFT JOIN partitions c ON c.model = a.model AND c.version = a.version AND c.status = 'committed' "
        "AND c.ds = (SELECT max(c2.ds) FROM partitions c2 "
        "WHERE c2.model = a.model AND c2.version = a.version AND c2.status = 'committed') "
        "ORDER BY a.model, a.alias"
    )
    model_exists = (
        "SELECT (SELECT count(*) FROM model_versions WHERE model = :model), "
        "(SELECT count(*) FROM model_versions WHERE model = :model AND version = :version), "
        "(SELECT max(version) FROM model_aliases WHERE model = :model AND alias = :alias)"
    )
    api_key = "SELECT key_hash, models, revoked_at FROM api_keys WHERE key_id = :key_id"
    schema_revision = "SELECT version_num FROM alembic_version"
    # A bandit between the champion and a candidate routes like a canary, by the candidate's share of the
    # night it published (nightshift.rollout.bandit).
    canary = (
        "SELECT canary_share FROM model_rollouts "
        "WHERE model = :model AND strategy IN ('canary', 'bandit') AND canary_share IS NOT NULL"
    )
    version_task = "SELECT task, signature FROM model_versions WHERE model = :model AND version = :version"
    return Queries(
        one=one,
        many=many,
        models=models,
        model_exists=model_exists,
        api_key=api_key,
        schema_revision=schema_revision,
        canary=canary,
        version_task=version_task,
        resolve={kind: _partition(by_alias=kind[0], as_of=kind[1]) for kind in _KINDS},
    )
