"""Ray: attaching to a cluster, or starting an embedded one, for `curate run` and `curate train` alike."""

from __future__ import annotations

import logging
import os
import socket

from curate.errors import RunError


def connect_ray(address: str | None, num_cpus: int | None = None) -> bool:
    """Attach to the cluster at `address`, else start an embedded Ray of `num_cpus` CPUs (default: all).
    True if we started it (and so must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        except (ConnectionError, RuntimeError, ray.exceptions.AuthenticationError) as exc:
            text = f"{exc} {exc.__cause__ or ''}"
            hint = ("; it wants token authentication: set RAY_AUTH_MODE=token and the cluster's token "
                    "(RAY_AUTH_TOKEN or ~/.ray/auth_token)" if "InvalidAuthToken" in text else "")
            raise RunError(f"cannot attach to the Ray cluster at {address}: {str(exc).splitlines()[0]}{hint}") from None
        return False
    # address="local": a Ray of our own even where `ray start` left a cluster running on this machine (plain
    # ray.init() would attach to that one, and then refuse num_cpus)
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
             logging_level=logging.ERROR, log_to_driver=False)
    _stop_idle_monitors()
    return True


def _stop_idle_monitors() -> None:
    """Stop the embedded Ray's autoscaler and log monitors, as `ray start --no-monitor
    --include-log-monitor=false` would not start them (ray.init has no such settings). One machine has nothing
    to autoscale, and no logs are forwarded to the driver (log_to_driver=False): the two are about 100 MB of the
    run's memory (bench/bench_ray_overhead.py). Ray's reaper still takes down the rest if this process dies.
    Best effort: a Ray without these methods keeps its monitors."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    for stop in ("kill_monitor", "kill_log_monitor"):
        try:
            getattr(node, stop)(check_alive=False)
        except (AttributeError, KeyError, OSError):
            pass


def _check_reachable(address: str) -> None:
    """Fail at once where nothing answers (Ray itself retries for about 14 minutes)."""
    if address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=10):
            pass
    except (OSError, ValueError) as exc:
        raise RunError(f"cannot attach to the Ray cluster at {address}: {exc}") from None
