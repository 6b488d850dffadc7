"""The lock (requirements/constraints.txt) and pyproject.toml agree: every dependency that
pyproject.toml declares for dagflow and its test and bench extras is pinned in the lock,
at a version inside the declared range. (``make test-latest lock`` rewrites the lock.)"""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "constraints.txt"
LOCKED_EXTRAS = ("test", "bench")


def locked() -> dict[str, str]:
    """Package name -> pinned version, from the lock."""
    pins = {}
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"not a pin: {line!r} (make lock writes name==version)"
            pins[canonicalize_name(name)] = version
    return pins


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    lines = project["dependencies"] + [r for e in LOCKED_EXTRAS for r in extras[e]]
    return [Requirement(line) for line in lines]


def test_every_declared_dependency_is_pinned_in_its_range():
    pins = locked()
    assert len(pins) > len(declared())  # the dependencies of the dependencies too
    problems = []
    for req in declared():
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{req} is not in the lock")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{req} but the lock pins {pins[name]}")
    assert not problems, "; ".join(problems) + ": run `make test-latest lock`"


def test_the_lock_pins_nothing_of_this_repository():
    assert "dagflow" not in locked()  # the editable install is left out by `make lock`
