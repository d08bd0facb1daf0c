"""The leaderboard of comparison folders: reading them (inputs, runs), re-auditing them (audit, with audit_run,
crosscheck and regrade), the statistics and verdicts over seeds (stats, verdicts, behaviours), and the outputs
(build, markdown, html, tables, text, plots).

``build.write_report`` is the entry point; ``rlbench compare`` also reads folders with ``inputs`` and ``audit``.
"""
