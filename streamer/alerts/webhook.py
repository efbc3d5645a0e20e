"""Alerts POSTed as JSON to a webhook by a background thread, with bounded retries and
exponential backoff, so a slow or failing receiver never delays inference."""

from __future__ import annotations

import http.client
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request

log = logging.getLogger(__name__)


class WebhookSender:
    """POSTs JSON payloads from a background thread with bounded retries and backoff.

    ``send`` never blocks: the queue is bounded and, when full, the oldest payload is dropped
    and counted. A payload is retried on connection errors and non-2xx answers up to
    ``retries`` times, waiting ``backoff * 2**attempt`` seconds between tries.
    """

    def __init__(
        self,
        url: str,
        retries: int = 3,
        backoff: float = 0.5,
        timeout: float = 5.0,
        queue_size: int = 1000,
    ):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook URL must start with http:// or https://, got {url!r}")
        self.url = url
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self._queue: queue.Queue = queue.Queue(queue_size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alert-webhook", daemon=True)
        self._thread.start()
        self.stats = {"sent": 0, "failed": 0, "dropped": 0, "attempts": 0}

    def send(self, payload: dict) -> None:
        """Queue one payload (non-blocking)."""
        while True:
            try:
                self._queue.put_nowait(payload)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self._queue.task_done()
                    self.stats["dropped"] += 1
                except queue.Empty:
                    pass

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued, retries included (within ``timeout``), then stop the thread."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)
        self._stop.set()
        self._thread.join(max(0.1, deadline - time.monotonic()))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                payload = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                self._deliver(payload)
            finally:
                self._queue.task_done()

    def _deliver(self, payload: dict) -> None:
        body = json.dumps(payload).encode()
        for attempt in range(self.retries + 1):
            self.stats["attempts"] += 1
            try:
                request = urllib.request.Request(
                    self.url,
                    data=body,
                    method="POST",
                    headers={"Content-Type": "application/json", "User-Agent": "emotion-monitor"},
                )
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    response.read()
                self.stats["sent"] += 1
                return
            # HTTPException: an answer that is not HTTP (a bad status line, a short body); left
            # uncaught it would end the sender thread and no alert would be POSTed again.
            except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
                reason = exc
            if attempt < self.retries:
                log.warning(
                    "webhook %s failed (%s); retry %d/%d",
                    self.url,
                    reason,
                    attempt + 1,
                    self.retries,
                )
                if self._stop.wait(self.backoff * 2**attempt):
                    break  # shutting down: give up on this payload
        self.stats["failed"] += 1
        log.error(
            "webhook %s: giving up on alert %s after %d attempts",
            self.url,
            payload.get("name"),
            attempt + 1,
        )
