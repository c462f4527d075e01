"""Celery with flagwire: a task published in a request runs with that request's flags.

Run a worker:  ``celery --workdir examples -A celery_tasks worker --pool prefork``
(broker: ``$CELERY_BROKER``, default ``redis://127.0.0.1:6379/0``; set the same
``$FLAGWIRE_PROPAGATION_KEYS`` in the web service and the worker). Publish from a view::

    from celery_tasks import send_receipt
    send_receipt.delay(order_id)     # carries the request's assignments, signed
"""

from __future__ import annotations

import os
from pathlib import Path

from celery import Celery

import flagwire
import flagwire.celery

app = Celery("shop", broker=os.environ.get("CELERY_BROKER", "redis://127.0.0.1:6379/0"))
flagwire.celery.setup(
    app,
    source=flagwire.FileSource(
        os.environ.get("FLAGWIRE_FLAGS", Path(__file__).with_name("flags.yaml"))
    ),
)


@app.task
def send_receipt(order_id: int) -> str:
    # the publishing request's variant, even mid-rollout and with another flag file here
    new = flagwire.current_flags().boolean("new-checkout", False)
    return f"receipt for {order_id}: {'new' if new else 'classic'} layout"
