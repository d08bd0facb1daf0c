"""Check that the active environment holds exactly the versions requirements.lock pins; exit 1 naming each one that
differs (scripts/setup.sh runs it last, so a setup that did not install the lock cannot pass unnoticed)."""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

LOCK = Path(__file__).resolve().parents[1] / "requirements.lock"
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s\\;]+)")


def pins(path: Path | None = None) -> dict[str, str]:
    """Package name (normalised) -> exact version, from a pip-compile lock file (default: requirements.lock)."""
    out = {}
    for line in (path or LOCK).read_text().splitlines():
        match = PIN.match(line)
        if match:
            out[normalise(match.group(1))] = match.group(2)
    return out


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main() -> int:
    wrong = []
    for name, version in pins().items():
        try:
            found = metadata.version(name)
        except metadata.PackageNotFoundError:
            found = "missing"
        if found != version:
            wrong.append(f"{name} {found} (lock: {version})")
    if wrong:
        print(f"setup: the environment differs from {LOCK.name}: " + "; ".join(wrong), file=sys.stderr)
        return 1
    print(f"setup: {len(pins())} packages at the versions {LOCK.name} pins")
    return 0


if __name__ == "__main__":
    sys.exit(main())
