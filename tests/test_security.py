"""Safe defaults: TLS clusters refuse clients without credentials, and the embedded
cluster listens on loopback only."""

from __future__ import annotations

import gc
import glob
import ipaddress
import os
import sys
from pathlib import Path

import dask.config
import pytest
from _processes import WORKFLOW
from distributed import Client, LocalCluster
from distributed.security import Security

import dagflow
from dagflow.runtime.cluster import cluster_from_profile, connect
from dagflow.runtime.profiles import load_profile

CONFIGS = Path(__file__).resolve().parents[1] / "cluster-configs"


@pytest.fixture
def workflow_file(tmp_path) -> Path:
    path = tmp_path / "thumbs.yaml"
    path.write_text(WORKFLOW)
    return path


def assert_refused(address: str, **client_kwargs) -> None:
    with pytest.raises((OSError, TypeError)), Client(address, timeout=5, **client_kwargs):
        pass
    # the refused client is cyclic garbage (its traceback holds it): finalise it here.
    # Collected later, in whichever thread happened to allocate, its __del__ could run in
    # the next client's event-loop thread as it starts, stop that loop, and that client
    # then fails to start (distributed's LoopRunner asserts its loop ran within 10 s)
    gc.collect()


def assert_strangers_refused(address: str) -> None:
    assert address.startswith("tls://127.0.0.1:")
    assert_refused(address)  # no credentials at all
    assert_refused(address, security=Security.temporary())  # a certificate of another CA
    assert_refused(address.replace("tls://", "tcp://"))  # plain TCP


@pytest.mark.slow
def test_workflow_on_a_tls_cluster_and_strangers_are_refused(tmp_path, workflow_file, photos):
    security = Security.temporary()
    with LocalCluster(n_workers=2, threads_per_worker=1, protocol="tls://", host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", security=security) as cluster:
        result = dagflow.run(workflow_file, photos, tmp_path / "out", cluster=cluster,
                             progress=False)
        assert (result.succeeded, result.failed) == (12, 0)
        with Client(cluster.scheduler_address, security=security, timeout=10) as client:
            assert all(a.startswith("tls://127.0.0.1:")
                       for a in client.nthreads())
        assert_strangers_refused(cluster.scheduler_address)


@pytest.mark.slow
def test_tls_profile(tmp_path, workflow_file, photos):
    profile = load_profile("local-tls")
    assert profile.options["security"] == "temporary"
    with dask.config.set({"dagflow.cluster.n-workers": 1,
                          "dagflow.cluster.threads-per-worker": 2}):
        with cluster_from_profile(profile, dashboard_address="127.0.0.1:0") as cluster:
            assert cluster.security.require_encryption
            assert_strangers_refused(cluster.scheduler_address)
        # the same profile by file, through `dagflow.run(cluster=...)`, but with its
        # dashboard on a free port
        by_file = tmp_path / "local-tls.yaml"
        by_file.write_text((CONFIGS / "local-tls.yaml").read_text()
                           .replace("127.0.0.1:8787", "127.0.0.1:0"))
        result = dagflow.run(workflow_file, photos, tmp_path / "out", cluster=str(by_file),
                             progress=False)
    assert result.succeeded == 12


# -- listening sockets ------------------------------------------------------------------


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.split("/")[2]))
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        out.add(p)
        todo.extend(children.get(p, ()))
    return out


def _socket_inodes(pids: set[int]) -> set[str]:
    inodes = set()
    for pid in pids:
        for fd in glob.glob(f"/proc/{pid}/fd/*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def _parse_address(hex_address: str) -> tuple[str, int]:
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        ip = ipaddress.IPv4Address(raw[::-1])
    else:  # /proc/net/tcp6: four little-endian 32-bit words
        ip = ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
    return str(ip), int(port, 16)


def listening_sockets(pids: set[int]) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state owned by ``pids``."""
    inodes = _socket_inodes(pids)
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                out.add(_parse_address(fields[1]))
    return out


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_embedded_cluster_listens_on_loopback_only():
    before = listening_sockets(_descendants(os.getpid()))
    with connect(local_options={"n_workers": 2, "threads_per_worker": 1}) as client:
        sockets = listening_sockets(_descendants(os.getpid())) - before
        info = client.scheduler_info(n_workers=-1)
        expected = {client.scheduler.address, *info["workers"]}
        expected |= {w["nanny"] for w in info["workers"].values()}
        dashboard = client.dashboard_link
    ports = {port for _, port in sockets}
    for address in expected:  # scheduler, workers, nannies
        assert address.startswith("tcp://127.0.0.1:"), address
        assert int(address.rsplit(":", 1)[1]) in ports
    assert dashboard.startswith("http://127.0.0.1:")
    assert int(dashboard.split(":")[2].split("/")[0]) in ports
    # scheduler, its dashboard, 2 nannies, 2 workers and their dashboards at least
    assert len(sockets) >= 8, sockets
    assert {host for host, _ in sockets} <= {"127.0.0.1", "::1"}, sockets
