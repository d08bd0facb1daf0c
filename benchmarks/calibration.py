"""False-positive rates of the leaderboard's comparison tests when training runs differ by a random effect.

    python benchmarks/calibration.py [--replicates 1000] [--seeds 3] [--problems 500] [--resamples 1000] [--seed 0]

Simulates comparisons of two equally good algorithms (the null): per-problem difficulty shared by both, and each
(seed, algorithm) training run shifted by u ~ N(0, sigma_u) on every problem (``tests/calibration_sim.py`` has the
model). For sigma_u in {0, 2, 4, 7} percentage points it prints the fraction of replicates with p <= 0.05 for

* paired-t      -- the headline: paired t over seeds on per-seed accuracies (``stats.seed_test``);
* sign-flip     -- the exact sign-flip permutation test over seeds (only from 6 seeds: below, it cannot reach 0.05);
* crossed-boot  -- the old headline, ``stats.paired_bootstrap`` crossed over seeds and problems;
* problem-boot  -- seeds held fixed, problems resampled (``paired_bootstrap`` on per-problem accuracy averaged over
  seeds), i.e. what a per-problem / McNemar-style test does.

A calibrated test sits near 0.05 (binomial SE sqrt(.05 · .95 / replicates), printed below the table). All tests see
the same replicates. Deterministic for a given --seed. CPU only; the bootstraps dominate the run time.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from calibration_sim import Setting, crossed_bootstrap, paired_t, problems_bootstrap, rejection_rates, sign_flip  # noqa: E402

SIGMAS_PP = (0, 2, 4, 7)
ALPHA = 0.05


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicates", type=int, default=1000, help="simulated comparisons per sigma_u")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per algorithm")
    parser.add_argument("--problems", type=int, default=500, help="held-out problems")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples per replicate")
    parser.add_argument("--seed", type=int, default=0, help="simulation RNG seed")
    args = parser.parse_args(argv)

    tests = {"paired-t": paired_t}
    if args.seeds >= 6:
        tests["sign-flip"] = sign_flip
    tests["crossed-boot"] = crossed_bootstrap(args.resamples)
    tests["problem-boot"] = problems_bootstrap(args.resamples)

    print(
        f"FPR at alpha = {ALPHA}: {args.replicates} replicates, {args.seeds} seeds, {args.problems} problems, "
        f"{args.resamples} bootstrap resamples, seed {args.seed}"
    )
    header = ["sigma_u (pp)", "paired-t", "sign-flip", "crossed-boot", "problem-boot", "time (s)"]
    print(" | ".join(f"{h:>12}" for h in header))
    print("-+-".join("-" * 12 for _ in header))
    for i, sigma in enumerate(SIGMAS_PP):
        start = time.perf_counter()
        rates = rejection_rates(
            tests,
            Setting(sigma / 100, args.seeds, args.problems),
            args.replicates,
            seed=args.seed * 100 + i,
            alpha=ALPHA,
        )
        cells = [f"{sigma:>12}"] + [
            f"{rates[name]:>12.3f}" if name in rates else f"{'n/a':>12}" for name in header[1:5]
        ]
        print(" | ".join(cells + [f"{time.perf_counter() - start:>12.1f}"]), flush=True)
    se = math.sqrt(ALPHA * (1 - ALPHA) / args.replicates)
    band = f"{ALPHA - 1.96 * se:.3f}-{ALPHA + 1.96 * se:.3f}"
    print(
        f"binomial SE of a calibrated test's FPR: {se:.4f} (a 95% band: {band})"
        + ("" if args.seeds >= 6 else "; sign-flip n/a: with < 6 seeds its smallest p is 2/2^n > 0.05")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
