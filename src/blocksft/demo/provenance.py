"""Where a demo's numbers came from: software versions, torch threads, CPU, code revision, load.

The same seed gives the same numbers only with the same torch version and on a CPU with the same
kernels (the instruction set torch dispatches to: AVX2 and AVX-512 round differently); a different
code revision may change anything. The thread count does not change them (a test checks it).
``demo.json`` records all of them.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

from blocksft.evaluate.runner import software_versions


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def code_revision(path: Path | None = None) -> dict | None:
    """``{"commit", "dirty"}`` of the git checkout holding ``path`` (default: this package), or None
    when it is not in one (an installed wheel). Dirty means tracked files differ from the commit."""
    folder = Path(path) if path is not None else Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit.strip(), "dirty": None if status is None else bool(status.strip())}


def run_environment(threads: int | str) -> dict:
    """Everything besides the settings that a demo's numbers and times depend on; ``threads`` is
    the thread setting (a count, or ``"auto"``)."""
    versions = software_versions()
    for package in ("tokenizers", "accelerate"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "versions": versions,
        "torch_threads": threads,
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "load_average_at_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "revision": code_revision(),
    }


def describe_environment(env: dict) -> str:
    """One line: ``torch 2.13.0+cpu, transformers 5.24.0, 2 torch threads, AMD EPYC (AVX512, 2 CPUs),
    commit 1234567 (clean)``."""
    versions = env["versions"]
    threads = env["torch_threads"]
    if threads == "auto":
        threads = "torch threads auto (the idle cores, stage by stage)"
    else:
        threads = f"{threads} torch thread{'s' if threads != 1 else ''}"
    return (
        f"torch {versions['torch']}, transformers {versions['transformers']}, {threads}, "
        f"{env['cpu']} ({env['cpu_capability']}, "
        f"{env['cpu_count']} CPUs), {describe_revision(env['revision'])}"
    )


def describe_revision(revision: dict | None) -> str:
    if revision is None:
        return "code revision unknown (not a git checkout)"
    state = {True: "uncommitted changes", False: "clean", None: "state unknown"}[revision["dirty"]]
    return f"commit {revision['commit'][:7]} ({state})"
