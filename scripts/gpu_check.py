"""The Python half of ``scripts/gpu-check.sh``: the wheels a GPU machine lacks, and what
the machine has.

``wheels``: resolve dagflow's dependencies and dask-cuda's (without its CUDA extra: the
GPU machines bring their own cupy, CUDA bindings and toolkit) for CPython 3.12 on
manylinux x86_64
with pip's resolver (a dry run, nothing installed), keep the distributions that the
image's package list (``scripts/gpu-image-packages.txt``) does not name, and download
exactly those, one version each, with ``pip download --no-deps``. Also downloaded:
nvImageCodec and nvJPEG (GPU JPEG decoding, for the benchmark's decoder figures;
``--no-decoders`` leaves them out) and, into ``build/``, the build backend of an
offline ``pip install -e .``. Wheels of other versions are removed, and the total is
checked against what a GPU machine call carries (64 MiB with the working tree).

``env``: write what the machine has as JSON: Python, the GPU (``nvidia-smi``), the
versions of the packages the check depends on, whether ``dask_cuda``, ``cupy`` and
``cupyx.scipy.ndimage`` import, whether dagflow finds the GPU usable (and if not, why),
and which GPU JPEG decoders import.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: pip's flags for the GPU machines' interpreter and platform.
TARGET = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
          "--abi", "cp312", "--abi", "abi3", "--abi", "none",
          *[f for tag in ("manylinux_2_39_x86_64", "manylinux_2_35_x86_64",
                          "manylinux_2_34_x86_64", "manylinux_2_31_x86_64",
                          "manylinux_2_28_x86_64", "manylinux_2_27_x86_64",
                          "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
                          "manylinux2014_x86_64", "manylinux_2_12_x86_64",
                          "manylinux2010_x86_64", "manylinux_2_5_x86_64",
                          "manylinux1_x86_64", "linux_x86_64")
            for f in ("--platform", tag)]]
#: GPU JPEG decoding for CUDA 13 (the benchmark's decoder figures).
DECODERS = ["nvidia-nvimgcodec-cu13", "nvidia-nvjpeg"]
#: The build backend of ``pip install -e .`` (pyproject.toml's build-system).
BUILD = ["setuptools>=77", "wheel"]
#: What one call to a GPU machine may carry: the working tree and the wheels.
LIMIT = 64 * 2**20


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements() -> list[str]:
    """dagflow's dependencies and its CUDA 13 extra's, less cupy and the extras' CUDA
    libraries: the image has its own cupy, CUDA bindings and toolkit (the cu13 extra's
    NVVM alone is 72 MiB, and dask-cuda does not need it to import)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extra = project["optional-dependencies"]["gpu-cuda13"]
    return [*project["dependencies"],
            *(re.sub(r"\[.*?\]", "", r) for r in extra if not r.startswith("cupy"))]


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                   check=True)


def resolve(reqs: list[str]) -> list[tuple[str, str]]:
    """(name, version) of every distribution ``reqs`` need on the GPU machines."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        _pip("install", "--quiet", "--dry-run", "--ignore-installed", "--report",
             os.fspath(report), "--target", os.fspath(Path(tmp) / "t"), *TARGET, *reqs)
        installs = json.loads(report.read_text(encoding="utf-8"))["install"]
    return [(i["metadata"]["name"], i["metadata"]["version"]) for i in installs]


def image_packages(path: Path) -> set[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return {canonical(line.strip()) for line in lines if line.strip()
            and not line.startswith("#")}


def _wheel_name(path: Path) -> str:
    return canonical(path.name.split("-")[0])


def download(pins: list[str], dest: Path, *, deps: bool = False) -> None:
    """Download ``pins`` (with their dependencies if ``deps``) into ``dest``, and remove
    the other wheels there."""
    dest.mkdir(parents=True, exist_ok=True)
    _pip("download", "--quiet", *([] if deps else ["--no-deps"]), *TARGET, "-d",
         os.fspath(dest), *pins)
    if deps:
        return
    wanted = {canonical(re.split(r"[=<>!~ ]", p, maxsplit=1)[0]) for p in pins}
    versions = {canonical(re.split(r"[=<>!~ ]", p, maxsplit=1)[0]): p for p in pins}
    for wheel in dest.glob("*.whl"):  # one version each: two stop an offline install
        name = _wheel_name(wheel)
        pin = versions.get(name, "")
        version = wheel.name.split("-")[1]
        if name not in wanted or ("==" in pin and pin.split("==", 1)[1] != version):
            wheel.unlink()


def tree_bytes() -> int:
    """Bytes of the working tree a call to a GPU machine carries (tracked files and
    untracked ones git does not ignore)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=ROOT, capture_output=True,
                            check=True).stdout.split(b"\0")
    return sum((ROOT / os.fsdecode(p)).stat().st_size for p in listed
               if p and (ROOT / os.fsdecode(p)).is_file())


def wheels(dest: Path, image: Path, decoders: bool) -> int:
    have = image_packages(image)
    resolved = resolve(requirements())
    missing = [f"{name}=={version}" for name, version in resolved
               if canonical(name) not in have]
    pins = missing + (DECODERS if decoders else [])
    download(pins, dest)
    shutil.rmtree(dest / "build", ignore_errors=True)  # an isolated build env: with deps
    download(BUILD, dest / "build", deps=True)
    files = sorted(dest.glob("*.whl")) + sorted((dest / "build").glob("*.whl"))
    total = sum(f.stat().st_size for f in files)
    for f in files:
        print(f"  {f.stat().st_size / 2**20:7.2f} MiB  {f.relative_to(dest)}")
    tree = tree_bytes()
    print(f"gpu-check: {len(files)} wheels, {total / 2**20:.1f} MiB; with the working tree "
          f"({tree / 2**20:.1f} MiB) {(total + tree) / 2**20:.1f} MiB of "
          f"{LIMIT / 2**20:.0f} MiB")
    print(f"gpu-check: the image has the other {len(resolved) - len(missing)} of the "
          f"{len(resolved)} distributions resolved")
    if total + tree > LIMIT:
        print("gpu-check: too much to carry; try --no-decoders", file=sys.stderr)
        return 1
    return 0


def _imports(name: str) -> str:
    try:
        module = __import__(name, fromlist=["_"])
        return f"ok {getattr(module, '__version__', '')}".strip()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def env(out: Path) -> None:
    info: dict[str, object] = {"python": platform.python_version(),
                               "executable": sys.executable}
    try:
        info["nvidia-smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True,
                                            text=True, timeout=30).stdout.strip()
    except Exception as exc:
        info["nvidia-smi"] = f"{type(exc).__name__}: {exc}"
    versions = {}
    for name in ("dask", "distributed", "dask-cuda", "rapids-dask-dependency", "bokeh",
                 "cupy-cuda13x", "cupy-cuda12x", "cuda-core", "cuda-bindings", "numpy",
                 "scipy", "pillow", "tifffile", "pyarrow", "pandas", "opencv-python-headless",
                 "nvidia-nvimgcodec-cu13", "nvidia-nvjpeg", "torch", "torchvision", "dagflow"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    info["versions"] = versions
    info["imports"] = {name: _imports(name) for name in
                       ("dask_cuda", "cupy", "cupyx.scipy.ndimage", "cupyx.scipy.sparse",
                        "nvidia.nvimgcodec", "torchvision.io")}
    try:
        from dagflow.ops.dispatch import gpu_problem

        info["dagflow_gpu_problem"] = gpu_problem()
    except Exception as exc:
        info["dagflow_gpu_problem"] = f"{type(exc).__name__}: {exc}"
    out.write_text(json.dumps(info, indent=2), encoding="utf-8")
    print(json.dumps(info, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/gpu_check.py")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("wheels", help="download the wheels a GPU machine lacks")
    w.add_argument("--dest", type=Path, required=True)
    w.add_argument("--image", type=Path, required=True)
    w.add_argument("--no-decoders", action="store_true")
    e = sub.add_parser("env", help="what this machine has, as JSON")
    e.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "wheels":
        return wheels(args.dest, args.image, not args.no_decoders)
    env(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
