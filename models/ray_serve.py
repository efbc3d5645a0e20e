"""The inference tier on Ray Serve: one deployment per model spec, batching windows from every
front end that shares it (``pip install emotion-monitor[ray]``).

Each replica loads the model a ``--model SPEC`` names, exactly as a front end would in-process,
and answers single windows (1-D float32 arrays, carried by Ray's serializer, never as JSON) with
``@serve.batch``: the windows that arrive within ``batch_wait_s`` of each other, from any number
of front ends, run through the model together, up to ``max_batch`` at a time. Windows are grouped
by length before the model sees them (as the engine does), so a window's prediction does not
depend on which others shared its batch and equals the in-process one.

:func:`build_app` is also a Serve *application builder*: the YAML of :func:`serve_config` names it
as ``import_path``, so an operator can ``serve deploy`` the same application on a cluster.
The client side is :class:`emotion_monitor.models.ray_client.RayModel`.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Sequence

import numpy as np
from emotion_monitor.models.base import EmotionModel, ModelError, Prediction
from emotion_monitor.models.registry import load_model
from ray import serve

#: Name of the deployment inside every application.
DEPLOYMENT = "EmotionInference"
#: ``import_path`` of the application builder, for Serve config files.
IMPORT_PATH = "emotion_monitor.models.ray_serve:build_app"
DEFAULT_MAX_BATCH = 32
DEFAULT_BATCH_WAIT_S = 0.01
#: Serve's logging for the application: one access-log line per window would drown the rest.
LOGGING = {"log_level": "WARNING", "enable_access_log": False}


def app_name(spec: str | None) -> str:
    """The Serve application name of a model spec: front ends find the tier by their own
    ``--model``, so the same spec string must be given to ``ray-serve`` and to the front ends."""
    if spec is None or spec == "default":
        return "emotion-monitor-default"
    slug = re.sub(r"[^a-z0-9]+", "-", spec.lower()).strip("-")[-24:].strip("-")
    digest = hashlib.sha256(spec.encode()).hexdigest()[:8]
    return f"emotion-monitor-{slug}-{digest}"


def predict_by_length(model: EmotionModel, windows: Sequence[np.ndarray]) -> list[Prediction]:
    """``model.predict`` on each group of equal-length windows, answers in the input order.

    Grouping means no window is padded next to a longer one, as in the engine."""
    groups: dict[int, list[int]] = {}
    for i, w in enumerate(windows):
        groups.setdefault(len(w), []).append(i)
    out: list[Prediction | None] = [None] * len(windows)
    for indices in groups.values():
        for i, p in zip(indices, model.predict([windows[i] for i in indices]), strict=True):
            out[i] = p
    return out


@serve.deployment(name=DEPLOYMENT)
class EmotionInference:
    """One replica: the model of ``spec`` and a batching queue in front of it."""

    def __init__(
        self,
        spec: str | None,
        max_batch: int = DEFAULT_MAX_BATCH,
        batch_wait_s: float = DEFAULT_BATCH_WAIT_S,
    ):
        # "auto": a replica given num_gpus sees its GPU; Ray hides the GPUs from the others
        self.model = load_model(spec, device="auto")
        self.predict.set_max_batch_size(max_batch)
        self.predict.set_batch_wait_timeout_s(batch_wait_s)
        self.served = {"batches": 0, "windows": 0, "largest_batch": 0}

    def describe(self) -> dict:
        """What a front end needs to stand in for the model: ``describe()`` plus the name."""
        return self.model.describe()

    def batch_stats(self) -> dict:
        """This replica's model calls so far: batches, windows, the largest batch, its id."""
        return {**self.served, "replica": serve.get_replica_context().replica_id.unique_id}

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_S)
    async def predict(self, windows: list[np.ndarray]) -> list[Prediction]:
        """One prediction per window (each call is one window; Serve hands them over batched)."""
        for w in windows:  # the replica serves many front ends: refuse what is not a window
            if not isinstance(w, np.ndarray) or w.dtype != np.float32 or w.ndim != 1:
                raise ModelError("a window must be a 1-D float32 numpy array")
        self.served["batches"] += 1
        self.served["windows"] += len(windows)
        self.served["largest_batch"] = max(self.served["largest_batch"], len(windows))
        # off the replica's event loop, so the next batch gathers while this one runs
        return await asyncio.to_thread(predict_by_length, self.model, windows)


def deployment_options(
    replicas: int | None = 1,
    autoscale: tuple[int, int] | None = None,
    gpus_per_replica: float = 0.0,
    cpus_per_replica: float = 1.0,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> dict:
    """``Deployment.options`` for a replica count or an autoscaling range, and each replica's
    CPUs and (fractional) GPUs. Raises ``ValueError`` naming a bad value."""
    if autoscale is not None:
        low, high = autoscale
        if not 0 <= low <= high or high < 1:
            raise ValueError(f"autoscale needs 0 <= MIN <= MAX and MAX >= 1, got {low}:{high}")
        scale: dict = {"autoscaling_config": {"min_replicas": low, "max_replicas": high}}
    else:
        if replicas is None or replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas}")
        scale = {"num_replicas": replicas}
    if gpus_per_replica < 0 or cpus_per_replica < 0:
        raise ValueError("CPUs and GPUs per replica must be >= 0")
    if max_batch < 1:
        raise ValueError(f"max batch must be >= 1, got {max_batch}")
    return {
        **scale,
        "ray_actor_options": {"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica},
        # Serve's default (5) would cap a batch at 5 windows: leave room for one batch running
        # and the next one gathering
        "max_ongoing_requests": 2 * max_batch,
    }


def build_app(args: dict) -> serve.Application:
    """The Serve application for ``args``: ``model`` (spec or null), ``max_batch``,
    ``batch_wait_s`` and the keywords of :func:`deployment_options` except ``max_batch``.

    The application builder ``serve deploy`` calls (see :func:`serve_config`)."""
    args = dict(args)
    spec = args.pop("model", None)
    max_batch = int(args.pop("max_batch", DEFAULT_MAX_BATCH))
    batch_wait_s = float(args.pop("batch_wait_s", DEFAULT_BATCH_WAIT_S))
    if args.get("autoscale") is not None:
        args["autoscale"] = tuple(args["autoscale"])
    options = deployment_options(max_batch=max_batch, **args)
    return EmotionInference.options(**options).bind(spec, max_batch, batch_wait_s)


def serve_config(
    spec: str | None,
    max_batch: int = DEFAULT_MAX_BATCH,
    batch_wait_s: float = DEFAULT_BATCH_WAIT_S,
    **scale,
) -> dict:
    """A Serve config (the YAML ``serve deploy`` reads) running :func:`build_app` for ``spec``;
    ``scale``: the keywords of :func:`deployment_options`. Replicas, autoscaling and resources go
    in the config's own ``deployments`` section, where operators expect to tune them.
    Handle-only: no HTTP route, no proxy."""
    if scale.get("autoscale") is not None:
        scale["autoscale"] = tuple(scale["autoscale"])
    options = deployment_options(max_batch=max_batch, **scale)
    return {
        "proxy_location": "Disabled",
        "applications": [
            {
                "name": app_name(spec),
                "import_path": IMPORT_PATH,
                "route_prefix": None,
                "logging_config": LOGGING,
                "args": {"model": spec, "max_batch": max_batch, "batch_wait_s": batch_wait_s},
                "deployments": [{"name": DEPLOYMENT, **options}],
            }
        ],
    }
