"""dagflow's configuration: defaults in ``dagflow.yaml``, read through ``dask.config``.

The defaults are registered with :func:`dask.config.update_defaults` under the
``dagflow`` namespace, so a user's Dask config files and ``DASK_DAGFLOW__...``
environment variables override them. Keyword arguments across dagflow default to
``None`` and resolve here. Values are resolved on the client and passed into tasks
explicitly: a remote worker does not see the client's configuration. Nothing is written
to the user's home directory.

``dagflow-schema.yaml`` describes every key (type, range, meaning);
:func:`validate_config` checks a configuration against it and names the bad key, e.g.
``dagflow.retry.attemps``, and the environment variable that set it, if one did.
``dagflow config validate`` runs it on the configuration in force (defaults, Dask config
files, environment) or on a YAML file; ``dagflow.run``, ``plan``, ``submit`` and
``dagflow validate`` run it first, before anything is made.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from typing import Any

import dask.config
import yaml

__all__ = ["DEFAULTS", "SCHEMA", "get", "resolve", "validate_config"]

_HERE = os.path.dirname(__file__)

with open(os.path.join(_HERE, "dagflow.yaml"), encoding="utf-8") as _f:
    DEFAULTS: dict[str, Any] = yaml.safe_load(_f)

dask.config.update_defaults(DEFAULTS)

with open(os.path.join(_HERE, "dagflow-schema.yaml"), encoding="utf-8") as _f:
    SCHEMA: dict[str, Any] = yaml.safe_load(_f)


_MISSING = object()


def get(key: str, default: Any = None) -> Any:
    """The value of ``dagflow.<key>`` (dotted, kebab-case), e.g. ``get("retry.attempts")``.

    Falls back to the shipped defaults when the Dask configuration was replaced wholesale
    (as test harnesses do) after dagflow registered them.
    """
    value = dask.config.get(f"dagflow.{key}", default=_MISSING)
    if value is _MISSING:
        value = dask.config.get(key, default=default, config=DEFAULTS["dagflow"])
    return value


def resolve(value: Any, key: str) -> Any:
    """``value`` unless it is ``None``, else the configured ``dagflow.<key>``."""
    return get(key) if value is None else value


def _canonical(config: Any, schema: Mapping[str, Any]) -> Any:
    """``config`` with keys spelled as in the schema (Dask treats ``_`` and ``-`` alike;
    environment variables give ``chunk_size`` for ``chunk-size``)."""
    if not isinstance(config, Mapping) or "properties" not in schema:
        return config
    props = schema["properties"]
    out = {}
    for key, value in config.items():
        name = key
        if isinstance(key, str) and key not in props:
            alt = key.replace("_", "-")
            name = alt if alt in props else key
        out[name] = _canonical(value, props.get(name, {}))
    return out


def _environment_variable(path: Sequence[Any]) -> str | None:
    """The ``DASK_...`` environment variable that sets the dotted key ``path``, if one does.

    Dask reads ``DASK_A__B_C=value`` as ``a.b-c`` (lower case; ``_`` and ``-`` alike).
    """
    wanted = [str(p).lower().replace("_", "-") for p in path]
    for name in os.environ:
        if name.startswith("DASK_") and wanted and \
                name[5:].lower().replace("_", "-").split("--") == wanted:
            return name
    return None


def _describe(error: Any, *, environment: bool = False) -> list[str]:
    """Readable lines for a jsonschema error, each naming its dotted key (and, with
    ``environment``, the environment variable that set it, if one did)."""
    keys = list(error.absolute_path)
    path = ".".join(str(p) for p in keys)

    def source(key_path: list[Any]) -> str:
        variable = _environment_variable(key_path) if environment else None
        return f" (set by the environment variable {variable})" if variable else ""

    if error.validator == "additionalProperties":
        known = sorted(error.schema.get("properties", {}))
        unexpected = sorted(set(error.instance) - set(known))
        lines = []
        for key in unexpected:
            dotted = f"{path}.{key}" if path else key
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {path + '.' + close[0]!r}?" if close else ""
            lines.append(f"unknown key {dotted!r}{hint} (known: {', '.join(known)})"
                         + source([*keys, key]))
        return lines
    if error.validator in ("oneOf", "anyOf"):
        expected = " or ".join(_expected(s) for s in error.validator_value)
        return [f"{path}: {error.instance!r} is not valid, expected {expected}" + source(keys)]
    return [f"{path or '<root>'}: {error.message}" + source(keys)]


def _expected(schema: Mapping[str, Any]) -> str:
    if "const" in schema:
        return repr(schema["const"])
    text = " or ".join(schema["type"]) if isinstance(schema.get("type"), list) \
        else str(schema.get("type", "a value"))
    if "minimum" in schema:
        text += f" >= {schema['minimum']}"
    return text


def validate_config(config: Mapping[str, Any] | str | os.PathLike[str] | None = None) -> None:
    """Check a configuration's ``dagflow`` section against ``dagflow-schema.yaml``.

    Parameters
    ----------
    config
        A configuration mapping with a top-level ``dagflow`` key (as in a Dask config
        file), the path of such a YAML file, or ``None`` for the configuration in force
        (``dask.config.config``). Other namespaces are not checked.

    Raises
    ------
    ConfigError
        Listing every problem, each naming its dotted key (``dagflow.retry.attemps``).

    Examples
    --------
    >>> validate_config({"dagflow": {"retry": {"attempts": 5}}})
    >>> validate_config({"dagflow": {"retry": {"attemps": 5}}})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    dagflow.exceptions.ConfigError: ... unknown key 'dagflow.retry.attemps'; did you mean ...
    """
    import jsonschema

    from dagflow.exceptions import ConfigError

    source = ""
    if config is None:
        config = dask.config.config
    elif isinstance(config, (str, os.PathLike)):
        source = f" in {os.fspath(config)}"
        with open(config, encoding="utf-8") as f:
            config = yaml.safe_load(f) or {}
    if not isinstance(config, Mapping):
        raise ConfigError(f"invalid dagflow configuration{source}: expected a mapping")
    section = {"dagflow": config["dagflow"]} if "dagflow" in config else {}
    section = _canonical(section, SCHEMA)
    validator = jsonschema.Draft7Validator(SCHEMA)
    errors = sorted(validator.iter_errors(section), key=lambda e: list(e.absolute_path))
    if not errors:
        return
    in_force = not source and config is dask.config.config
    problems = [line for e in errors for line in _describe(e, environment=in_force)]
    if len(problems) == 1:
        raise ConfigError(f"invalid dagflow configuration{source}: {problems[0]}")
    listing = "\n".join(f"  - {p}" for p in problems)
    raise ConfigError(f"invalid dagflow configuration{source}, {len(problems)} problems:\n"
                      f"{listing}")
