"""A front end's model when inference runs on Ray Serve: :class:`RayModel` implements the model
interface by sending each window to the tier's deployment handle, so the engine, sources,
telephony, alerts and recorder run unchanged (``--inference ray[:ADDRESS]``).

Faults: a window whose request fails in transit (its replica died, the application is being
redeployed) is sent again, to whichever replica the handle picks, for up to ``retry_s``; a
killed replica therefore costs no event. When the tier stays unreachable longer, the model tells
its ``on_outage`` callback once (the front end turns that into a ``source_error`` naming the
tier), then keeps retrying every ``retry_every_s`` until the tier is back: the calls stay open,
the engine simply waits, and the service's bounded inbox applies its usual overflow policy.
An error raised *by the model* in a replica (a bad window) is not retried: it is that caller's
:class:`ModelError`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
import ray
from emotion_monitor.models.base import EmotionModel, ModelError, Prediction, first_line
from emotion_monitor.models.ray_serve import app_name
from ray import serve
from ray.exceptions import RayError, RayTaskError

log = logging.getLogger(__name__)

#: ``on_outage(message, retry_in_s)``: the tier has been unreachable for ``retry_s``.
OutageCallback = Callable[[str, float], None]


def connect(address: str | None = None) -> None:
    """Join the Ray cluster at ``address`` ("auto", ``HOST:PORT``, ``ray://...``; ``None``:
    "auto", the cluster ``ray start`` or ``emotion-monitor ray-serve`` runs on this machine)
    unless this process already belongs to one. Raises ModelError naming the address."""
    if ray.is_initialized():
        return
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # no router chatter on stderr
    address = address or "auto"
    try:
        # the replicas' logs stay on the cluster: a front end prints its own events only
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ModelError(
            f"inference tier: cannot join the Ray cluster at {address!r} ({first_line(exc)}); "
            "start one with `emotion-monitor ray-serve` or `ray start --head`"
        ) from exc


class RayModel(EmotionModel):
    """The model of the Serve application ``app``, reached through its deployment handle.

    Use :meth:`connect_app` to build one; ``tier_stats`` counts requests, retries, failed attempts,
    outages and the summed per-window round trip (``/metrics`` shows them).
    """

    def __init__(
        self,
        handle,
        app: str,
        description: dict,
        retry_s: float = 10.0,
        retry_every_s: float = 1.0,
        request_timeout_s: float = 60.0,
    ):
        self.handle = handle
        self.app = app
        self.name = description.get("name", app)
        self.labels = tuple(description.get("labels", ()))
        self.has_valence_arousal = bool(description.get("valence_arousal", False))
        self.device = f"ray:{description.get('device', '?')}"
        self._description = dict(description)
        self.retry_s = retry_s
        self.retry_every_s = retry_every_s
        self.request_timeout_s = request_timeout_s
        self.on_outage: OutageCallback | None = None
        self._closed = threading.Event()
        self.tier_stats = {
            "requests": 0,
            "retries": 0,
            "failures": 0,
            "outages": 0,
            "tier_up": 1,
            "calls": 0,  # rounds of sending windows and collecting their answers
            "round_trip_seconds_sum": 0.0,
        }

    @classmethod
    def connect_app(
        cls, spec: str | None, address: str | None = None, timeout_s: float = 60.0, **options
    ) -> RayModel:
        """Join the cluster (see :func:`connect`) and the application serving ``spec``.

        Raises ModelError when the cluster or the application cannot be reached."""
        connect(address)
        app = app_name(spec)
        try:
            handle = serve.get_app_handle(app)
            description = handle.describe.remote().result(timeout_s=timeout_s)
        except Exception as exc:
            raise ModelError(
                f"inference tier: no Serve application {app!r} for model "
                f"{spec or 'default'!r} ({first_line(exc)}); deploy it with "
                f"`emotion-monitor ray-serve --model {spec or 'default'}`"
            ) from exc
        return cls(handle, app, description, **options)

    def describe(self) -> dict:
        """The replicas' own description (kind, encoder, ...), the device as ``ray:...`` and
        which application serves it."""
        return {
            **self._description,
            **super().describe(),
            "inference": f"ray serve application {self.app}",
        }

    def close(self) -> None:
        """Stop waiting for an unreachable tier (a blocked ``predict`` raises ModelError)."""
        self._closed.set()

    def predict(self, windows: Sequence[np.ndarray]) -> list[Prediction]:
        """Send every window at once (Serve batches them with other front ends' windows) and
        collect the answers, re-sending those lost in transit; see the module notes."""
        arrays = [np.ascontiguousarray(w, dtype=np.float32).reshape(-1) for w in windows]
        results: list[Prediction | None] = [None] * len(arrays)
        todo = list(range(len(arrays)))
        failing_since, error = None, ""
        while todo:
            started = time.perf_counter()
            self.tier_stats["requests"] += len(todo)
            sent = [(i, self._send(arrays[i])) for i in todo]
            todo = []
            for i, response in sent:
                try:
                    results[i] = self._receive(response)
                except _Lost as lost:
                    self.tier_stats["failures"] += 1
                    todo.append(i)
                    error = lost.reason
            self.tier_stats["calls"] += 1
            self.tier_stats["round_trip_seconds_sum"] += time.perf_counter() - started
            if todo:
                failing_since = failing_since or time.monotonic()
                self._wait_before_retry(time.monotonic() - failing_since, error)
                self.tier_stats["retries"] += len(todo)
        if failing_since is not None and self.tier_stats["tier_up"] == 0:
            self.tier_stats["tier_up"] = 1
            log.warning("inference tier %s is back", self.app)
        return results

    def _send(self, window: np.ndarray):
        try:
            return self.handle.predict.remote(window)
        except Exception as exc:  # the handle refuses at once while the application is gone
            return _Lost(first_line(exc))

    def _receive(self, response) -> Prediction:
        if isinstance(response, _Lost):
            raise response
        try:
            return response.result(timeout_s=self.request_timeout_s)
        except RayTaskError as exc:
            if isinstance(exc.cause, RayError):  # Ray's own failure, passed along: in transit
                raise _Lost(first_line(exc.cause)) from exc
            # the model itself refused this window: that caller's error, not a transit loss
            raise ModelError(f"inference tier {self.app}: {first_line(exc.cause or exc)}") from exc
        except Exception as exc:  # replica died, application gone, timeout: send it again
            raise _Lost(first_line(exc)) from exc

    def _wait_before_retry(self, failing_for: float, error: str) -> None:
        """Pause before re-sending; past ``retry_s`` of failures, declare an outage once."""
        if failing_for >= self.retry_s and self.tier_stats["tier_up"]:
            self.tier_stats["tier_up"] = 0
            self.tier_stats["outages"] += 1
            message = (
                f"inference tier unreachable: Ray Serve application {self.app} ({error}); "
                f"the calls stay open and analysis resumes when it is back"
            )
            log.error("%s", message)
            if self.on_outage is not None:
                self.on_outage(message, self.retry_every_s)
        pause = 0.05 if self.tier_stats["tier_up"] else self.retry_every_s
        if self._closed.wait(pause):
            raise ModelError(f"inference tier {self.app}: closed while unreachable ({error})")


class _Lost(Exception):
    """A request lost in transit (or never sent); the window is sent again."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
