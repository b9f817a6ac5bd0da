"""Beyond one machine, on this one host: cluster.yaml against Ray's own validator; a sweep submitted as a Ray job
(`ray job submit --working-dir .`) to a 3-node cluster that loses a worker node mid-sweep; an autoscaled sweep on
Ray's fake multi-node provider with its results in s3:// (a local moto server); joining a token-auth cluster.

Every Ray process a test starts carries a private RAY_TMPDIR, so the test stops exactly those processes (never
`ray stop`, which would kill every Ray on the host).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, kill_processes_with_env

from search.cluster import DRIVER_RESOURCE, check_cluster_config, validate_cluster_config
from trainables.config import ConfigError

TINY_SWEEP = ["--set", "width=0.125", "--set", "probe_epochs=5", "--set", "batch_size=128"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _results(exp: Path) -> dict[str, list[dict]]:
    """Each Tune trial's reported results (one dict per epoch), by trial directory name."""
    out = {}
    for d in sorted(p for p in exp.glob("trial_driver_*") if p.is_dir()):
        path = d / "result.json"
        lines = path.read_text().splitlines() if path.exists() else []
        out[d.name] = [json.loads(line) for line in lines if line.strip()]
    return out


@contextlib.contextmanager
def _private_ray(monkeypatch, tag: str):
    """A private RAY_TMPDIR for every Ray process started inside; on exit, whatever is left of them is killed (SIGKILL:
    a GCS server outlived SIGTERM here), and the directory removed unless the test failed (its logs are in there)."""
    ray_tmp = f"/tmp/csw{tag}{os.getpid()}"  # short: Ray's socket paths live below it
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    try:
        yield ray_tmp
    except BaseException:
        kill_processes_with_env("RAY_TMPDIR", ray_tmp)
        raise
    kill_processes_with_env("RAY_TMPDIR", ray_tmp)
    shutil.rmtree(ray_tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------------
# cluster.yaml


def test_cluster_yaml_passes_rays_validator_and_pins_drivers_to_a_cpu_head():
    cfg = check_cluster_config(ROOT / "cluster.yaml")
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"][DRIVER_RESOURCE] >= 1
    assert head["resources"].get("GPU", 0) == 0 and head["resources"].get("CPU", 0) == 0
    workers = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
    gpus = sorted(v["resources"]["GPU"] for v in workers.values())
    assert 1 in gpus and 8 in gpus, gpus
    assert all(v["min_workers"] == 0 and v["max_workers"] >= 1 for v in workers.values())
    assert all(DRIVER_RESOURCE not in v["resources"] for v in workers.values())
    assert cfg["idle_timeout_minutes"] > 0
    assert any("pip install" in c and "contrastive-sweeps" in c for c in cfg["setup_commands"])
    assert "~/contrastive-sweeps" in cfg["file_mounts"]


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda c: c.update(idle_timeout_minutes="soon"), "idle_timeout_minutes"),
        (lambda c: c["available_node_types"]["gpu_1x"].update(max_wrokers=3), "max_wrokers"),
        (lambda c: c.update(head_node_type="nope"), "head_node_type"),
        (lambda c: c["available_node_types"]["head"]["resources"].pop(DRIVER_RESOURCE), DRIVER_RESOURCE),
        (lambda c: c["available_node_types"]["gpu_1x"].update(min_workers=2), "min_workers"),
    ],
)
def test_broken_cluster_yaml_is_one_clear_error(edit, fragment):
    import yaml

    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_cluster_config(cfg)  # the unedited file passes
    edit(cfg)
    with pytest.raises(ConfigError, match=fragment):
        check_cluster_config(cfg)


# ---------------------------------------------------------------------------------------------------------------------
# What an autoscaler may add: feasibility and concurrency (no Ray needed)

HEAD = {"CPU": 0.0, DRIVER_RESOURCE: 16.0, "node:__internal_head__": 1.0}


def _sweep(**kw):
    from search.spec import SweepConfig

    return SweepConfig(name="x", space="supcon", storage_path="/tmp/x", **kw)


def test_autoscaling_cluster_counts_the_nodes_it_may_add():
    from search.cluster import ClusterResources, TrialResources, check_feasible
    from search.sweep import capacity

    gpu1, gpu8 = {"CPU": 8.0, "GPU": 1.0}, {"CPU": 96.0, "GPU": 8.0}
    fresh = ClusterResources((HEAD,), autoscaling=True, addable=(gpu1,) * 8 + (gpu8,) * 2)
    check_feasible(TrialResources(8, 8, 1), fresh)  # only the 8-GPU type holds it, and none is up yet
    one_gpu = dict(gpus_per_worker=1, cpus_per_worker=8)
    assert capacity(_sweep(**one_gpu), fresh) == 24  # 8 + 2 x 8 GPUs (inline trials hold no driver slot)
    assert capacity(_sweep(**one_gpu, executor="train"), fresh) == 16  # ... but Train drivers do: 16 on the head
    # 8-worker trials: one per gpu_8x node, one more across the eight gpu_1x nodes (DDP over nodes)
    assert capacity(_sweep(workers=8, gpus_per_worker=1, cpus_per_worker=8), fresh) == 3
    with pytest.raises(ConfigError, match="no node has that much"):
        check_feasible(TrialResources(1, 1, 16), fresh)
    # one gpu_1x node is up already: counted once, not on top of the 8 the autoscaler may start
    up = ClusterResources((HEAD, gpu1), autoscaling=True, addable=fresh.addable)
    assert capacity(_sweep(**one_gpu), up) == 24
    # an autoscaler whose node types cannot be read: no check, one trial per driver slot
    unknown = ClusterResources((HEAD,), autoscaling=True, addable=None)
    check_feasible(TrialResources(1, 1, 16), unknown)
    assert capacity(_sweep(gpus_per_worker=1), unknown) == 16
    # no autoscaler: only what is up
    static = ClusterResources((HEAD, gpu1))
    assert capacity(_sweep(**one_gpu), static) == 1
    with pytest.raises(ConfigError, match="`workers` cannot be met"):
        check_feasible(TrialResources(8, 8, 1), static)


@pytest.mark.parametrize(("gpus", "trials"), [(1.0, 1), (0.5, 2), (0.25, 4), (0.125, 8), (0.1, 10), (1 / 3, 3)])
def test_fractional_gpus_pack_trials_onto_one_gpu(gpus, trials):
    from search.cluster import ClusterResources, TrialResources, check_feasible
    from search.sweep import capacity

    node = ClusterResources(({"CPU": 16.0, "GPU": 1.0, DRIVER_RESOURCE: 16.0},))
    check_feasible(TrialResources(1, 1, gpus), node)
    assert capacity(_sweep(gpus_per_worker=gpus, cpus_per_worker=1), node) == trials  # 1.0 // 0.1 is 9.0 in floats
    assert capacity(_sweep(gpus_per_worker=gpus, cpus_per_worker=4), node) == min(trials, 4)  # CPUs bind first
    two_gpus = ClusterResources(({"CPU": 64.0, "GPU": 2.0, DRIVER_RESOURCE: 64.0},))
    assert capacity(_sweep(workers=2, gpus_per_worker=gpus, cpus_per_worker=1), two_gpus) == trials  # DDP trials


@pytest.mark.parametrize("gpus", [1.5, 2.25, 0.00001])
def test_gpus_per_worker_is_whole_or_a_fraction_of_one(gpus):
    from search.cluster import TrialResources

    with pytest.raises(ConfigError, match="`gpus_per_worker` must be a whole number of GPUs or a fraction"):
        TrialResources(1, 1, gpus)
    TrialResources(1, 1, 2.0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("10.0.0.5:6379", "10.0.0.5:6379"), ("http://127.0.0.1:8265", None), ("", None), (None, None)],
)
def test_address_defaults_to_ray_address_unless_it_is_a_dashboard_url(value, expected, monkeypatch):
    from search.cli import build_parser
    from search.cluster import address_from_env

    if value is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", value)
    assert address_from_env() == expected
    assert build_parser().parse_args(["run", "supcon"]).address == expected
    assert build_parser().parse_args(["run", "supcon", "--address", "1.2.3.4:1"]).address == "1.2.3.4:1"


@pytest.mark.slow
def test_joining_a_token_auth_cluster_switches_the_driver_to_token_mode(tmp_path, monkeypatch):
    """A `ray start` cluster with token auth is joined in token mode without RAY_AUTH_MODE being set (and the
    multi-node test below joins one without auth: both directions are detected, not assumed)."""
    import secrets

    with _private_ray(monkeypatch, "tk"):
        port = _free_port()
        token = secrets.token_hex(16)
        env = {**os.environ, "RAY_AUTH_TOKEN": token}
        subprocess.run(
            [
                str(Path(sys.executable).parent / "ray"),
                "start",
                "--head",
                f"--port={port}",
                "--num-cpus=1",
                "--include-dashboard=false",
                f"--ray-client-server-port={_free_port()}",
                f"--dashboard-agent-listen-port={_free_port()}",
                "--disable-usage-stats",
            ],
            env={**env, "RAY_AUTH_MODE": "token"},
            check=True,
            capture_output=True,
            timeout=120,
        )
        code = (
            "import os, sys; from search.cluster import init_ray; ray = init_ray(sys.argv[1]); "
            "print(os.environ.get('RAY_AUTH_MODE'), ray.get(ray.remote(lambda: 41 + 1).remote()))"
        )
        env.pop("RAY_AUTH_MODE", None)
        proc = subprocess.run(
            [sys.executable, "-c", code, f"127.0.0.1:{port}"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.split()[-2:] == ["token", "42"], proc.stdout


# ---------------------------------------------------------------------------------------------------------------------
# Multi-node: a head that holds only the trial drivers, two 1-CPU worker nodes, one of which dies mid-sweep


def _actors(dashboard: str) -> list[dict]:
    """Every actor the cluster has seen (dead ones too) with its class and node, from Ray's State API."""
    from ray.util.state import list_actors

    return [
        dataclasses.asdict(a)
        for a in list_actors(address=dashboard, detail=True, limit=10_000, raise_on_missing_output=False)
    ]


def _train_checkpoints(runs: Path) -> dict[str, dict]:
    """The metrics of each Ray Train run's latest checkpoint, as its controller records them in the storage path
    (written as each epoch is reported; Tune's own result files reach the storage path only now and then)."""
    out = {}
    for path in runs.glob("train_*/checkpoint_manager_snapshot.json"):
        try:
            snapshot = json.loads(path.read_text())
        except (OSError, ValueError):  # being written
            continue
        if snapshot.get("latest_checkpoint_result"):
            out[path.parent.name] = snapshot["latest_checkpoint_result"]["metrics"]
    return out


@pytest.mark.slow
def test_multi_node_sweep_keeps_drivers_on_head_and_survives_losing_a_node(tmp_path, monkeypatch):
    """`ray job submit --working-dir . -- csweep run ...` on a 3-node cluster (the head carries the trial_driver slots
    and no CPU): Train workers spread over both worker nodes while every trial driver and Train controller stays on
    the head; the node of a running trial is removed after another trial finished there, and the sweep still finishes
    every trial, resuming the interrupted one from its checkpoint and rerunning nothing that had finished."""
    from ray.cluster_utils import Cluster

    with _private_ray(monkeypatch, "mn") as ray_tmp:
        # the job's entrypoint finds `csweep` on the head's PATH, as after `pip install` on a cluster node
        monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        t0 = time.time()
        dash_port = _free_port()
        cluster = Cluster(
            initialize_head=True,
            head_node_args=dict(
                num_cpus=0,
                resources={DRIVER_RESOURCE: 2},
                include_dashboard=True,
                dashboard_port=dash_port,
                # a dead node is noticed in ~2 s instead of ~15 s
                _system_config={
                    "health_check_initial_delay_ms": 0,
                    "health_check_period_ms": 500,
                    "health_check_failure_threshold": 3,
                },
            ),
        )
        try:
            # each worker node gets its own temp dir, as on separate machines (where the job's working dir is
            # unpacked once per node; on a shared one, each unpacking would pull it from under the others)
            workers = [cluster.add_node(num_cpus=1, temp_dir=f"{ray_tmp}/n{i}") for i in range(2)]
            cluster.wait_for_nodes()
            head_id = cluster.head_node.node_id
            args = [
                str(Path(sys.executable).parent / "ray"),
                "job",
                "submit",
                "--address",
                f"http://127.0.0.1:{dash_port}",
                "--working-dir",
                str(ROOT),
                "--",
                "csweep",
                "run",
                "quickstart",
                "--executor",
                "train",
                "--trials",
                "3",
                "--scheduler",
                "fifo",
                "--max-failures",
                "2",
                "--name",
                "mn",
                "--storage-path",
                str(tmp_path),
                "--set",
                "epochs=6",  # the victim is caught after epoch 1: five epochs to go while its node is removed
                *TINY_SWEEP,
            ]
            t1 = time.time()
            proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            exp = tmp_path / "mn"
            removed, victim, finished_before = None, None, {}
            deadline = time.time() + 300
            while proc.poll() is None and removed is None and time.time() < deadline:
                time.sleep(0.2)
                latest = _train_checkpoints(exp / "train_runs")
                finished = [k for k, m in latest.items() if m.get("finished")]
                started = [k for k, m in latest.items() if not m.get("finished") and m["epoch"] == 1]
                if finished and started:  # one trial done, another one epoch in (five epochs and its probe to go):
                    victim = started[0]  # lose the latter's node (where the finished one may have run too)
                    removed = latest[victim]["node_id"]
                    cluster.remove_node(next(n for n in workers if n.node_id == removed), allow_graceful=False)
                    t_removed = time.time() - t1
                    finished_before = {k: latest[k] for k in finished}
            try:
                out, _ = proc.communicate(timeout=max(1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            assert proc.returncode == 0, out[-6000:]
            # the job's working dir (this repository) was unpacked on the head and on each worker node: the
            # top-level packages import from it everywhere (the packages come first on the workers' PYTHONPATH)
            for d in (f"{ray_tmp}/ray", *(f"{ray_tmp}/n{i}" for i in range(2))):
                assert list(Path(d).glob("session_*/runtime_resources/working_dir_files/_ray_pkg_*/search/cli.py")), d
            assert removed, "no trial was caught running after another had finished"
            print(
                f"\nmulti-node: cluster up {t1 - t0:.1f}s, node removed at {t_removed:.1f}s, "
                f"sweep {time.time() - t1:.1f}s",
                file=sys.stderr,
            )

            results = _results(exp)
            assert len(results) == 3
            for name, rs in results.items():
                epochs = [r["epoch"] for r in rs]
                assert rs[-1].get("finished") and epochs[-1] == 6, (name, epochs)
                assert epochs == sorted(set(epochs)), f"{name} repeated epochs {epochs}: not resumed from checkpoint"
            latest = _train_checkpoints(exp / "train_runs")
            for name, metrics in finished_before.items():  # finished trials were kept, not rerun
                assert latest[name] == metrics, name
            assert latest[victim]["finished"] and latest[victim]["node_id"] != removed, latest[victim]
            resumed = [
                r["epoch"]
                for name, rs in results.items()
                if name.startswith(f"trial_driver_{victim[6:]}_")
                for r in rs
                if r["node_id"] != removed
            ]
            assert resumed and min(resumed) > 1, f"the interrupted trial restarted from scratch: {resumed}"
            used = {r["node_id"] for rs in results.values() for r in rs}
            assert used == {n.node_id for n in workers}, "Train workers did not use both worker nodes"

            actors = _actors(f"http://127.0.0.1:{dash_port}")
            where = {}
            for a in actors:
                where.setdefault(a["class_name"], set()).add(a["node_id"])
            assert where["ImplicitFunc"] == {head_id}, "a Tune trial driver ran off the head"
            assert where["TrainController"] == {head_id}, "a Train controller ran off the head"
            assert head_id not in where["RayTrainWorker"]
            assert len([a for a in actors if a["class_name"] == "ImplicitFunc"]) == 4  # 3 trials + 1 retry
        finally:
            cluster.shutdown()


# ---------------------------------------------------------------------------------------------------------------------
# Autoscaling: Ray's fake multi-node provider, a sweep submitted as a Ray job, results in s3:// (moto)

#: Node id the fake provider gives the head (ray.autoscaler._private.fake_multi_node.node_provider.FAKE_HEAD_NODE_ID).
FAKE_HEAD_ID = "f" * 51 + "00000"


def _fake_autoscaling_config(gcs_address: str, *, worker_cpus: int, max_workers: int) -> dict:
    """A cluster launcher config for Ray's fake multi-node provider: worker nodes are extra raylets on this host,
    started and stopped by the autoscaler (the head's monitor process). Idle workers go after 6 s."""
    return {
        "cluster_name": "csweep-fake",
        "max_workers": max_workers,
        "idle_timeout_minutes": 0.1,
        "upscaling_speed": 1.0,
        "provider": {
            "type": "fake_multinode",
            "gcs_address": gcs_address,
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "head_node_type": "ray.head.default",
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0, DRIVER_RESOURCE: 2}, "node_config": {}, "max_workers": 0},
            "cpu_worker": {
                "resources": {"CPU": worker_cpus},
                "node_config": {},
                "min_workers": 0,
                "max_workers": max_workers,
            },
        },
        "auth": {},
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


@contextlib.contextmanager
def _moto_s3(bucket: str):
    """An S3 server (moto) on a free local port with one bucket; yields the environment that points clients at it."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = _free_port()
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }
    try:
        boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        ).create_bucket(Bucket=bucket)
        yield env
    finally:
        server.stop()


def _s3_results(env: dict, bucket: str, prefix: str) -> dict[str, list[dict]]:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for o in page.get("Contents", [])
    ]
    out = {}
    for key in keys:
        parts = key.split("/")
        if parts[-1] == "result.json" and parts[-2].startswith("trial_driver_"):
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
            out[parts[-2]] = [json.loads(line) for line in body.splitlines() if line.strip()]
    return out, keys


def _alive_workers(dashboard: str) -> list[str]:
    from ray.util.state import list_nodes

    return [
        n.node_id
        for n in list_nodes(address=dashboard, limit=1000, raise_on_missing_output=False)
        if n.state == "ALIVE" and n.node_id != FAKE_HEAD_ID
    ]


@pytest.mark.slow
def test_autoscaled_sweep_scales_worker_nodes_up_and_down_with_s3_storage(tmp_path, monkeypatch):
    """`csweep run --address` on an autoscaling cluster whose head holds no CPU: the sweep's trials need a worker node
    type with 0 nodes at start, the sweep sizes its concurrency from that type's max_workers, the autoscaler adds the
    nodes, the trials run there and write results and checkpoints to s3:// (a moto server), and once idle the nodes
    are removed again.

    (No --working-dir here: the fake provider's nodes share the head's session directory, and each node unpacking the
    job's working dir there would delete it under the others' feet; the multi-node test covers job submission.)"""
    import ray._private.services as services

    bucket = "csweep-results"
    with _private_ray(monkeypatch, "as"), _moto_s3(bucket) as s3_env:
        t0 = time.time()
        port, dash_port = _free_port(), _free_port()
        gcs = f"{services.get_node_ip_address()}:{port}"
        config = tmp_path / "autoscaling.yaml"
        config.write_text(json.dumps(_fake_autoscaling_config(gcs, worker_cpus=1, max_workers=2)))
        env = {
            **os.environ,
            **s3_env,
            "RAY_FAKE_CLUSTER": "1",
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",
            "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_ID,
            "RAY_CLOUD_INSTANCE_ID": FAKE_HEAD_ID,
            "RAY_AUTH_MODE": "disabled",  # this process and the CLI talk to it without a token
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        ray_bin = str(Path(sys.executable).parent / "ray")
        subprocess.run(
            [
                ray_bin,
                "start",
                "--head",
                f"--port={port}",
                f"--dashboard-port={dash_port}",
                f"--ray-client-server-port={_free_port()}",
                f"--dashboard-agent-listen-port={_free_port()}",
                "--num-cpus=0",
                f"--resources={json.dumps({DRIVER_RESOURCE: 2})}",
                f"--autoscaling-config={config}",
                "--disable-usage-stats",
            ],
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )
        dashboard = f"http://127.0.0.1:{dash_port}"
        assert _alive_workers(dashboard) == []
        t1 = time.time()
        job = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "search.cli",
                "run",
                "quickstart",
                "--address",
                gcs,
                "--trials",
                "3",
                "--scheduler",
                "fifo",
                "--name",
                "as",
                "--storage-path",
                f"s3://{bucket}/sweeps",
                "--study-storage",
                f"sqlite:///{tmp_path}/study.db",
                "--set",
                "epochs=2",
                *TINY_SWEEP,
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        seen: set[str] = set()
        first_up = None
        while job.poll() is None and time.time() - t1 < 240:
            alive = _alive_workers(dashboard)
            if alive and first_up is None:
                first_up = time.time() - t1
            seen.update(alive)
            time.sleep(0.5)
        if job.poll() is None:
            job.kill()
        out = job.communicate()[0]
        t_done = time.time()
        assert job.returncode == 0, out[-6000:]
        assert "2 at a time" in out, "concurrency not sized from the autoscaler's node types"
        while _alive_workers(dashboard) and time.time() - t_done < 60:
            time.sleep(0.5)
        t_down = time.time() - t_done
        assert _alive_workers(dashboard) == [], "idle worker nodes were not removed"
        print(
            f"\nautoscaling: head up {t1 - t0:.1f}s, first worker node {first_up:.1f}s after submit, "
            f"job {t_done - t1:.1f}s, {len(seen)} node(s), all removed {t_down:.1f}s after the job",
            file=sys.stderr,
        )

        status = subprocess.run(
            [sys.executable, "-m", "search.cli", "status", "as", "--storage-path", f"s3://{bucket}/sweeps"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert status.returncode == 0 and "3 of 3 trial(s)" in status.stdout, status.stderr[-3000:]

        results, keys = _s3_results(s3_env, bucket, "sweeps/as/")
        assert len(results) == 3 and any(k.endswith("/sweep.json") for k in keys)
        assert any("/checkpoint_" in k for k in keys), "no checkpoint reached s3"
        for name, rs in results.items():
            assert rs[-1].get("finished") and rs[-1]["epoch"] == 2, name
        used = {r["node_id"] for rs in results.values() for r in rs}
        assert used <= seen and FAKE_HEAD_ID not in used, (used, seen)


@pytest.mark.parametrize(("workers", "cpus", "trials", "concurrency", "expected"), [
    (1, 2, 1, None, 2.0),  # a lone `csweep train` uses both cores
    (2, 2, 1, None, 1.0),  # two DDP workers: one each
    (1, 2, 12, None, 1.0),  # a 12-trial sweep: two trials of one thread
    (1, 16, 4, None, 4.0),  # 4 trials on 16 cores: four threads each
    (1, 16, 4, 2, 8.0),  # --concurrency 2: eight each
    (4, 16, 100, None, 1.0),
])
def test_default_threads_share_the_machine_among_the_trials_at_once(workers, cpus, trials, concurrency, expected):
    from search.cluster import default_cpus_per_worker

    got = default_cpus_per_worker(workers=workers, node_cpus=cpus, trials=trials, concurrency=concurrency)
    assert got == expected
    at_once = concurrency or min(trials, cpus // workers)
    assert at_once * workers * got <= cpus


@pytest.mark.slow
def test_local_ray_workers_run_at_the_drivers_priority():
    """Ray starts its workers at nice 15; csweep's local Ray runs them at the driver's priority, so on a shared
    machine trials are not starved by every other process (RAY_ENV, BENCHMARKS.md issue 16)."""
    code = (
        "import os; from search.cluster import init_ray; ray = init_ray(num_cpus=1); "
        "print('nice', os.nice(0), ray.get(ray.remote(lambda: os.nice(0)).remote())); ray.shutdown()"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_worker_niceness")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    driver, worker = proc.stdout.split("nice", 1)[1].split()[:2]
    assert worker == driver, proc.stdout
