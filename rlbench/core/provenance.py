"""Where a result came from: the exact code (git commit, and a hash of any uncommitted diff), the package versions and
the machine. Every run's summary and every comparison's manifest record them; ``rlbench report`` and
``rlbench reproduce`` say when results being pooled or compared differ in them.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

# what a run's numbers can depend on (numpy and scipy only reach the report)
PACKAGES = ("rlbench", "torch", "transformers", "accelerate", "datasets", "math-verify", "sympy", "numpy", "click")
_ROOT = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=_ROOT, capture_output=True, text=True, check=True).stdout


def code_version() -> str | None:
    """The git commit of the rlbench source tree; with uncommitted changes to tracked files ``<commit>+dirty.<hash>``,
    the hash (12 hex digits of sha256) naming the exact diff. None outside a git checkout (an installed wheel)."""
    try:
        if not (_ROOT / ".git").exists():
            return None
        sha = _git("rev-parse", "HEAD").strip()
        diff = _git("diff", "HEAD", "--binary")
    except (OSError, subprocess.CalledProcessError):
        return None
    if not diff:
        return sha
    return f"{sha}+dirty.{hashlib.sha256(diff.encode()).hexdigest()[:12]}"


def is_dirty(version: str | None) -> bool:
    return version is not None and "+dirty" in version


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }


def version_differences(by_source: dict[str, dict[str, Any] | None]) -> list[str]:
    """``package: v1 (a, b) vs v2 (c)`` for every package whose version differs between sources (runs or folders),
    in package order; sources that recorded no versions are left out."""
    lines = []
    names = sorted({name for versions in by_source.values() if versions for name in versions})
    for name in names:
        seen: dict[Any, list[str]] = {}
        for source, versions in by_source.items():
            if versions:
                seen.setdefault(versions.get(name), []).append(source)
        if len(seen) > 1:
            lines.append(f"{name}: " + " vs ".join(f"{v} ({', '.join(_short(s))})" for v, s in seen.items()))
    return lines


def _short(sources: list[str], at_most: int = 4) -> list[str]:
    return sources if len(sources) <= at_most else [*sources[:at_most], f"{len(sources) - at_most} more"]
