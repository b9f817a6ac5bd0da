"""Starting or joining Ray, and checking that the cluster can ever hold what a trial asks for.

Every Ray detail the project depends on lives here (DESIGN.md, "Ray 2.60 facts"): the Train controller's poll
interval, token auth when joining by address, the custom ``trial_driver`` resource that keeps Tune drivers from
starving Train workers (and, because only the head node of a cluster carries it, pins every trial driver there), the
feasibility check that turns a would-be hang into a clear error, what an autoscaler may still add to a cluster, and
the offline check of a cluster launcher config (``cluster.yaml``) against Ray's own schema.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainables.config import ConfigError, check_range

__all__ = [
    "DRIVER_RESOURCE",
    "ClusterResources",
    "TrialResources",
    "address_from_env",
    "amount_text",
    "autoscaler_node_types",
    "check_cluster_config",
    "check_feasible",
    "init_ray",
    "parse_memory_mb",
    "validate_cluster_config",
]

#: Custom resource that acts as a semaphore for trial drivers (one unit per concurrent trial driver).
DRIVER_RESOURCE = "trial_driver"

#: Environment every Ray process gets: reports follow the epochs instead of waiting for the 2 s default poll; the
#: workers of a local Ray run at normal priority (Ray starts them at nice 15: on a shared machine they then lost the
#: CPU to every other process, and trials trained several times slower than the same loop outside Ray).
RAY_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "RAY_TRAIN_V2_ENABLED": "1", "PYTHONUNBUFFERED": "1",
           "RAY_worker_niceness": "0"}


@dataclass(frozen=True)
class TrialResources:
    """What one trial needs: ``workers`` Train workers with ``cpus_per_worker`` CPUs and ``gpus_per_worker`` GPUs,
    and, when ``memory_mb`` is given, that much of Ray's ``memory`` resource each (also the limit each worker's
    :class:`trainables.memory.MemoryGuard` enforces)."""

    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    memory_mb: float | None = None

    def __post_init__(self) -> None:
        check_range("workers", self.workers, low=1)
        check_range("cpus_per_worker", self.cpus_per_worker, low=0.0, low_inclusive=False)
        check_range("gpus_per_worker", self.gpus_per_worker, low=0.0)
        if self.memory_mb is not None:
            check_range("memory_per_worker", self.memory_mb, low=0.0, low_inclusive=False)
        g = self.gpus_per_worker
        if g > 1 and g != int(g) or 0 < g < 1e-4:  # Ray shares a GPU by fractions below 1, at 1e-4 resolution
            raise ConfigError("`gpus_per_worker` must be a whole number of GPUs or a fraction of one GPU "
                              f"(e.g. 0.25: four trials share a GPU), at least 0.0001, but got gpus_per_worker={g:g}")

    def workers_per_node(self, node: dict[str, float]) -> int:
        """How many of this trial's workers fit on a node with resources ``node`` (fractions of a GPU included:
        ``gpus_per_worker=0.25`` puts four on one GPU; 1.0 // 0.1 is 9 in floating point, so round first)."""
        counts = [int(math.floor(round(node.get(k, 0.0) / v, 6))) for k, v in self.worker_bundle.items() if v]
        return min(counts) if counts else 0

    @property
    def worker_bundle(self) -> dict[str, float]:
        bundle = {"CPU": self.cpus_per_worker}
        if self.gpus_per_worker:
            bundle["GPU"] = self.gpus_per_worker
        if self.memory_mb is not None:
            bundle["memory"] = self.memory_mb * 2**20  # Ray counts memory in bytes
        return bundle


#: Ray marks the head node with this resource.
HEAD_MARKER = "node:__internal_head__"
#: Nodes of one autoscaled node type counted at most (``max_workers`` unlimited in KubeRay / autoscaler v2).
MAX_NODES_PER_TYPE = 64


@dataclass(frozen=True)
class ClusterResources:
    """Resources of each alive node: a list of ``{"CPU": .., "GPU": .., ...}`` dicts.

    On an autoscaling cluster ``autoscaling`` is true and ``addable`` lists one resource dict per worker node the
    autoscaler may still start (``None``: an autoscaler runs but its node types could not be read from here).
    """

    nodes: tuple[dict[str, float], ...]
    autoscaling: bool = False
    addable: tuple[dict[str, float], ...] | None = ()

    @classmethod
    def from_ray(cls) -> ClusterResources:
        import ray

        nodes = tuple(dict(n["Resources"]) for n in ray.nodes() if n.get("Alive"))
        types = autoscaler_node_types()
        if types is None:
            return cls(nodes)
        kinds, max_workers = types
        if kinds is None:
            return cls(nodes, autoscaling=True, addable=None)
        addable: list[dict[str, float]] = []
        for resources, count in kinds:
            addable += [dict(resources)] * min(count, MAX_NODES_PER_TYPE)
        return cls(nodes, autoscaling=True, addable=tuple(addable[:max_workers]))

    def at_peak(self) -> ClusterResources:
        """The largest cluster this one can become: the head node(s) plus every worker node the autoscaler may start
        (itself when nothing autoscales, or when the autoscaler's node types are unknown)."""
        if not self.autoscaling or self.addable is None:
            return self
        heads = tuple(n for n in self.nodes if n.get(HEAD_MARKER)) or self.nodes[:1]
        return ClusterResources(heads + self.addable)

    @classmethod
    def local(cls, num_cpus: int | None = None, num_gpus: int | None = None) -> ClusterResources:
        """This machine as a local Ray will see it; ``memory`` as Ray sizes it (available memory less its object
        store, which takes 30 % of it)."""
        return cls(({"CPU": float(num_cpus or os.cpu_count() or 1), "GPU": float(num_gpus or 0),
                     "memory": 0.7 * _available_memory()},))

    def total(self, key: str) -> float:
        return sum(n.get(key, 0.0) for n in self.nodes)

    def describe(self) -> str:
        parts = [
            ", ".join(amount_text(k, v) for k, v in sorted(n.items()) if k in ("CPU", "GPU", "memory"))
            for n in self.nodes
        ]
        return f"{len(self.nodes)} node(s): " + "; ".join(f"[{p}]" for p in parts)


_UNITS = {"": 1.0, "m": 1.0, "mb": 1.0, "mib": 1.0, "g": 1024.0, "gb": 1024.0, "gib": 1024.0}


def parse_memory_mb(text: str | float | None) -> float | None:
    """``--memory-per-worker``: ``1500``, ``1500M``, ``4G``, ``4GiB`` -> MB (binary units, as Ray and ``free -m``)."""
    import re

    if text is None or isinstance(text, (int, float)):
        value = None if text is None else float(text)
    else:
        m = re.fullmatch(r"\s*([0-9_]*\.?[0-9_]*(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
        try:
            value = float(m.group(1)) * _UNITS[m.group(2).lower()] if m else math.nan
        except (KeyError, ValueError):
            value = math.nan
    if value is not None and not 0 < value < math.inf:
        raise ConfigError(f"`memory_per_worker` must be a positive size in MB or with a unit M or G (1500, 1500M, "
                          f"4G), but got memory_per_worker={text!r}")
    return value


def _available_memory() -> float:
    """Bytes of memory available to new processes (``MemAvailable``, as Ray reads it; else the free pages)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def amount_text(key: str, value: float) -> str:
    """``2 CPU``, ``1 GPU``, ``4096 MB memory`` (Ray counts memory in bytes)."""
    return f"{value / 2**20:.0f} MB memory" if key == "memory" else f"{value:g} {key}"


def default_cpus_per_worker(*, workers: int, node_cpus: float, trials: int = 1,
                            concurrency: int | None = None) -> float:
    """CPUs (and so torch threads) per worker when ``--cpus-per-worker`` is not given on one machine: its CPUs shared
    by the trials that run at once, so that trials at once x workers x threads = the node's CPUs (a lone
    ``csweep train`` on 2 cores: 2 threads; a 12-trial sweep there: 2 trials of 1 thread)."""
    at_once = concurrency or max(1, min(trials, int(node_cpus // workers)))
    return float(max(1, int(node_cpus // (at_once * workers))))


def check_feasible(need: TrialResources, cluster: ClusterResources, *, autoscaling: bool = False) -> None:
    """Raise ConfigError unless the cluster can hold one trial: every worker bundle must fit on some node, and the
    cluster as a whole must hold all of them. On an autoscaling cluster the nodes it may still add count too; when
    its node types cannot be read (or ``autoscaling`` is passed) the check is left to the autoscaler."""
    if autoscaling or (cluster.autoscaling and cluster.addable is None):
        return
    cluster = cluster.at_peak()
    bundle = need.worker_bundle
    fits = [n for n in cluster.nodes if all(n.get(k, 0.0) >= v for k, v in bundle.items())]
    asked = f"{need.workers} worker(s) x {{{', '.join(amount_text(k, v) for k, v in bundle.items())}}}"
    if not fits:
        raise ConfigError(
            f"`resources` cannot be met: one trial asks for {asked}, but no node has that much; "
            f"the cluster has {cluster.describe()}"
        )
    capacity = sum(need.workers_per_node(n) for n in fits)
    if capacity < need.workers:
        raise ConfigError(
            f"`workers` cannot be met: one trial asks for {asked}, but the cluster holds only "
            f"{capacity} such worker(s); it has {cluster.describe()}"
        )


def check_reachable(address: str, *, timeout_s: float = 4.0) -> None:
    """Fail fast with ConfigError when a ``host:port`` address has nothing listening (Ray itself retries for
    minutes). ``auto``, ``ray://`` and ``http(s)://`` addresses are left to Ray."""
    import socket

    if address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        conn = socket.create_connection((host, int(port)), timeout=timeout_s)
    except (OSError, ValueError) as e:
        raise ConfigError(f"`address` {address!r} cannot be reached ({e}); is a Ray head running there "
                          "(`ray start --head`, `ray up cluster.yaml`)?") from e
    with conn:  # Ray's GCS speaks gRPC: an HTTP/2 preface gets a reply at once; a host that says nothing would hang
        try:
            conn.sendall(_HTTP2_PREFACE)
            conn.recv(9)
        except TimeoutError as e:
            raise ConfigError(f"`address` {address!r} accepts connections but did not answer within {timeout_s:g} s; "
                              "is it a Ray head's GCS port (6379 by default)?") from e
        except OSError:  # closed or reset: not silent, let Ray report what it is
            return


#: An HTTP/2 client connection preface followed by an empty SETTINGS frame.
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def init_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    driver_slots: int | None = None,
    log_dir: str | None = None,
    log_to_driver: bool = False,
) -> Any:
    """Start a local Ray (``address=None``) or join one. Returns the ``ray`` module.

    A local Ray gets ``driver_slots`` units of the ``trial_driver`` resource (default: its CPU count) and the
    dashboard process, whose State API Train's placement-group cleaner needs (leaked placement groups otherwise hang
    sweeps). Joining a cluster by address matches its authentication (see :func:`_match_auth_mode`).
    ``log_to_driver`` forwards the workers' output (per-epoch progress lines) to this process.
    """
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        return ray
    if address:
        check_reachable(address)
        _match_auth_mode(address)
    kwargs: dict[str, Any] = dict(
        runtime_env={"env_vars": dict(RAY_ENV)},
        log_to_driver=log_to_driver,
        logging_level="ERROR",
        configure_logging=True,
    )
    if address:
        ray.init(address=address, **kwargs)
        return ray
    cpus = num_cpus or os.cpu_count() or 1
    ray.init(
        num_cpus=cpus,
        num_gpus=num_gpus,
        resources={DRIVER_RESOURCE: driver_slots or cpus},
        include_dashboard=True,
        _temp_dir=log_dir,
        **kwargs,
    )
    return ray


def _match_auth_mode(address: str) -> None:
    """Put this process in the authentication mode of the cluster at ``address`` (unless ``RAY_AUTH_MODE`` is set).

    A cluster started with ``ray start`` while ``~/.ray/auth_token`` exists requires token auth (Ray >= 2.59): a
    driver without it fails with InvalidAuthToken. One started without it (``ray.cluster_utils.Cluster``, or
    ``RAY_AUTH_MODE=disabled``) must be joined without it: a token-mode driver connects, but the cluster's calls back
    into the driver carry no token, so every actor it creates dies at once ("all references to the actor were
    removed"). A plain GCS request (~0.05 s) tells them apart.
    """
    if os.environ.get("RAY_AUTH_MODE") or address.startswith("ray://"):
        return
    from ray._raylet import GcsClient
    from ray.exceptions import AuthenticationError

    try:
        import ray._private.services as services

        GcsClient(address=services.canonicalize_bootstrap_address_or_die(address))
    except AuthenticationError:
        from ray._private.authentication.authentication_token_setup import _enable_token_auth

        _enable_token_auth()  # sets RAY_AUTH_MODE=token and reloads Ray's config in this process
    except Exception:  # unreachable or malformed: ray.init reports it
        return


def address_from_env() -> str | None:
    """The cluster address a ``csweep`` command joins by default: ``$RAY_ADDRESS`` (``ray job submit`` sets it to the
    cluster's GCS address for the entrypoint), unless it is a dashboard URL (``http://...``, meant for ``ray job``)."""
    address = os.environ.get("RAY_ADDRESS", "").strip()
    if not address or address.startswith(("http://", "https://")):
        return None
    return address


# ---------------------------------------------------------------------------------------------------------------------
# What an autoscaler may add


def autoscaler_node_types() -> tuple[list[tuple[dict[str, float], int]] | None, int] | None:
    """The worker node types an autoscaler of the connected cluster may start: ``([(resources, max_workers), ...],
    global_max_workers)``; ``(None, 0)`` when an autoscaler runs but its config cannot be read from this process;
    ``None`` when nothing autoscales. Ray must be initialised.

    Sources, first found wins: the cluster config in the GCS (KubeRay, autoscaler v2), then the config file of the
    autoscaler v1 monitor (``ray up`` / ``ray start --autoscaling-config``; readable from a driver on the head node,
    which is where ``ray job submit`` runs it).
    """
    import ray._private.state
    from ray.experimental.internal_kv import _internal_kv_get

    try:
        config = ray._private.state.state.get_cluster_config()
    except Exception:
        config = None
    if config is not None and config.node_group_configs:
        kinds = [
            ({k: float(v) for k, v in g.resources.items()}, MAX_NODES_PER_TYPE if g.max_count < 0 else int(g.max_count))
            for g in config.node_group_configs
            if g.max_count != 0 and g.resources
        ]
        if kinds:
            return kinds, sum(n for _, n in kinds)
    try:
        raw = _internal_kv_get("__autoscaling_status")  # written by the v1 monitor after every update
        status = json.loads(raw) if raw else None
    except Exception:
        status = None
    if not status or not status.get("autoscaler_report"):
        return None
    args = _monitor_args(status.get("monitor_pid"))
    if args is None:  # not on the head node: judge by the node types the monitor reports
        report = status["autoscaler_report"]
        seen = set((report.get("node_type_mapping") or {}).values()) | set(report.get("active_nodes") or {})
        return None if all(t.startswith("node_") for t in seen) else (None, 0)  # node_<id>: read-only, no autoscaler
    path = next((a.split("=", 1)[1] for a in args if a.startswith("--autoscaling-config=")), None)
    if path is None and "--autoscaling-config" in args[:-1]:
        path = args[args.index("--autoscaling-config") + 1]
    if path is None:  # a monitor without a config watches a fixed set of nodes
        return None
    try:
        import yaml

        cfg = yaml.safe_load(Path(os.path.expanduser(path)).read_text())
    except (OSError, ValueError):
        return None, 0
    head = cfg.get("head_node_type")
    kinds = [
        ({k: float(v) for k, v in (t.get("resources") or {}).items()}, int(t.get("max_workers", 0)))
        for name, t in (cfg.get("available_node_types") or {}).items()
        if name != head
    ]
    kinds = [(r, n) for r, n in kinds if r and n > 0]
    if not kinds:
        return None
    return kinds, int(cfg.get("max_workers", sum(n for _, n in kinds)))


def _monitor_args(pid: Any) -> list[str] | None:
    """The command line of Ray's autoscaler monitor process ``pid`` if it runs on this node."""
    try:
        args = Path(f"/proc/{int(pid)}/cmdline").read_bytes().decode().split("\0")
    except (OSError, TypeError, ValueError):
        return None
    return args if any(a.endswith("monitor.py") for a in args) else None


# ---------------------------------------------------------------------------------------------------------------------
# Cluster launcher config (cluster.yaml)


def validate_cluster_config(config: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """Check a Ray cluster launcher config offline, as ``ray up`` would before touching a cloud: fill in the provider's
    defaults (``prepare_config``) and validate against ``ray/autoscaler/ray-schema.json`` (``validate_config``).
    Returns the prepared config; raises ConfigError naming the problem.

    The two functions are private Ray API (``ray.autoscaler._private.util``); this is the one place that uses them.
    """
    import copy

    import yaml

    if isinstance(config, Mapping):
        raw = copy.deepcopy(dict(config))
    else:
        try:
            raw = yaml.safe_load(Path(config).read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"`cluster_config` {str(config)!r} cannot be read: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"`cluster_config` must be a mapping, but got {type(raw).__name__}")
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        prepared = prepare_config(raw)
        validate_config(prepared)
    except jsonschema.ValidationError as e:
        where = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        raise ConfigError(f"`cluster_config` field {where}: {e.message}") from e
    except (ValueError, KeyError, AssertionError, RuntimeError) as e:
        raise ConfigError(f"`cluster_config`: {e}") from e
    return prepared


def check_cluster_config(config: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """:func:`validate_cluster_config` plus what this project relies on: the head node type carries the
    ``trial_driver`` resource (so trial drivers run there) and no GPU, every worker type may scale to zero, and at
    least one worker type has GPUs. Returns the prepared config; raises ConfigError."""
    cfg = validate_cluster_config(config)
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    resources = head.get("resources") or {}
    if resources.get(DRIVER_RESOURCE, 0) < 1:
        raise ConfigError(
            f"`cluster_config` head node type {cfg['head_node_type']!r} must carry the resource "
            f"{DRIVER_RESOURCE!r} (resources: {{{DRIVER_RESOURCE!r}: N}}): trial drivers run there"
        )
    if resources.get("GPU", 0):
        raise ConfigError(f"`cluster_config` head node type {cfg['head_node_type']!r} must advertise GPU: 0")
    workers = {name: t for name, t in types.items() if name != cfg["head_node_type"]}
    if not any((t.get("resources") or {}).get("GPU", 0) > 0 for t in workers.values()):
        raise ConfigError("`cluster_config` needs at least one worker node type with GPUs (resources: {GPU: N})")
    for name, t in workers.items():
        if (t.get("resources") or {}).get(DRIVER_RESOURCE):
            raise ConfigError(f"`cluster_config` worker node type {name!r} must not carry {DRIVER_RESOURCE!r}")
        if t.get("min_workers", 0) != 0:
            raise ConfigError(f"`cluster_config` worker node type {name!r}: min_workers must be 0 (scale to zero)")
    return cfg
