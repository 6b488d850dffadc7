"""Cluster profiles: a YAML file that names a Dask cluster class and its arguments.

``dagflow run --cluster slurm`` (or ``dagflow.run(..., cluster="slurm")``) loads the
profile ``slurm.yaml``, starts that cluster for the run, and closes it afterwards. A
profile is a small YAML file::

    description: CPU workers as Slurm jobs (dask-jobqueue)
    class: dask_jobqueue.SLURMCluster      # any Dask cluster class, imported lazily
    install: dagflow[cluster]              # what to install when the import fails
    options:                               # the class's keyword arguments
      cores: 16
      memory: 64GiB
      worker_command: dask worker
      scheduler_options: {preload: [dagflow.monitor.preload]}
    adapt: {minimum: 0, maximum: 20}       # or scale: 4 (or scale: {jobs: 2})

Inside ``options``, ``adapt`` and ``scale``, ``$VAR`` and ``${VAR}`` are replaced from the
environment, and ``${VAR:-default}`` by ``default`` where ``VAR`` is unset or empty; a
value that is one such reference and nothing else reads as a number, ``true``/``false``
or ``null`` where its text is one (``cores: ${DAGFLOW_SLURM_CORES:-16}`` is the number
16). A string that starts with ``./`` or ``../`` is a path relative to the profile's
directory, and ``security`` is either ``temporary`` (self-signed credentials made for this
cluster: :meth:`distributed.security.Security.temporary`) or the arguments of
:class:`distributed.security.Security` (``tls_ca_file``, ``tls_client_cert``...).

A name is looked up as ``NAME.yaml`` in the directories of ``dagflow.cluster.profile-path``,
then ``./cluster-configs``, then the ``cluster-configs/`` directory shipped with dagflow;
anything that looks like a path (``.yaml`` suffix, a directory separator) is read as a
file. The shipped profiles and what each one exposes are described in
``cluster-configs/README.md``.

This module owns finding, reading and checking profiles, and rendering a dask-jobqueue
profile's job script; it starts nothing (:func:`dagflow.runtime.cluster.cluster_from_profile`
starts a profile's cluster, :func:`dagflow.runtime.cluster.connect` a client).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.config
import yaml

from dagflow import config
from dagflow.exceptions import ConfigError

__all__ = [
    "Profile",
    "list_profiles",
    "load_profile",
    "profile_dirs",
]

logger = logging.getLogger(__name__)

#: The profiles shipped with dagflow (present in a source checkout or editable install).
SHIPPED_DIR = Path(__file__).resolve().parents[2] / "cluster-configs"

_KEYS = {"description", "class", "install", "options", "scale", "adapt"}
_LOCAL_CLASSES = {"distributed.LocalCluster", "distributed.deploy.local.LocalCluster",
                  "dask.distributed.LocalCluster"}
#: dask-cuda's LocalCUDACluster (started by dagflow.runtime.cluster.start_cuda_cluster).
_CUDA_CLASSES = {"dask_cuda.LocalCUDACluster", "dask_cuda.local_cuda_cluster.LocalCUDACluster"}
#: What to install when a cluster class cannot be imported.
_EXTRAS = {
    "dask_jobqueue": "dagflow[cluster]",
    "dask_kubernetes": "dagflow[cluster]",
    "dask_gateway": "dagflow[cluster]",
    "dask_cuda": "dagflow[gpu]",
}
#: Keyword arguments of a dask-jobqueue cluster that are not arguments of its job class.
_JOBQUEUE_CLUSTER_ONLY = {"n_workers", "job_cls", "loop", "shared_temp_directory",
                          "silence_logs", "name", "asynchronous", "dashboard_address", "host",
                          "scheduler_options", "scheduler_cls"}


@dataclass(frozen=True)
class Profile:
    """A cluster profile, read and checked but not started.

    Attributes
    ----------
    name
        The file's stem (``slurm`` for ``slurm.yaml``).
    path
        The file it was read from.
    cls
        The cluster class's dotted path, e.g. ``dask_jobqueue.SLURMCluster``.
    options
        The class's keyword arguments as written (see :meth:`resolved_options`).
    description, install
        What it is; what to install when ``cls`` cannot be imported.
    scale, adapt
        Fixed size (``int`` or keyword arguments of ``scale``) or adaptive bounds.
    """

    name: str
    path: Path
    cls: str
    options: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    install: str | None = None
    scale: int | Mapping[str, int] | None = None
    adapt: Mapping[str, Any] | None = None

    @property
    def is_local(self) -> bool:
        """Whether this is a ``distributed.LocalCluster`` profile."""
        return self.cls in _LOCAL_CLASSES

    @property
    def is_cuda(self) -> bool:
        """Whether this is a dask-cuda ``LocalCUDACluster`` profile."""
        return self.cls in _CUDA_CLASSES

    def install_hint(self) -> str | None:
        """The pip requirement that provides the cluster class."""
        return self.install or _EXTRAS.get(self.cls.split(".", 1)[0])

    def cluster_class(self) -> type:
        """Import the cluster class (lazily: optional packages stay optional).

        Raises
        ------
        ConfigError
            The class cannot be imported; the message names what to install.
        """
        module_name, _, class_name = self.cls.rpartition(".")
        try:
            with _config_copies_elsewhere():
                module = importlib.import_module(module_name)
        except Exception as exc:  # dask_cuda raises more than ImportError without CUDA
            hint = self.install_hint()
            todo = f"; install it with: pip install '{hint}'" if hint else ""
            raise ConfigError(
                f"cluster profile {self.name!r} ({self.path}) needs {module_name}, which "
                f"cannot be imported ({type(exc).__name__}: {exc}){todo}") from exc
        try:
            return getattr(module, class_name)
        except AttributeError:
            raise ConfigError(f"cluster profile {self.name!r} ({self.path}): {module_name} "
                              f"has no {class_name!r}") from None

    def resolved_options(self, **overrides: Any) -> dict[str, Any]:
        """The keyword arguments for the class: environment variables expanded, relative
        paths made absolute, ``security`` built; ``overrides`` replace keys."""
        options = _expand(dict(self.options), self.path.parent)
        options.update(overrides)
        if "security" in options:
            options["security"] = _security(options["security"], self)
        return options

    def job_script(self, scheduler_address: str = "tcp://scheduler:8786",
                   **overrides: Any) -> str:
        """The batch job script of a dask-jobqueue profile, without starting anything.

        Parameters
        ----------
        scheduler_address
            The address written into the worker command (the real one is known only
            once the cluster's scheduler runs).

        Raises
        ------
        ConfigError
            The profile's class is not a dask-jobqueue cluster.
        """
        cls = self.cluster_class()
        job_cls = getattr(cls, "job_cls", None)
        if job_cls is None:
            raise ConfigError(f"cluster profile {self.name!r}: {self.cls} submits no batch "
                              "jobs (not a dask-jobqueue cluster)")
        options = self.resolved_options(**overrides)
        job_options = {k: v for k, v in options.items() if k not in _JOBQUEUE_CLUSTER_ONLY}
        name = options.get("job_name") or "dagflow-worker"
        try:
            return job_cls(scheduler=scheduler_address, name=name, **job_options).job_script()
        except TypeError as exc:
            raise ConfigError(f"cluster profile {self.name!r} ({self.path}): {self.cls} "
                              f"rejected its options: {exc}") from exc


@contextlib.contextmanager
def _config_copies_elsewhere() -> Iterator[None]:
    """Keep imports from writing into the home directory.

    dask-jobqueue (and other cluster packages) copy their default configuration, fully
    commented out, into ``~/.config/dask`` when imported (:func:`dask.config.ensure_file`).
    dagflow writes nothing into the user's home directory, so during the import those
    copies go to a temporary directory, removed afterwards; nothing is lost.
    """
    import tempfile

    saved = dask.config.PATH
    with tempfile.TemporaryDirectory(prefix="dagflow-dask-config-") as tmp:
        dask.config.PATH = tmp
        try:
            yield
        finally:
            dask.config.PATH = saved


#: ``${VAR:-default}``: VAR from the environment, or the default where it is unset or empty.
_DEFAULTED = re.compile(r"\$\{(\w+):-([^}]*)\}")
#: A value that is one reference and nothing else.
_ONE_REFERENCE = re.compile(r"\$\{\w+(:-[^}]*)?\}|\$\w+")
_INTEGER = re.compile(r"[-+]?\d+")
_DECIMAL = re.compile(r"[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?")


def expand_reference(text: str) -> Any:
    """Replace environment variables in a profile's string value.

    Examples
    --------
    With ``DAGFLOW_DOC_UNSET`` unset:

    >>> expand_reference("${DAGFLOW_DOC_UNSET:-16}"), expand_reference("${DAGFLOW_DOC_UNSET:-0.5}")
    (16, 0.5)
    >>> expand_reference("${DAGFLOW_DOC_UNSET:-null}") is None
    True
    >>> expand_reference("${DAGFLOW_DOC_UNSET:-04:00:00}")
    '04:00:00'
    >>> expand_reference("-${DAGFLOW_DOC_UNSET:-2}")
    '-2'
    """
    one = _ONE_REFERENCE.fullmatch(text) is not None
    text = _DEFAULTED.sub(lambda m: os.environ.get(m.group(1)) or m.group(2), text)
    text = dask.config.expand_environment_variables(text)
    if not one:
        return text
    if text in ("", "null", "~"):
        return None
    if text in ("true", "false"):
        return text == "true"
    if _INTEGER.fullmatch(text):
        return int(text)
    if _DECIMAL.fullmatch(text):
        return float(text)
    return text


def _expand(value: Any, base: Path | None) -> Any:
    if isinstance(value, Mapping):
        return {k: _expand(v, base) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, base) for v in value]
    if isinstance(value, str):
        value = expand_reference(value)
        if base is not None and isinstance(value, str) and value.startswith(("./", "../")):
            return os.fspath((base / value).resolve())
    return value


def _security(value: Any, profile: Profile) -> Any:
    from distributed.security import Security

    if isinstance(value, Security) or value is None or value is False:
        return value
    if value == "temporary" or value is True:
        try:
            return Security.temporary()
        except ImportError as exc:
            raise ConfigError(f"cluster profile {profile.name!r}: temporary TLS credentials "
                              "need the cryptography package: pip install cryptography"
                              ) from exc
    if isinstance(value, Mapping):
        try:
            return Security(**{"require_encryption": True, **value})
        except TypeError as exc:
            raise ConfigError(f"cluster profile {profile.name!r}: bad security "
                              f"options: {exc}") from exc
    raise ConfigError(f"cluster profile {profile.name!r}: security must be 'temporary' or a "
                      f"mapping of distributed.security.Security arguments, not {value!r}")


def profile_dirs() -> list[Path]:
    """Where profile names are looked up, in order (only directories that exist)."""
    configured = [Path(p).expanduser() for p in (config.get("cluster.profile-path") or [])]
    dirs: list[Path] = []
    for d in [*configured, Path.cwd() / "cluster-configs", SHIPPED_DIR]:
        d = d.resolve()
        if d.is_dir() and d not in dirs:
            dirs.append(d)
    return dirs


def _looks_like_path(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) or os.sep in name or "/" in name


def _find(name: str) -> Path:
    if _looks_like_path(name) or os.path.isfile(name):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ConfigError(f"cluster profile file {name!r} does not exist")
        return path
    for d in profile_dirs():
        for suffix in (".yaml", ".yml"):
            candidate = d / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
    known = ", ".join(p.name for p in list_profiles()) or "none"
    searched = ", ".join(map(str, profile_dirs())) or "no profile directory exists"
    raise ConfigError(f"unknown cluster {name!r}: not 'local', not an address "
                      f"(tcp://host:port), and no profile {name}.yaml in {searched} "
                      f"(profiles found: {known})")


def _parse(path: Path) -> Profile:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise ConfigError(f"cluster profile {path} is not valid YAML: {exc}") from exc
    name = path.stem
    if not isinstance(data, Mapping) or "class" not in data:
        raise ConfigError(f"{path} is not a cluster profile: it has no 'class' key")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ConfigError(f"cluster profile {path}: unknown key(s) {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(_KEYS))})")
    cls = data["class"]
    if not isinstance(cls, str) or "." not in cls:
        raise ConfigError(f"cluster profile {path}: 'class' must be a dotted path such as "
                          f"dask_jobqueue.SLURMCluster, not {cls!r}")
    options = data.get("options") or {}
    if not isinstance(options, Mapping):
        raise ConfigError(f"cluster profile {path}: 'options' must be a mapping")
    scale, adapt = _expand(data.get("scale"), None), _expand(data.get("adapt"), None)
    if scale is not None and adapt is not None:
        raise ConfigError(f"cluster profile {path}: give 'scale' or 'adapt', not both")
    if scale is not None and not (
            (isinstance(scale, int) and scale >= 0)
            or (isinstance(scale, Mapping) and all(isinstance(v, int) for v in scale.values()))):
        raise ConfigError(f"cluster profile {path}: 'scale' must be a number of workers or "
                          f"a mapping such as {{jobs: 2}}, not {scale!r}")
    if adapt is not None:
        if not isinstance(adapt, Mapping):
            raise ConfigError(f"cluster profile {path}: 'adapt' must be a mapping such as "
                              "{minimum: 0, maximum: 10}")
        for lo, hi in (("minimum", "maximum"), ("minimum_jobs", "maximum_jobs")):
            low, high = adapt.get(lo, 0), adapt.get(hi, adapt.get(lo, 0))
            if not isinstance(low, int) or not isinstance(high, int) or not 0 <= low <= high:
                raise ConfigError(f"cluster profile {path}: 'adapt' needs integers "
                                  f"0 <= {lo} <= {hi}, got {dict(adapt)!r}")
        if "maximum" not in adapt and "maximum_jobs" not in adapt:
            raise ConfigError(f"cluster profile {path}: 'adapt' needs a maximum "
                              f"(adapt: {{minimum: 0, maximum: 10}}), got {dict(adapt)!r}")
    return Profile(name=name, path=path.resolve(), cls=cls, options=dict(options),
                   description=str(data.get("description") or "").strip(),
                   install=data.get("install"), scale=scale,
                   adapt=dict(adapt) if adapt is not None else None)


def load_profile(name_or_file: str | os.PathLike[str]) -> Profile:
    """Find and read a profile by name or path.

    Raises
    ------
    ConfigError
        No such profile (listing those found), invalid YAML, an unknown key, or a file
        that is not a profile.
    """
    return _parse(_find(os.fspath(name_or_file)))


def list_profiles() -> list[Profile]:
    """Every profile in :func:`profile_dirs` (the first of a name wins), by name."""
    found: dict[str, Profile] = {}
    for d in profile_dirs():
        for path in sorted([*d.glob("*.yaml"), *d.glob("*.yml")]):
            if path.stem in found:
                continue
            try:
                found[path.stem] = _parse(path)
            except ConfigError:
                continue  # a Dask config file or manifest beside the profiles
    return [found[k] for k in sorted(found)]
