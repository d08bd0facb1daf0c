"""``python -m rlbench``: the same command line as ``rlbench``."""

from rlbench.cli.group import main

if __name__ == "__main__":
    main()
