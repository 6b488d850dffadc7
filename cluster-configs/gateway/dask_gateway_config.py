"""Server-side settings for a Dask Gateway that runs dagflow clusters.

Add this to the gateway's ``dask_gateway_config.py`` (with the dask-gateway Helm chart:
``gateway.extraConfig``). dask-gateway's defaults still start the removed hyphenated
scripts; these commands use ``dask scheduler`` / ``dask worker``, preload dagflow's
monitor on the scheduler, and make workers advertise the ``MEMORY`` resource dagflow's
tasks are annotated with. The images (or environments) of the gateway's clusters need
dagflow installed.
"""

from dask_gateway_server.options import Float, Integer, Options

c = get_config()  # noqa: F821  (provided by the gateway when it loads this file)

c.ClusterConfig.scheduler_cmd = ["dask", "scheduler", "--preload", "dagflow.monitor.preload"]
c.ClusterConfig.worker_cmd = ["dask", "worker"]
c.ClusterConfig.environment = {
    "MALLOC_MMAP_THRESHOLD_": "33554432",
    "MALLOC_TRIM_THRESHOLD_": "134217728",
}


def options_handler(options):
    """Worker size from the user's cluster options; MEMORY is 80% of the memory limit."""
    memory = int(options.worker_memory * 2**30)
    return {
        "worker_cores": options.worker_cores,
        "worker_memory": memory,
        "worker_cmd": ["dask", "worker", "--resources", f"MEMORY={int(memory * 0.8)}"],
    }


c.Backend.cluster_options = Options(
    Integer("worker_cores", default=4, min=1, max=32, label="Worker cores"),
    Float("worker_memory", default=16, min=1, max=256, label="Worker memory (GiB)"),
    handler=options_handler,
)
