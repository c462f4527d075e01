"""``flagwire guard --listen``: Alertmanager's webhook, and the guard's ``/metrics``.

Alertmanager POSTs a notification (``{"alerts": [{"status": "firing", "labels": {...}},
...]}``, webhook format version 4) to any path but ``/metrics`` and ``/healthz``. Each firing
alert named in :data:`REGRESSION_ALERTS` with ``flag`` and ``variant`` labels makes the
guard apply that flag's ``guard.action``; resolved alerts and other alerts are ignored.
With a token, a request must carry ``Authorization: Bearer TOKEN`` (Alertmanager's
``http_config.authorization.credentials``).
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from .guard import Guard

__all__ = ["REGRESSION_ALERTS", "AlertListener", "handle_notification"]

logger = logging.getLogger("flagwire.guard")

REGRESSION_ALERTS: Final = frozenset(
    {"FlagwireVariantLatencyRegression", "FlagwireVariantErrorRegression"}
)
"""The shipped alerts (``integrations/prometheus/flagwire-rules.yml``) the guard acts on."""
MAX_BODY: Final = 1024 * 1024


def handle_notification(guard: Guard, body: Any) -> list[dict[str, str]]:
    """Act on one webhook notification; what was done with each alert."""
    alerts = body.get("alerts") if isinstance(body, dict) else None
    if not isinstance(alerts, list):
        raise ValueError('not an Alertmanager notification (no "alerts" list)')
    done = []
    for alert in alerts:
        labels = alert.get("labels") if isinstance(alert, dict) else None
        if not isinstance(labels, dict):
            continue
        name, flag, variant = (str(labels.get(k, "")) for k in ("alertname", "flag", "variant"))
        if alert.get("status") != "firing" or name not in REGRESSION_ALERTS or not flag:
            outcome = {"alertname": name, "flag": flag, "action": "ignore"}
        else:
            decision = guard.on_alert(
                alertname=name, flag=flag, variant=variant, job=str(labels.get("job", ""))
            )
            outcome = {"alertname": name, "flag": flag, "action": decision.action,
                       "reason": decision.reason}  # fmt: skip
        if guard.metrics is not None:
            guard.metrics.alerts.labels(outcome["action"]).inc()
        done.append(outcome)
    return done


class AlertListener:
    """An HTTP server in a thread: the webhook, ``GET /metrics``, ``GET /healthz``.

    Args:
        guard: The guard to act through.
        host: The address to listen on (keep it internal: it can roll flags back).
        port: The port (0: any free one, see :attr:`port`).
        token: The bearer token requests must carry (none if None).
    """

    def __init__(self, guard: Guard, host: str, port: int, *, token: str | None = None) -> None:
        self.guard = guard
        self.token = token
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                logger.debug("listen: " + format, *args)

            def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path.split("?")[0] == "/metrics" and guard.metrics is not None:
                    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

                    self._send(200, generate_latest(guard.metrics.registry), CONTENT_TYPE_LATEST)
                elif self.path == "/healthz":
                    self._send(200, b'{"ok": true}')
                else:
                    self._send(404, b'{"error": "not found"}')

            def do_POST(self) -> None:
                if listener.token is not None:
                    given = self.headers.get("Authorization", "")
                    if not hmac.compare_digest(given.encode(), f"Bearer {listener.token}".encode()):
                        self._send(401, b'{"error": "missing or wrong bearer token"}')
                        return
                length = int(self.headers.get("Content-Length") or 0)
                if not 0 < length <= MAX_BODY:
                    self._send(413 if length else 400, b'{"error": "body size"}')
                    return
                try:
                    done = handle_notification(guard, json.loads(self.rfile.read(length)))
                except ValueError as exc:
                    self._send(400, json.dumps({"error": str(exc)}).encode())
                    return
                self._send(200, json.dumps({"alerts": done}).encode())

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port: int = self.server.server_address[1]
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="flagwire-guard-listen", daemon=True
        )

    def start(self) -> AlertListener:
        self._thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
