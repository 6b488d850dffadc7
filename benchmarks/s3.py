"""The thumbnail workload from and to object storage, against the same run on local files.

auto-orient -> 512 px long side -> Gaussian 1.5 -> JPEG 85 over generated 2048x1536
JPEGs (:func:`benchmarks.data.photo_corpus`), run by ``dagflow.run`` on one warm
embedded ``LocalCluster`` twice per repetition, in turn:

=========  ==================================================================
``local``  inputs and output on the local disk (the paths, as ``thumbnails``)
``s3``     inputs listed from ``s3://<bucket>/in/``, outputs and the run's
           state written under a fresh ``s3://<bucket>/out/<n>/``
``s3-hf``  the same with ``dagflow.storage.whole-read-bytes`` 0 on the workers
           (``s3-header-first``: each input's header block, then the rest)
=========  ==================================================================

The S3 API is moto's standalone server, in a process of its own on a free port of
127.0.0.1 (so that it does not take the driver's GIL); on a machine with few cores it
shares them with the workers, which a real store does not: its CPU time is measured
and printed apart. After the timed repetitions one more ``s3`` run goes through a
recording proxy (``tests/_s3.py``'s, in the server's process) and the tables give the
requests and bytes per image by kind (listing, HEAD, ranged GET, whole GET, PUT,
multipart) and by what they touched (inputs, outputs, the run's state), and the TCP
connections the run opened: where the extra time per image goes.

Run it with ``python -m benchmarks s3`` (``--images``, ``--repeat``, ``--quick``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from benchmarks.common import (
    DATA,
    HERE,
    fmt_ratio,
    interleaved,
    load_average,
    print_table,
    save_results,
)
from benchmarks.data import corpus_files, photo_corpus

__all__ = ["classify", "run"]

BUCKET = "dagflow-bench"
#: Credentials of the local server (moto accepts any): set in the driver's environment
#: before the cluster starts, so the workers find them where a user's would be.
ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "benchmark",
    "AWS_SECRET_ACCESS_KEY": "benchmark-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
OUT = DATA / "out" / "s3-local"


class Server:
    """moto's S3 server and the recording proxy, in a child process.

    The child prints one JSON line with both endpoints, then answers every ``stats``
    line on its stdin with one JSON line: the requests the proxy saw since the last one.
    """

    def __init__(self) -> None:
        env = {**os.environ, **ENVIRONMENT}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.s3", "--serve"], cwd=HERE.parent, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        hello = json.loads(self._line())
        self.endpoint: str = hello["endpoint"]
        self.proxy: str = hello["proxy"]

    def _line(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the S3 server process ended")
        return line

    def stats(self) -> dict[str, Any]:
        """The requests the proxy recorded since the last call (and forget them)."""
        assert self.process.stdin is not None
        self.process.stdin.write("stats\n")
        self.process.stdin.flush()
        return json.loads(self._line())

    def cpu(self) -> float:
        """CPU seconds the server process has used so far."""
        import psutil

        times = psutil.Process(self.process.pid).cpu_times()
        return times.user + times.system

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def classify(method: str, path: str, query: str, ranged: bool) -> str:
    """The kind of an S3 request: ``list``, ``head``, ``get-range``, ``get``, ``put``,
    ``multipart`` (create, part, complete, abort) or ``delete``."""
    listing = "list-type" in query or "uploads" in query.split("&")
    if method == "GET" and (path.strip("/").count("/") == 0 or listing):
        return "list"
    if "uploadId" in query or "uploads" in query.split("&"):
        return "multipart"
    if method == "GET":
        return "get-range" if ranged else "get"
    return method.lower()


def _area(key: str) -> str:
    if key.startswith("in/"):
        return "inputs"
    if "/_dagflow/" in key or key.endswith("/_dagflow"):
        return "state"
    if key.startswith("out/"):
        return "outputs"
    return "bucket"


def _serve() -> None:
    """The child process: the server, the proxy, and the stats loop on stdin."""
    import logging

    sys.path.insert(0, os.fspath(HERE.parent / "tests"))
    from _s3 import Proxy, S3Server  # the tests' recording proxy

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = S3Server()
    proxy = Proxy(server.endpoint)
    print(json.dumps({"endpoint": server.endpoint, "proxy": proxy.endpoint}), flush=True)
    for line in sys.stdin:
        if line.strip() != "stats":
            continue
        requests = list(proxy.requests)
        by: Counter[tuple[str, str]] = Counter()
        down: Counter[tuple[str, str]] = Counter()
        up: Counter[tuple[str, str]] = Counter()
        for r in requests:
            key = (classify(r.method, r.path, r.query, r.range is not None), _area(r.key))
            by[key] += 1
            down[key] += r.sent
            up[key] += r.received
        print(json.dumps({
            "connections": proxy.connections, "requests": len(requests),
            "errors": sum(1 for r in requests if r.status >= 400),
            "by": [[kind, area, by[kind, area], down[kind, area], up[kind, area]]
                   for kind, area in sorted(by)]}), flush=True)
        proxy.clear()
    proxy.close()
    server.stop()


def _options(endpoint: str) -> dict[str, Any]:
    return {"dagflow.storage.options": {"s3": {
        "endpoint_url": endpoint, "client_kwargs": {"region_name": "us-east-1"}}}}


def _set_config(values: dict[str, Any]) -> None:
    import dask

    dask.config.set(values)  # for good, in a worker that ends with the benchmark


def _upload(endpoint: str, files: list[Path]) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=ENVIRONMENT["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=ENVIRONMENT["AWS_SECRET_ACCESS_KEY"])
    client.create_bucket(Bucket=BUCKET)
    for path in files:
        client.upload_file(os.fspath(path), BUCKET, f"in/{path.name}")


def run(images: int = 160, repeat: int = 3, quick: bool = False, **_: Any) -> dict[str, Any]:
    """Run the benchmark and print its tables; returns what is written to the results file."""
    import shutil

    import dask
    from distributed import Client

    import dagflow
    from benchmarks.kernels import thumbnail_workflow
    from dagflow.runtime.cluster import start_local_cluster

    files = corpus_files(photo_corpus(images), images)
    paths = [os.fspath(p) for p in files]
    input_bytes = sum(p.stat().st_size for p in files)
    os.environ.update(ENVIRONMENT)  # before the cluster: its workers inherit them
    workflow = thumbnail_workflow()
    info: dict[str, Any] = {"loads": []}
    with ExitStack() as stack:
        server = Server()
        stack.callback(server.close)
        _upload(server.endpoint, files)

        stack.enter_context(dask.config.set(_options(server.endpoint)))
        cluster = stack.enter_context(start_local_cluster())
        client = stack.enter_context(Client(cluster))
        workers = len(client.scheduler_info()["workers"])
        print(f"s3: {images} images ({input_bytes / images / 1e6:.2f} MB each), {workers} "
              f"workers, {repeat} repetitions, load {load_average():.1f}", flush=True)
        runs = iter(range(1_000_000))
        source = f"s3://{BUCKET}/in/"

        def fresh_local() -> str:
            shutil.rmtree(OUT, ignore_errors=True)
            OUT.mkdir(parents=True)
            return os.fspath(OUT)

        # warm both paths: imports, the workers' filesystems and connections
        dagflow.run(workflow, paths[:4 * workers], fresh_local(), client=client,
                    progress=False)
        dagflow.run(workflow, source, f"s3://{BUCKET}/warmup/", client=client,
                    progress=False)
        server.stats()

        def local() -> dict[str, Any]:
            out = fresh_local()
            t0 = time.perf_counter()
            result = dagflow.run(workflow, paths, out, client=client, progress=False)
            seconds = time.perf_counter() - t0
            assert result.succeeded == images, result
            return {"seconds": seconds}

        def s3(name: str = "s3") -> dict[str, Any]:
            out = f"s3://{BUCKET}/out/{next(runs)}/"
            cpu0 = server.cpu()
            t0 = time.perf_counter()
            result = dagflow.run(workflow, source, out, client=client, progress=False)
            seconds = time.perf_counter() - t0
            assert result.succeeded == images, result
            info.setdefault("server_cpu_s", {}).setdefault(name, []).append(server.cpu() - cpu0)
            return {"seconds": seconds}

        whole = dask.config.get("dagflow.storage.whole-read-bytes")

        def s3_header_first() -> dict[str, Any]:
            # read_image's other path: each input's header block, then the rest
            client.run(_set_config, {"dagflow.storage.whole-read-bytes": 0})
            try:
                return s3("s3-header-first")
            finally:
                client.run(_set_config, {"dagflow.storage.whole-read-bytes": whole})

        def log(line: str) -> None:
            info["loads"].append(load_average())
            print(line, flush=True)

        load_before = load_average()
        measured = interleaved({"local": local, "s3": s3, "s3-header-first": s3_header_first},
                               repeat, log=log)
        load_after = load_average()
        # one more run through the recording proxy: what went over the wire. The workers
        # took their configuration when they started: point theirs at the proxy too.
        client.run(_set_config, _options(server.proxy))
        with dask.config.set(_options(server.proxy)):
            counted = f"s3://{BUCKET}/out/counted/"
            result = dagflow.run(workflow, source, counted, client=client, progress=False)
            assert result.succeeded == images, result
        wire = server.stats()
    return _report(measured, wire, info, images=images, workers=workers, repeat=repeat,
                   input_bytes=input_bytes, loads=[load_before, load_after])


def _report(measured: dict[str, Any], wire: dict[str, Any], info: dict[str, Any], *,
            images: int, workers: int, repeat: int, input_bytes: int,
            loads: list[float]) -> dict[str, Any]:
    import statistics

    local, s3 = measured["local"], measured["s3"]
    server = {name: statistics.median(values)
              for name, values in (info.get("server_cpu_s") or {}).items()}
    server_cpu = server.get("s3", float("nan"))
    ratio = local.median / s3.median
    cores = os.cpu_count() or 1
    rows = []
    for m in measured.values():
        rows.append([m.name, f"{m.median:.2f}", f"{images / m.median:.1f}",
                     fmt_ratio(local.median / m.median), f"{m.cpu / images * 1e3:.1f}",
                     f"{server.get(m.name, 0) / images * 1e3:.1f}", f"{m.spread:.0%}"])
    print_table(f"Thumbnails from and to S3 (moto, own process) against local files: "
                f"{images} x 2048x1536 JPEG; {workers} workers on {cores} cores, which the "
                f"S3 server shares; median of {repeat}; s3-header-first: "
                f"whole-read-bytes 0 (each input's header block, then the rest)",
                ["variant", "median s", "images/s", "÷ local (throughput)",
                 "CPU ms/image (all processes)", "of which the S3 server", "spread"], rows)
    extra_wall = (s3.median - local.median) / images * 1e3
    summary = [
        ["s3 ÷ local throughput, target >= 0.8", fmt_ratio(ratio)],
        ["wall ms per image more than local (x workers: per image on a worker)",
         f"{extra_wall:.1f} ({extra_wall * workers:.1f})"],
        ["CPU ms per image more than local, all processes",
         f"{(s3.cpu - local.cpu) / images * 1e3:.1f}"],
        ["  of which the S3 server's (a real store's is not on these cores)",
         f"{server_cpu / images * 1e3:.1f}"],
        ["s3 ÷ local were the server's CPU elsewhere (by CPU, indicative)",
         fmt_ratio(local.cpu / max(s3.cpu - server_cpu, 1e-9))],
        ["s3 ÷ s3-header-first (one GET per input instead of two)",
         fmt_ratio(measured["s3-header-first"].median / s3.median)
         if "s3-header-first" in measured else "n/a"],
        ["load average (1 min): before, during (max), after",
         f"{loads[0]:.1f}, {max(info['loads'] or [0]):.1f}, {loads[1]:.1f}"],
    ]
    print_table("Summary", ["measure", "value"], summary)
    wire_rows = []
    for kind, area, count, down, up in wire["by"]:
        wire_rows.append([kind, area, count, f"{count / images:.2f}",
                          f"{down / images / 1e3:.1f}", f"{up / images / 1e3:.1f}"])
    total_down = sum(r[3] for r in wire["by"])
    total_up = sum(r[4] for r in wire["by"])
    wire_rows.append(["all", "", wire["requests"], f"{wire['requests'] / images:.2f}",
                      f"{total_down / images / 1e3:.1f}", f"{total_up / images / 1e3:.1f}"])
    print_table(f"Requests of one s3 run through a recording proxy ({wire['connections']} "
                f"TCP connections, {wire['errors']} errors; an input is "
                f"{input_bytes / images / 1e3:.0f} kB)",
                ["kind", "what", "requests", "per image", "kB down per image",
                 "kB up per image"], wire_rows)
    payload = {"images": images, "workers": workers, "repeat": repeat, "load": loads,
               "loads_during": info["loads"], "ratio": ratio,
               "extra_wall_ms_per_image": extra_wall,
               "server_cpu_s": info.get("server_cpu_s"), "wire": wire,
               "input_bytes_per_image": input_bytes / images,
               "results": {k: m.as_dict() for k, m in measured.items()}}
    print("results:", save_results("s3", payload))
    return payload


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        _serve()
