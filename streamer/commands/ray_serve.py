"""``emotion-monitor ray-serve``: deploy the inference tier (one Serve application per model spec,
see ``models/ray_serve.py``) on a Ray cluster, or on a local Ray instance it starts, and keep it
up until Ctrl-C / SIGTERM; front ends then run with ``--inference ray[:ADDRESS]``.

``--write-config FILE.yaml`` writes the same application as a Serve config for ``serve deploy``
(clusters run by operators, KubeRay's RayService) and exits without touching any cluster.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

import yaml

#: Defaults of the batching flags; ``models/ray_serve.py`` holds the same (it imports Ray).
MAX_BATCH = 32
BATCH_WAIT_MS = 10.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``emotion-monitor ray-serve``."""
    p.add_argument(
        "--address",
        metavar="ADDR",
        help="Ray cluster to deploy on (HOST:PORT, ray://HOST:PORT or auto); default: start a "
        "local Ray instance in this process",
    )
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--replicas", type=int, default=1, metavar="N", help="replicas (default 1)")
    scale.add_argument(
        "--autoscale", metavar="MIN:MAX", help="let Serve scale the replicas between MIN and MAX"
    )
    p.add_argument(
        "--model", metavar="SPEC", help="model spec each replica loads (as for serve; default)"
    )
    p.add_argument(
        "--gpus-per-replica",
        type=float,
        default=0.0,
        metavar="F",
        help="GPUs per replica, fractions allowed (0.25: four replicas share one GPU; default 0)",
    )
    p.add_argument(
        "--cpus-per-replica", type=float, default=1.0, metavar="F", help="CPUs per replica (1)"
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=MAX_BATCH,
        metavar="N",
        help=f"most windows per model call on a replica (default {MAX_BATCH})",
    )
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=BATCH_WAIT_MS,
        metavar="MS",
        help=f"how long a replica waits to fill a batch (default {BATCH_WAIT_MS:g} ms)",
    )
    p.add_argument(
        "--write-config",
        metavar="FILE.yaml",
        help="write a Serve config for `serve deploy` with these settings and exit",
    )


def parse_autoscale(text: str) -> tuple[int, int]:
    """``MIN:MAX`` as two integers; ``ValueError`` naming the flag otherwise."""
    low, sep, high = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return int(low), int(high)
    except ValueError:
        raise ValueError(f"--autoscale {text!r}: expected MIN:MAX, e.g. 1:4") from None


def app_args(args: argparse.Namespace) -> dict:
    """The application builder's arguments from the flags (checked: ``ValueError``)."""
    autoscale = parse_autoscale(args.autoscale) if args.autoscale else None
    if args.batch_wait_ms < 0:
        raise ValueError(f"--batch-wait-ms must be >= 0, got {args.batch_wait_ms:g}")
    return {
        "replicas": None if autoscale else args.replicas,
        "autoscale": list(autoscale) if autoscale else None,
        "gpus_per_replica": args.gpus_per_replica,
        "cpus_per_replica": args.cpus_per_replica,
        "max_batch": args.max_batch,
        "batch_wait_s": args.batch_wait_ms / 1000,
    }


def main(args: argparse.Namespace) -> int:
    """Deploy and wait for a signal; exit codes: 0 stopped, 1 Ray or model error, 2 bad flags."""
    try:
        # lazy: Ray is an optional extra and takes seconds to import
        import emotion_monitor.models.ray_serve as ray_serve
    except ImportError as exc:
        print(f"error: ray-serve needs pip install 'emotion-monitor[ray]' ({exc})", file=sys.stderr)
        return 2
    try:
        build = app_args(args)
        ray_serve.deployment_options(**{k: v for k, v in build.items() if k != "batch_wait_s"})
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.write_config:
        return _write_config(args.write_config, ray_serve.serve_config(args.model, **build))
    return _deploy(args, build, ray_serve)


def _write_config(path: str, config: dict) -> int:
    try:
        Path(path).write_text(yaml.safe_dump(config, sort_keys=False))
    except OSError as exc:
        print(f"error: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}: deploy it with `serve deploy {path}`")
    return 0


def _deploy(args: argparse.Namespace, build: dict, ray_serve) -> int:
    import ray  # lazy: an optional extra, seconds to import
    from ray import serve  # lazy: as above

    stop = threading.Event()
    name = ray_serve.app_name(args.model)
    old: dict = {}
    try:
        # no --address: a new local instance, even where another one runs
        ray.init(address=args.address or "local", logging_level="WARNING")
        # after ray.init, whose own SIGTERM handler would print a stack and abort the process
        old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
        serve.start(proxy_location="Disabled")  # handle-only: front ends call the deployment
        print(f"deploying {name} ...", file=sys.stderr, flush=True)
        app = ray_serve.build_app({"model": args.model, **build})
        serve.run(app, name=name, route_prefix=None, logging_config=ray_serve.LOGGING)
    except Exception as exc:  # a bad model spec fails in the replicas: Serve says which
        print(f"error: cannot deploy {name}: {exc}", file=sys.stderr)
        _shutdown(args.address is None, old)
        return 1
    where = args.address or ray.get_runtime_context().gcs_address
    print(f"emotion-monitor inference tier: application {name} on {where}", flush=True)
    print(
        f"front ends: --inference ray:{where} --model {args.model or 'default'}",
        file=sys.stderr,
        flush=True,
    )
    try:
        while not stop.wait(0.5):
            pass
    finally:
        print(f"shutting down {name}", file=sys.stderr, flush=True)
        serve.delete(name)
        _shutdown(args.address is None, old)
    return 0


def _shutdown(local: bool, handlers: dict) -> None:
    """Leave the cluster (a local instance this command started is stopped with Serve) and put
    the signal ``handlers`` back."""
    import ray  # lazy: an optional extra, seconds to import
    from ray import serve  # lazy: as above

    if local and ray.is_initialized():
        serve.shutdown()
    ray.shutdown()
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
