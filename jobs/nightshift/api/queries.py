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


#: What the API served at a moment (`?as_of=`): the same resolution, from the histories instead of the
#: current state. An alias's version at :at is its last move at or before :at (`alias_events`); a run
#: served its (model, version, ds) from its commit (`finished_at`, the catalog's `committed_at`) until
#: a newer run of it, or retention, replaced it (`replaced_at`; NULL while it is the catalog's).
_ALIAS_AT = (
    "(SELECT e.new_version FROM alias_events e WHERE e.model = :model AND e.alias = :alias AND e.at <= :at "
    "ORDER BY e.at DESC, e.event_id DESC LIMIT 1)"
)
_PREVIOUS_AT = (
    "(SELECT e.new_version FROM alias_events e WHERE e.model = :model AND e.alias = 'previous' "
    "AND :alias = 'champion' AND e.at <= :at ORDER BY e.at DESC, e.event_id DESC LIMIT 1)"
)
#: The version that held the role on the night at :at: the `served` row if recorded by then, else the one a
#: re-run of the night replaced after :at (`served_history`; nightshift.nightly.record_served keeps a role's
#: row while its version does not change, so the two never overlap).
_SERVED_AT = (
    "(SELECT s.version FROM served s WHERE s.model = :model AND s.ds = :ds AND s.role = :alias "
    "AND s.recorded_at <= :at ORDER BY s.recorded_at DESC LIMIT 1)"
)
_SERVED_BEFORE = (
    "(SELECT h.version FROM served_history h WHERE h.model = :model AND h.ds = :ds AND h.role = :alias "
    "AND h.recorded_at <= :at AND h.replaced_at > :at ORDER BY h.recorded_at DESC LIMIT 1)"
)
#: A run that was the catalog's truth of its partition at :at. A replaced run without `replaced_at`
#: (before migration 0008, or expired before it was recorded) has no known end: it is left out.
_SERVING_AT = (
    "r0.model = :model AND r0.status IN ('committed', 'superseded', 'expired') AND r0.finished_at <= :at "
    "AND (r0.replaced_at > :at OR (r0.replaced_at IS NULL AND r0.status = 'committed'))"
)

#: Which statement a selection reads: (by_alias, by_ds, as_of).
Kind = tuple[bool, bool, bool]


def _partition(*, by_alias: bool, by_ds: bool) -> str:
    """The one committed partition a request selects: (model, version|alias, newest|ds).

    By alias, newest: the alias's version's newest committed partition; for the champion, if the
    version just promoted has none yet, the newest of the version it replaced (`previous`), so a
    promotion never leaves a reader without an answer. By alias, for a ds: the version that held
    that role on that night (`served`), else the alias's version today.
    """
    if not by_alias:
        version, order = "c0.version = :version", ""
    elif by_ds:
        version, order = f"c0.version = COALESCE({_SERVED}, {_ALIAS})", ""
    else:
        version, order = f"c0.version IN ({_ALIAS}, {_PREVIOUS})", f"(c0.version = {_ALIAS}) DESC, "
    ds = " AND c0.ds = :ds" if by_ds else ""
    return (
        "SELECT c0.version, c0.ds, c0.run_id, c0.committed_at FROM partitions c0 "
        f"WHERE c0.model = :model AND c0.status = 'committed' AND {version}{ds} "
        f"ORDER BY {order}c0.ds DESC LIMIT 1"
    )


def _partition_at(*, by_alias: bool, by_ds: bool) -> str:
    """`_partition` as it resolved at :at (`?as_of=`): the same rules over the alias moves and the runs.

    The run it names may have lost its rows since (a replaced run outside its model's `history_days`,
    or an expired day): the reader tells that apart from an absent entity (PredictionReader._gone).
    """
    if not by_alias:
        version, order = "r0.version = :version", ""
    elif by_ds:
        version, order = f"r0.version = COALESCE({_SERVED_AT}, {_SERVED_BEFORE}, {_ALIAS_AT})", ""
    else:
        version, order = f"r0.version IN ({_ALIAS_AT}, {_PREVIOUS_AT})", f"(r0.version = {_ALIAS_AT}) DESC, "
    ds = " AND r0.ds = :ds" if by_ds else ""
    return (
        "SELECT r0.version, r0.ds, r0.run_id, r0.finished_at AS committed_at FROM runs r0 "
        f"WHERE {_SERVING_AT} AND {version}{ds} "
        f"ORDER BY {order}r0.ds DESC, r0.finished_at DESC LIMIT 1"
    )


def _resolution(kind: Kind) -> str:
    by_alias, by_ds, as_of = kind
    return (_partition_at if as_of else _partition)(by_alias=by_alias, by_ds=by_ds)


@dataclass(frozen=True)
class Queries:
    """The statements for one dialect, indexed by their Kind: (by_alias, by_ds, as_of)."""

    one: dict[Kind, str]
    many: dict[Kind, str]
    models: str
    model_exists: str
    api_key: str
    schema_revision: str
    canary: str
    version_task: str
    #: `one` and `many` that also read each row's reasons (`?explain=true`), by Kind.
    one_explain: dict[Kind, str] = field(default_factory=dict)
    many_explain: dict[Kind, str] = field(default_factory=dict)
    #: Whether an as-of read's run has lost its rows (garbage-collected): a row when it has.
    gone: str = ""
    #: The version an alias pointed at, at :at (None: it did not exist then).
    alias_at: str = ""
    #: The partition alone (no prediction rows), by Kind: what the answer cache confirms its run with
    #: (api/cache.py).
    resolve: dict[Kind, str] = field(default_factory=dict)


_KINDS: list[Kind] = [(a, d, t) for a in (False, True) for d in (False, True) for t in (False, True)]


def build(dialect: str) -> Queries:
    """The API's statements for "postgresql" or "sqlite".

    One statement sees one snapshot (PostgreSQL, any isolation level; SQLite in WAL), and the
    rows are reached only through the catalog row (`partitions.run_id`), so an answer is the
    complete old set or the complete new set of a partition, never a mix. Values are always
    bound parameters (`:name`); nothing from a request is ever formatted into the text.
    """
    # A batch binds ONE parameter whatever its size: a text[] in PostgreSQL, a JSON array in SQLite.
    in_ids = "= ANY(:ids)" if dialect == "postgresql" else "IN (SELECT value FROM json_each(:ids))"
    # Reasons (`?explain=true`) are one more column of the same row: the same statement, the same snapshot.
    reasons = ", p.reasons"

    # The run reaches the prediction rows as a scalar subquery (an InitPlan on PostgreSQL), never as a join
    # column: `p.run_id = <param>` is then an index condition, and the generic plan prunes `predictions` to
    # that run's partition when it executes, whatever the tables' statistics. Joined on `c.run_id`, the plan
    # depended on them: batches probed the index of every partition (every retained run of every model) and
    # filtered the other runs' rows out afterwards; single lookups did too over large partitions.
    run = "p.run_id = (SELECT c1.run_id FROM c c1)"

    def one_of(kind: Kind, more: str = "") -> str:
        return (
            f"WITH c AS ({_resolution(kind)}) "
            f"SELECT c.version, c.ds, c.run_id, c.committed_at, p.score, p.label, p.value, p.probs{more} "
            f"FROM c LEFT JOIN predictions p ON {run} AND p.entity_id = :entity_id"
        )

    # The partition's columns come once (first branch), not repeated on each of up to 1000 rows:
    # parsing them per row was a third of the client's CPU for a full batch.
    def many_of(kind: Kind, more: str = "") -> str:
        nulls = ", NULL" * (5 + more.count(","))
        return (
            f"WITH c AS ({_resolution(kind)}) "
            f"SELECT c.version, c.ds, c.run_id, c.committed_at{nulls} FROM c "
            "UNION ALL "
            f"SELECT NULL, NULL, NULL, NULL, p.entity_id, p.score, p.label, p.value, p.probs{more} "
            f"FROM predictions p WHERE {run} AND p.entity_id {in_ids}"
        )

    one = {kind: one_of(kind) for kind in _KINDS}
    many = {kind: many_of(kind) for kind in _KINDS}
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
    # `features`: the names the feature indices of `predictions.reasons` point at.
    version_task = "SELECT task, signature, features FROM model_versions WHERE model = :model AND version = :version"
    # A run that committed rows but holds none now: `nightshift gc` removed them (a replaced run past its
    # model's history_days, or a day expired by retention). On PostgreSQL the run's partition is pruned
    # at executor start (generic plan), so this reads at most one row of one table.
    gone = (
        "SELECT r.rows FROM runs r WHERE r.run_id = :run_id AND r.rows > 0 "
        "AND NOT EXISTS (SELECT 1 FROM predictions p WHERE p.run_id = :run_id)"
    )
    return Queries(
        one=one,
        many=many,
        models=models,
        model_exists=model_exists,
        api_key=api_key,
        schema_revision=schema_revision,
        canary=canary,
        version_task=version_task,
        gone=gone,
        alias_at=f"SELECT {_ALIAS_AT}",
        resolve={kind: _resolution(kind) for kind in _KINDS},
        one_explain={kind: one_of(kind, reasons) for kind in _KINDS},
        many_explain={kind: many_of(kind, reasons) for kind in _KINDS},
    )
