"""rlbench: matched-budget head-to-head comparisons of RL algorithms for LLM reasoning."""

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

try:
    __version__ = version("rlbench")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

# In a source tree, algorithms/, tasks/ and configs/ sit beside rlbench/ and become rlbench.algorithms, rlbench.tasks
# and rlbench.configs. Searching this tree's root for them, after rlbench/ itself (where an installed wheel keeps
# them), makes them load from the same tree as this rlbench in every case: never installed, installed in editable
# mode, or a second checkout sharing a virtualenv whose editable install points at the first.
_TREE = Path(__file__).resolve().parent.parent
if all((_TREE / name / "__init__.py").is_file() for name in ("algorithms", "tasks", "configs")):
    __path__.append(str(_TREE))
