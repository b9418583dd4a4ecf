"""Hook that raises an alert: always logged; posted as JSON to a webhook when one is set.

The URL is a secret: the Airflow connection ``fl_alert_webhook`` (its host/URI), else the
``FL_ALERT_WEBHOOK_URL`` environment variable; never params.yaml.
"""

from __future__ import annotations

import os
from typing import Any

from airflow.sdk import BaseHook


class AlertHook(BaseHook):
    """Sends degradation alerts."""

    hook_name = "FL alert"

    def __init__(self, webhook_url: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.webhook_url = webhook_url if webhook_url is not None else self._configured_url()

    @staticmethod
    def _configured_url() -> str | None:
        url = os.environ.get("FL_ALERT_WEBHOOK_URL") or None
        if url:
            return url
        try:
            conn = BaseHook.get_connection("fl_alert_webhook")
        except Exception:  # no such connection: alerts are logged only
            return None
        return conn.get_uri() or None

    def get_conn(self) -> str | None:
        return self.webhook_url

    def send(self, payload: dict[str, Any]) -> bool:
        """Log the alert and post it to the webhook if configured; True if delivered."""
        from fl_core.monitoring import send_webhook

        self.log.warning("ALERT %s", payload)
        if not self.webhook_url:
            return False
        return send_webhook(self.webhook_url, payload)
