"""Evaluation: the one protocol every run, comparison and `rlbench eval` uses, its metrics, and the lm-eval bridge."""
