"""rlbench: matched-budget head-to-head comparisons of RL algorithms for LLM reasoning."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rlbench")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
