"""CandidateApproval: Airflow's human-in-the-loop approval of a retrained candidate (the `approval` task of
retrain_<model>), which records a rejection on the candidate and in its audit trail."""

from __future__ import annotations

from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator


class CandidateApproval(ApprovalOperator):
    """Airflow's human-in-the-loop approval of a candidate that records a rejection on the candidate.

    "Approve" lets the `approve` task roll the candidate out. "Reject" (which skips `approve`) calls
    `Rollouts.reject` with who answered (the HITL response's user) and why (the `reason` the form asks
    for), so the candidate leaves `pending_approval` for `rejected` and the audit trail says so.
    """

    def __init__(self, *, model: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model = model

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        # On "Reject", ApprovalOperator skips `approve` by raising (Airflow 3's skip), so the rejection is
        # recorded first; an answer the operator then refuses (an unknown option) changed nothing but the record.
        if list(event.get("chosen_options") or [])[:1] == [self.REJECT]:
            self._record_rejection(context, event)
        return super().execute_complete(context, event)

    def _record_rejection(self, context: Any, event: dict[str, Any]) -> None:
        # Imported here, never at parse time: the store and the rollout library load only when an answer comes.
        from nightshift.rollout import RolloutError, Rollouts
        from nightshift_airflow.runtime import run_settings

        outcome = context["ti"].xcom_pull(task_ids="retrain") or {}
        user = event.get("responded_by_user") or {}
        who = str(user.get("name") or user.get("id") or "airflow-approval (timed out)")
        reason = str((event.get("params_input") or {}).get("reason") or "").strip()
        rollouts = Rollouts(run_settings())
        try:
            rollouts.reject(
                self.model,
                int(outcome["version"]),
                by=who,
                reason=(reason or "rejected without a reason") + f" (Airflow run {context['run_id']})",
            )
        except RolloutError as exc:  # a retried approval: the first answer already recorded it
            self.log.warning("rejection not recorded again: %s", exc)
        finally:
            rollouts.store.dispose()
