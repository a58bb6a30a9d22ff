"""Alerts: log them loudly and, when a webhook is configured, POST them as JSON (never raising)."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from datetime import UTC, date, datetime
from typing import Any

from nightshift.config import Settings
from nightshift.db.engine import redact

log = logging.getLogger(__name__)

#: Events whose name says something failed are logged at ERROR; the others at WARNING.
_ERROR_WORDS = ("fail", "error", "timeout", "timed_out")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def notify(settings: Settings, event: str, message: str, **details: Any) -> None:
    """Log an alert and POST it to `settings.notify.webhook_url` when set.

    The body is `{"source": "nightshift", "event", "message", "at", "details"}`. A webhook
    that is down, slow or answers an error is logged, never raised: alerting must not turn
    one failure into two.
    """
    level = logging.ERROR if any(w in event.lower() for w in _ERROR_WORDS) else logging.WARNING
    log.log(level, "nightshift alert [%s]: %s", event, message, extra={"nightshift_event": event, **_safe(details)})
    url = settings.notify.webhook_url
    if not url:
        return
    body = {
        "source": "nightshift",
        "event": event,
        "message": message,
        "at": datetime.now(UTC).isoformat(),
        "details": details,
    }
    where = redact(url)
    try:
        data = json.dumps(body, default=_json_default).encode()
        request = urllib.request.Request(  # noqa: S310 - the URL is the operator's own configuration
            url, data=data, method="POST", headers={"Content-Type": "application/json", "User-Agent": "nightshift"}
        )
        with urllib.request.urlopen(request, timeout=settings.notify.timeout_s) as response:  # noqa: S310
            status = response.status
        log.info("alert %s delivered to %s (HTTP %s)", event, where, status)
    except urllib.error.HTTPError as exc:
        log.error(
            "alert %s: webhook %s answered HTTP %s %s; the alert is only in this log",
            event,
            where,
            exc.code,
            exc.reason,
        )
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        log.error("alert %s: webhook %s unreachable (%s); the alert is only in this log", event, where, reason)
    except Exception as exc:  # noqa: BLE001 - a broken alert path is logged, never raised
        log.error("alert %s: could not send to webhook %s (%s: %s)", event, where, type(exc).__name__, exc)


def _safe(details: dict[str, Any]) -> dict[str, Any]:
    """Details usable as LogRecord attributes: prefixed so they never clash with the record's own."""
    return {f"nightshift_{k}": v for k, v in details.items()}
