"""The study layer: many runs compared under one matched budget, and what is read from them.

``compare`` lays out a comparison's runs (rows from ``variants``), ``executors`` decide where and when each runs,
``progress`` and ``snapshots`` show them live, ``tune`` searches settings on validation, and ``report`` audits the
finished folders and writes the leaderboard.
"""
