"""The ``rlbench`` command line (console script ``rlbench = rlbench.cli:main``; also ``python -m rlbench.cli``)."""

from rlbench.cli.group import main

__all__ = ["main"]
