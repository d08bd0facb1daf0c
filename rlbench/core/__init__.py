"""The foundation layer: what every other layer may import and which imports no other rlbench layer.

Configuration (``config`` the typed sections, ``configure`` the one step that resolves a YAML file and ``--set``
overrides into them and checks every option), the registry of algorithms, tasks and reward functions, the run
folder's file formats (``results``), provenance (commit and versions), folder locks, parent-following for child
processes (``lifeline``) and the progress-bar switch (``bars``).
"""
