"""Starting clusters and connecting to them: an existing client, an address, a scheduler
file, a cluster profile, or an embedded ``LocalCluster``.

The order tried by :func:`connect`: an explicit ``client``; an explicit ``cluster``
address (``tcp://...``, ``tls://...``); a ``scheduler_file``; ``DASK_SCHEDULER_ADDRESS``
(Dask's own ``scheduler-address`` setting); a cluster profile by name or file
(:func:`cluster_from_profile`, read by :mod:`dagflow.runtime.profiles`); otherwise a
``LocalCluster`` started for this run and closed after it. The embedded cluster binds
every listener (scheduler, workers, dashboard) to 127.0.0.1 unless configured otherwise.
A profile's ``distributed.LocalCluster`` starts through :func:`start_local_cluster` too,
so it keeps those defaults unless the profile overrides them.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import logging
import multiprocessing
import os
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import dask.config
from distributed import Client, LocalCluster

from dagflow import config
from dagflow.exceptions import ClusterStartError, ClusterUnreachableError, ConfigError
from dagflow.runtime import jobqueue
from dagflow.runtime.environ import environment
from dagflow.runtime.profiles import Profile, load_profile

__all__ = ["LocalClusterStart", "check_local_sizes", "cluster_dask_config",
           "cluster_from_profile", "connect", "dashboard_link", "dashboard_options",
           "refuse_while_bootstrapping", "resolve_local_sizes", "start_cuda_cluster",
           "start_local_cluster", "start_worker_forkserver"]

logger = logging.getLogger(__name__)


def cluster_dask_config() -> dict[str, Any]:
    """``dagflow.cluster.dask-config`` as dotted Dask keys, nested mappings flattened.

    Set while an embedded cluster starts: its scheduler reads them then, and its nannies
    hand them to every worker process they start (and restart).

    Examples
    --------
    >>> with dask.config.set({"dagflow.cluster.dask-config":
    ...                       {"distributed": {"admin": {"tick": {"interval": "1s"}}}}}):
    ...     cluster_dask_config()
    {'distributed.admin.tick.interval': '1s'}
    """
    def flat(prefix: str, value: Any) -> Iterator[tuple[str, Any]]:
        if isinstance(value, Mapping) and value:
            for key, inner in value.items():
                yield from flat(f"{prefix}.{key}" if prefix else str(key), inner)
        elif prefix:
            yield prefix, value

    return dict(flat("", config.get("cluster.dask-config") or {}))


def refuse_while_bootstrapping() -> None:
    """Refuse to start worker processes from a process that is itself still starting.

    Dask starts worker processes with ``spawn``: each imports the main script again. A
    script that calls :func:`dagflow.run` at its top level, not under
    ``if __name__ == "__main__":``, would then start a cluster inside every worker while
    the first one waits for its workers: a hang. This is the check multiprocessing
    makes itself, raised with what to change.

    The worker process ends with the reason as its one line of output, and no
    traceback (it has no caller to handle an exception, and its traceback would bury the
    reason): the reason is the first thing the script's user sees.

    Raises
    ------
    SystemExit
        When called while this process imports its parent's main module; its message
        is the reason and the fix.
    """
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise SystemExit(
            "ConfigError: dagflow starts worker processes, and each imports your script "
            "again: put the code that runs dagflow under `if __name__ == \"__main__\":` (or "
            "pass client= / --cluster an existing cluster)")


def check_local_sizes(*, n_workers: Any = None, threads_per_worker: Any = None,
                      memory_limit: Any = None, adaptive: bool = False) -> dict[str, Any]:
    """Check the embedded cluster's sizes before anything starts (``None``: Dask's choice).

    Parameters
    ----------
    n_workers, threads_per_worker
        Whole numbers >= 1 (``n_workers`` may be 0 for a cluster that adapts).
    memory_limit
        Per worker: bytes, a string such as ``"4GiB"``, a fraction of the machine (a
        number up to 1), ``"auto"``, or 0 for none.
    adaptive
        Whether the cluster may start with no worker (a cluster profile's ``adapt``
        starts them); an embedded cluster without workers would wait for ever.

    Returns
    -------
    dict
        The three, by :class:`distributed.LocalCluster`'s names.

    Raises
    ------
    ConfigError
        Naming the value and what it should be.
    """
    from distributed.worker_memory import parse_memory_limit

    for name, value, least in (("n-workers", n_workers, 0 if adaptive else 1),
                               ("threads-per-worker", threads_per_worker, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < least):
            raise ConfigError(f"{name} must be a whole number >= {least}, got {value!r}")
    if memory_limit is not None:
        try:
            parse_memory_limit(memory_limit, 1, logger=logger)
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                f"memory-limit {memory_limit!r} is not a size: give bytes, a string such as "
                "'4GiB', a fraction of the machine such as 0.5, or 'auto'") from exc
    return {"n_workers": n_workers, "threads_per_worker": threads_per_worker,
            "memory_limit": memory_limit}


def resolve_local_sizes(options: Mapping[str, Any] | None = None, *,
                        adaptive: bool = False) -> dict[str, Any]:
    """The embedded cluster's sizes: ``options`` over ``dagflow.cluster.*``, checked by
    :func:`check_local_sizes` (``None``: Dask's choice)."""
    options = options or {}
    return check_local_sizes(adaptive=adaptive, **{
        name: config.resolve(options.get(name), f"cluster.{key}")
        for name, key in (("n_workers", "n-workers"),
                          ("threads_per_worker", "threads-per-worker"),
                          ("memory_limit", "memory-limit"))})


def dashboard_options(host: str | None) -> dict[str, Any]:
    """The embedded cluster's dashboard options from ``dagflow.cluster.dashboard-address``.

    ``null`` switches the dashboard off. Not by passing ``dashboard_address=None``: the
    scheduler still serves its HTTP routes then, on port 8787 of every interface. Its
    HTTP server goes to a free port of ``host`` instead, without the dashboard.

    Examples
    --------
    >>> import dask
    >>> with dask.config.set({"dagflow.cluster.dashboard-address": None}):
    ...     dashboard_options("127.0.0.1")
    {'dashboard_address': '127.0.0.1:0', 'scheduler_kwargs': {'dashboard': False}}
    """
    address = config.get("cluster.dashboard-address")
    if address is not None:
        return {"dashboard_address": address}
    return {"dashboard_address": f"{host or '127.0.0.1'}:0",
            "scheduler_kwargs": {"dashboard": False}}


#: What the worker processes of the embedded cluster import before anything else.
WORKER_MODULES = ["distributed", "dagflow.runtime.signals", "dagflow.runtime.worker_preload"]
#: The environment this process's forkserver started with (its own, and what it gives
#: its forks), when :func:`start_worker_forkserver` started it; else ``None``.
_forkserver: tuple[dict[str, str], dict[str, str]] | None = None
#: Variables that change while a process runs and mean nothing to its workers (pytest's
#: name of the test running), left out of that comparison.
_FORK_ENV_IGNORED = frozenset({"PYTEST_CURRENT_TEST"})


def _own_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _FORK_ENV_IGNORED}


def _spawn_environment(worker_env: Mapping[str, str]) -> dict[str, str]:
    """What a nanny puts in its worker's environment before the process starts (Dask's
    ``pre-spawn-environ`` and hash seed), with ``worker_env`` over it."""
    spawn = {str(k): str(v) for k, v in
             (dask.config.get("distributed.nanny.pre-spawn-environ", None) or {}).items()}
    spawn.setdefault("PYTHONHASHSEED", os.environ.get("PYTHONHASHSEED") or "6640")
    return {**spawn, **worker_env}


def start_worker_forkserver() -> bool:
    """Start, now, the process that the embedded cluster's workers will be forked from,
    importing what they need (:data:`WORKER_MODULES`) while this process goes on.

    ``dagflow run`` calls it first thing: the server imports Dask and the ops on another
    core while the command imports and plans, and each worker then starts as a fork of
    it, its imports done, instead of a fresh interpreter importing them all (about a
    second on two cores). It starts with the environment a nanny gives its workers
    before they start (``OMP_NUM_THREADS``, the hash seed, ``dagflow.cluster.worker-env``:
    glibc reads ``MALLOC_*`` only when a process starts). Workers restarted later are
    spawned as usual, and so are those of a cluster started once this process's
    environment or ``dagflow.cluster.worker-env`` differ from what the server started
    with (a fork would not see the change).

    Returns
    -------
    bool
        Whether the forkserver is this process's and the next
        :func:`start_local_cluster` forks its workers from it: not where forkserver is
        not available (Windows), a forkserver already runs, the worker preload is off,
        or ``distributed.worker.multiprocessing-method`` is not Dask's default.
    """
    global _forkserver
    if _forkserver is not None:
        return True
    from multiprocessing import forkserver

    if ("forkserver" not in multiprocessing.get_all_start_methods()
            or config.get("cluster.worker-preload") is False
            or dask.config.get("distributed.worker.multiprocessing-method") != "spawn"
            or getattr(forkserver._forkserver, "_forkserver_pid", None) is not None):
        return False
    env = _spawn_environment({str(k): str(v) for k, v in
                              (config.get("cluster.worker-env") or {}).items()})
    own = _own_environment()
    with environment(env):
        multiprocessing.set_forkserver_preload(WORKER_MODULES)
        forkserver.ensure_running()
    _forkserver = (own, env)
    return True


def _forks_match(worker_env: Mapping[str, str]) -> bool:
    """Whether workers forked from this process's forkserver now would start as spawned
    ones would: the server is this process's, and neither this process's environment
    nor the workers' has changed since it started."""
    if _forkserver is None:
        return False
    own, env = _forkserver
    return own == _own_environment() and env == _spawn_environment(worker_env)


def start_local_cluster(
    *,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | int | None = None,
    processes: bool = True,
    resources: Mapping[str, float] | None = None,
    **kwargs: Any,
) -> LocalCluster:
    """Start the embedded cluster with dagflow's settings (loopback, worker environment).

    Parameters
    ----------
    n_workers, threads_per_worker, memory_limit
        Default to ``dagflow.cluster.*`` in the configuration, then to Dask's choice
        (checked by :func:`check_local_sizes`; ``n_workers=0`` only for a cluster that
        is then told to adapt).
    processes
        Worker processes (the default) or threads in this process.
    resources
        Extra resources every worker advertises.
    **kwargs
        Passed to :class:`distributed.LocalCluster`.
    """
    if processes:
        refuse_while_bootstrapping()
    sizes = resolve_local_sizes({"n_workers": n_workers, "threads_per_worker":
                                 threads_per_worker, "memory_limit": memory_limit},
                                adaptive=True)
    host = config.get("cluster.host")
    options: dict[str, Any] = {
        "host": host,
        **dashboard_options(host),
        **sizes,
        "processes": processes,
        "silence_logs": logging.WARNING,
    }
    if processes:
        env = {str(k): str(v) for k, v in (config.get("cluster.worker-env") or {}).items()}
        options["env"] = env
    elif "protocol" not in kwargs:
        # thread workers talk in-process (inproc://), which takes no host: nothing listens
        options.pop("host", None)
    if resources:
        options["resources"] = dict(resources)
    options = {k: v for k, v in options.items() if v is not None}
    options.update(kwargs)
    # glibc reads MALLOC_* once, when a process starts: the nanny applies `env` inside
    # the worker, too late, so worker-env also goes in before the nanny spawns (and
    # respawns) its worker, winning over this process's own variables as `env` does.
    worker_env = dict(options.get("env") or {}) if processes else {}
    spawn_env = {**(dask.config.get("distributed.nanny.pre-spawn-environ", None) or {}),
                 **worker_env}
    # workers forked from the forkserver `dagflow run` started, in the environment it
    # started with: the configured one, unless this cluster asks for another
    fork = {"distributed.worker.multiprocessing-method": "forkserver"} \
        if processes and "env" not in kwargs and _forks_match(worker_env) else {}
    preloads = dask.config.get("distributed.worker.preload", None) or []
    preloads = [preloads] if isinstance(preloads, str) else list(preloads)
    if processes:  # Ctrl-C is the driver's to handle (dagflow.runtime.signals)
        preloads.append("dagflow.runtime.signals")
        if config.get("cluster.worker-preload") is not False:
            preloads.append("dagflow.runtime.worker_preload")  # ops, codecs, Parquet
    with environment(worker_env), dask.config.set({
            **cluster_dask_config(), **fork, "distributed.nanny.pre-spawn-environ": spawn_env,
            "distributed.worker.preload": preloads}):
        if processes and "config" not in options:
            # a nanny keeps references into the global configuration, and would restart
            # its worker with whatever it says then: it gets a copy
            options["config"] = copy.deepcopy(dask.config.config)
        cluster = LocalCluster(**options)
    logger.info("started a local cluster: %s, dashboard %s", cluster.scheduler_address,
                cluster.dashboard_link)
    return cluster


def start_cuda_cluster(
    *,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | int | None = None,
    device_memory_limit: str | float | int | None = None,
    rmm_pool_size: str | float | int | None = None,
    resources: Mapping[str, float] | None = None,
    **kwargs: Any,
) -> Any:
    """Start dask-cuda's ``LocalCUDACluster``: one worker per GPU, each advertising ``GPU: 1``.

    ``dask_cuda`` is imported here only (importing it fails on a machine without CUDA).
    Every worker also advertises ``MEMORY`` when a run starts (see
    :mod:`dagflow.runtime.capacity`), from its host memory limit.

    Parameters
    ----------
    n_workers
        GPUs to use (default: every visible one; ``CUDA_VISIBLE_DEVICES`` chooses).
    threads_per_worker, memory_limit
        Per worker; ``memory_limit`` is host memory (dask-cuda's default: a share of the
        machine).
    device_memory_limit, rmm_pool_size
        Default to ``dagflow.cluster.cuda.device-memory-limit`` and ``rmm-pool-size``; with
        an RMM pool, cupy allocates from it (``rmm_allocator_external_lib_list``).
    resources
        More resources per worker, merged over ``{"GPU": 1}``.
    **kwargs
        Passed to ``LocalCUDACluster``.

    Raises
    ------
    ConfigError
        When dask-cuda (or CUDA) is missing, or an RMM pool is asked for without
        ``rmm``, naming what to install.
    """
    refuse_while_bootstrapping()
    rmm_pool_size = config.resolve(rmm_pool_size, "cluster.cuda.rmm-pool-size")
    if rmm_pool_size is not None and importlib.util.find_spec("rmm") is None:
        raise ConfigError(f"rmm-pool-size is {rmm_pool_size!r} but rmm is not installed: "
                          "install the RMM build for your CUDA (e.g. pip install "
                          "rmm-cu12) or set dagflow.cluster.cuda.rmm-pool-size to null")
    try:
        from dask_cuda import LocalCUDACluster
    except Exception as exc:  # dask_cuda raises more than ImportError without CUDA
        raise ConfigError(f"a CUDA cluster needs dask-cuda and a CUDA driver ("
                          f"{type(exc).__name__}: {exc}); install it with: "
                          "pip install 'dagflow[gpu]'") from exc
    options: dict[str, Any] = {
        "host": config.get("cluster.host"),
        **dashboard_options(config.get("cluster.host")),
        "silence_logs": logging.WARNING,
        "n_workers": n_workers,
        "threads_per_worker": threads_per_worker,
        "memory_limit": memory_limit,
        "device_memory_limit": config.resolve(device_memory_limit,
                                              "cluster.cuda.device-memory-limit"),
        "rmm_pool_size": rmm_pool_size,
    }
    if options["rmm_pool_size"] is not None:
        options["rmm_allocator_external_lib_list"] = ["cupy"]
    options = {k: v for k, v in options.items() if v is not None}
    options["resources"] = {"GPU": 1, **dict(resources or {})}
    # Ctrl-C is the driver's to handle (dagflow.runtime.signals), as on the embedded
    # cluster; an option, not the configuration: dask-cuda gives its workers a preload
    # option of its own, which hides the configured ones
    preloads = kwargs.pop("preload", None) or dask.config.get("distributed.worker.preload",
                                                              None) or []
    preloads = [preloads] if isinstance(preloads, str) else list(preloads)
    options["preload"] = [*preloads, "dagflow.runtime.signals"]
    options.update(kwargs)
    with dask.config.set(cluster_dask_config()):
        cluster = LocalCUDACluster(**options)
    logger.info("started a CUDA cluster: %s, %d workers", cluster.scheduler_address,
                len(cluster.workers))
    return cluster


@contextlib.contextmanager
def cluster_from_profile(name_or_file: str | os.PathLike[str] | Profile,
                         **overrides: Any) -> Iterator[Any]:
    """Start the cluster a profile describes, scale it, and close it on exit.

    A dask-jobqueue cluster submits its first worker job here, and the batch system's
    answer is waited for (:mod:`dagflow.runtime.jobqueue`): a refused job (``sbatch``
    missing, an unknown partition or account) fails at once instead of being retried
    for ever. While the block runs, its worker jobs (Slurm, PBS, LSF) are watched until
    their workers connect: one that ends (or runs past
    ``dagflow.cluster.worker-connect-timeout``) without its worker, while no worker serves
    the run, stops the run; queued jobs are said to be waited for.

    Parameters
    ----------
    name_or_file
        A profile name, a profile file, or a :class:`~dagflow.runtime.profiles.Profile`.
    **overrides
        Keyword arguments replacing the profile's options.

    Yields
    ------
    The cluster object (pass it to :class:`distributed.Client`).

    Raises
    ------
    ConfigError
        The class cannot be imported, or rejects an option.
    ClusterStartError
        The cluster failed to start, the batch system refused its first worker job, or
        a worker job ended without its worker connecting (raised when the block ends,
        which the cancelled tasks make it do).
    """
    profile = name_or_file if isinstance(name_or_file, Profile) else load_profile(name_or_file)
    where = f"cluster profile {profile.name!r} ({profile.path})"
    options = profile.resolved_options(**overrides)
    watch = jobs = None
    if profile.is_local:
        factory: Any = start_local_cluster
    elif profile.is_cuda:
        factory = start_cuda_cluster  # the configured device memory limit and RMM pool
    else:
        factory = profile.cluster_class()
        job_cls = getattr(factory, "job_cls", None)  # a dask-jobqueue cluster
        if job_cls is not None and "job_cls" not in options:
            watch = jobqueue.SubmissionWatch(jobqueue.submission_command(job_cls))
            jobs = jobqueue.worker_jobs(job_cls, where=where)
            options["job_cls"] = jobqueue.job_class(job_cls, watch, jobs)
    try:
        cluster = factory(**options)
    except TypeError as exc:
        raise ConfigError(f"{where}: {profile.cls} rejected its options: {exc}") from exc
    except (ConfigError, ClusterStartError):
        raise
    except Exception as exc:  # a worker refusing an option, an unreachable service...
        raise ClusterStartError(f"{where}: {profile.cls} could not start: "
                                f"{type(exc).__name__}: {exc}") from exc
    with contextlib.ExitStack() as stack:
        if watch is not None:
            stack.enter_context(jobqueue.quiet_failed_submission(watch))
        stack.callback(cluster.close)
        if jobs is not None:
            stack.enter_context(jobs.watching(cluster))
        if watch is not None:
            jobqueue.submit_first_job(cluster, watch, where=where)
        _apply_scaling(profile, cluster)
        logger.info("started %s: %s", where, getattr(cluster, "scheduler_address", "?"))
        yield cluster


def _apply_scaling(profile: Profile, cluster: Any) -> None:
    """Scale the started cluster as the profile says (``adapt`` or ``scale``)."""
    if profile.adapt is not None:
        if not callable(getattr(cluster, "adapt", None)):
            raise ConfigError(f"cluster profile {profile.name!r}: {profile.cls} does not "
                              "support adaptive scaling; use 'scale' instead of 'adapt'")
        cluster.adapt(**dict(profile.adapt))
    elif profile.scale is not None:
        if isinstance(profile.scale, Mapping):
            cluster.scale(**dict(profile.scale))
        else:
            cluster.scale(int(profile.scale))


class LocalClusterStart:
    """The embedded ``LocalCluster``, started in a background thread.

    Its worker processes start (and import what chunks need,
    :mod:`dagflow.runtime.worker_preload`) while the driver lists the inputs and plans
    the run; :meth:`result` waits for it. A run that fails before it uses the cluster
    calls :meth:`close`, which waits for the start to end and closes what started: the
    run's own error is the one raised, as if no cluster had been started.

    Parameters
    ----------
    local_options
        Keyword arguments for :func:`start_local_cluster`.
    """

    def __init__(self, local_options: Mapping[str, Any] | None = None) -> None:
        self._options = dict(local_options or {})
        self._cluster: LocalCluster | None = None
        self._error: BaseException | None = None
        self._taken = False
        self._thread = threading.Thread(target=self._start, name="dagflow-cluster-start",
                                        daemon=True)
        self._thread.start()

    def _start(self) -> None:
        try:
            self._cluster = start_local_cluster(**self._options)
        except BaseException as exc:  # raised where the run uses the cluster
            self._error = exc

    def result(self) -> LocalCluster:
        """The started cluster (its closing is the caller's); what the start raised,
        raised here."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._cluster is not None
        self._taken = True
        return self._cluster

    def close(self) -> None:
        """Wait for the start to end; close the cluster unless :meth:`result` handed it
        out. Raises nothing: the caller is already failing for its own reason."""
        self._thread.join()
        if self._cluster is not None and not self._taken:
            try:
                self._cluster.close()
            except Exception as exc:
                logger.warning("the cluster did not close cleanly: %s: %s",
                               type(exc).__name__, exc)


def dashboard_link(client: Client) -> str | None:
    """The dashboard URL of the client's scheduler, if it has one."""
    try:
        return client.dashboard_link
    except Exception:  # no dashboard (bokeh missing or disabled)
        return None


def _client(*args: Any, where: str, **kwargs: Any) -> Client:
    """``Client(*args, **kwargs)``, a scheduler that does not answer named as such."""
    try:
        return Client(*args, **kwargs)
    except OSError as exc:
        timeout = dask.config.get("distributed.comm.timeouts.connect")
        raise ClusterUnreachableError(
            f"no Dask scheduler answered at {where} within {timeout} "
            f"({type(exc).__name__}: {exc}); is it running, and reachable from here "
            "(address, port, firewall, TLS)?") from exc


@contextlib.contextmanager
def connect(
    client: Client | None = None,
    *,
    cluster: str | Any | None = None,
    scheduler_file: str | os.PathLike[str] | None = None,
    local_options: Mapping[str, Any] | None = None,
    starting: LocalClusterStart | None = None,
) -> Iterator[Client]:
    """A client for the run, closing what this call started.

    Parameters
    ----------
    client
        Use this client as it is (it is not closed).
    cluster
        ``"local"``, a scheduler address, a cluster object with a ``scheduler_address``,
        or a cluster profile name or file (see :mod:`dagflow.runtime.profiles`).
    scheduler_file
        A scheduler file written by ``dask scheduler --scheduler-file``.
    local_options
        Keyword arguments for :func:`start_local_cluster`.
    starting
        The embedded cluster, already starting (``cluster`` and ``scheduler_file`` are
        then ignored): this call waits for it and closes it.
    """
    if client is not None:
        yield client
        return
    if starting is not None:
        with starting.result() as lc, Client(lc) as c:
            yield c
        return
    address = None
    if isinstance(cluster, str) and "://" in cluster:
        address = cluster
    elif cluster is not None and not isinstance(cluster, str):
        address = getattr(cluster, "scheduler_address", None)
        if address is None:
            raise ConfigError(f"cannot connect to {cluster!r}: it has no scheduler_address")
    if address is not None:
        # A cluster object (not its address), so that the client takes its security.
        with _client(address if isinstance(cluster, str) else cluster, where=address) as c:
            yield c
        return
    if scheduler_file is not None:
        if not os.path.exists(scheduler_file):
            raise ConfigError(f"scheduler file {os.fspath(scheduler_file)!r} does not exist")
        with _client(scheduler_file=os.fspath(scheduler_file),
                     where=f"the scheduler file {os.fspath(scheduler_file)!r}") as c:
            yield c
        return
    if cluster in (None, "local"):
        env_address = dask.config.get("scheduler-address", None)
        if env_address and cluster is None:
            with _client(env_address,
                         where=f"{env_address} (DASK_SCHEDULER_ADDRESS / scheduler-address)"
                         ) as c:
                yield c
            return
        with start_local_cluster(**dict(local_options or {})) as lc, Client(lc) as c:
            yield c
        return
    with cluster_from_profile(cluster) as started, Client(started) as c:
        yield c
