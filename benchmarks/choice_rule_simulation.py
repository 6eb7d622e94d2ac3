"""Operating characteristics of ``anomalign run``'s validation choice, simulated: how often each rule adopts an
arm that does not help (false adoption), and how often it adopts one that does (power).

    python benchmarks/choice_rule_simulation.py                      # prints the tables (about 2 min, 1 core)
    python benchmarks/choice_rule_simulation.py --doc docs/run.md    # also writes them into the doc's section

Both rules are the project's own functions: the new one (``choice.choose``: one-sided paired t, Holm over the
arms, at least ``MIN_VAL_ANOMALIES`` val anomalies) and the old one, the rule before issue 45
(``choice.choose_bootstrap``: 5 % percentile-bootstrap bound per arm, no correction, no minimum). Both with
min_gain 1 point, as the plan sets it. (Internally the old rule is called "today".)

The model of the val split (issue 45): three arms forked from one baseline, so the arms' per-image gains share
the baseline's per-image noise. Per image i and arm a: gain_ai = delta_a + e_ai - e_0i, with e_0 (the
baseline's) and e_a (each arm's) independent and of equal spread, so a gain's sd is ``sd`` (12 IoU points, the
spread implied by docs/run.md's bootstrap bounds) and two arms' gains correlate 0.5. Two shapes of noise:
"normal", and "skewed" (each arm's own noise is sd * (1 - Exp(1)): most images gain a little, a few lose a lot,
the case a t-test handles worst at small n). No true gain: delta = 0 for every arm. Power: one arm with
delta = +2 or +3 points, the two others at 0. The cross-fitted statistics (``choice.choose_cv``): the same gains
in 5 folds, each fold's models adding a shift (sd ``tau``) to all of its images' gains.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
import time
from pathlib import Path

import numpy as np

from anomalign.evaluation.choice import MIN_VAL_ANOMALIES, choose, choose_bootstrap, choose_cv

NS = (1, 2, 5, 10, 20, 40, 100)
# (val anomalies, true gain): the n = 40 and 100, and 320, about where a one-sided 5 % test with Holm over
# three arms reaches 0.8 for +2 points at sd 12 (normal approximation: ((2.13 + 0.84) * 12 / 2)^2 = 318)
POWER = ((40, 0.02), (40, 0.03), (100, 0.02), (100, 0.03), (320, 0.02))
ARMS = ("synthetic", "feedback", "both")
# (labelled anomalies, true gain of one arm, fold effect sd) for the cross-fitted statistics, 5 folds
CV_CASES = ((40, 0.0, 0.0), (100, 0.0, 0.0), (100, 0.0, 0.02), (100, 0.02, 0.0), (100, 0.02, 0.02), (320, 0.02, 0.0))
MARK_START, MARK_END = "<!-- choice-rule-simulation: start -->", "<!-- choice-rule-simulation: end -->"


def simulate_gains(rng: np.random.Generator, n: int, deltas: tuple[float, ...], sd: float = 0.12,
                   shape: str = "normal") -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One simulated val split: (baseline per-image IoU [n], arm -> per-image IoU [n]) with the gains of the
    module docstring (the IoUs themselves are 0.5 + noise: the rules only see differences)."""
    half = sd / math.sqrt(2)
    base_noise = rng.normal(0, half, n)
    arms = {}
    for name, delta in zip(ARMS, deltas):
        own = rng.normal(0, half, n) if shape == "normal" else half * (1 - rng.exponential(1.0, n))
        arms[name] = 0.5 + delta + own
    return 0.5 + base_noise, arms


def simulate_folds(rng: np.random.Generator, n: int, folds: int, deltas: tuple[float, ...], tau: float,
                   sd: float = 0.12) -> tuple[list[np.ndarray], dict[str, list[np.ndarray]]]:
    """One simulated cross-fitting: ``n`` labelled anomalies in ``folds`` folds, each image's gain as in
    ``simulate_gains`` plus a fold effect shared by the fold's images (its two models: sd ``tau`` on the gain,
    correlated 0.5 between arms as the image noise is)."""
    sizes = [len(c) for c in np.array_split(np.arange(n), folds)]
    base_f, arms_f = [], {a: [] for a in ARMS}
    for size in sizes:
        base, arms = simulate_gains(rng, size, deltas, sd)
        shift0 = rng.normal(0, tau / math.sqrt(2))
        base_f.append(base + shift0)
        for a in ARMS:
            arms_f[a].append(arms[a] + rng.normal(0, tau / math.sqrt(2)))
    return base_f, arms_f


def cv_adoption_rate(rule: str, n: int, deltas: tuple[float, ...], tau: float, reps: int, seed: int,
                     folds: int = 5) -> float:
    """Share of ``reps`` simulated cross-fittings where ``rule`` adopts an arm: "cv" (``choose_cv``: t on the
    fold means) or "pooled" (``choose`` on all held-out images as if independent: what ignoring the folds does)."""
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(reps):
        base_f, arms_f = simulate_folds(rng, n, folds, deltas, tau)
        if rule == "cv":
            chosen = choose_cv(base_f, arms_f, min_gain=0.01)["chosen"]
        else:
            chosen = choose(np.concatenate(base_f), {a: np.concatenate(v) for a, v in arms_f.items()},
                            min_gain=0.01)["chosen"]
        hits += chosen != "baseline"
    return hits / reps


def adoption_rate(rule: str, n: int, deltas: tuple[float, ...], reps: int, seed: int, shape: str = "normal",
                  min_images: int = MIN_VAL_ANOMALIES, want: str | None = None) -> float:
    """Share of ``reps`` simulated splits where ``rule`` ("today", "new", "new-no-minimum") adopts an arm (``want``:
    that arm only)."""
    rng = np.random.default_rng(seed)
    hits = 0
    for r in range(reps):
        base, arms = simulate_gains(rng, n, deltas, shape=shape)
        if rule == "today":
            chosen = choose_bootstrap(base, arms, min_gain=0.01, seed=r)
        else:
            chosen = choose(base, arms, min_gain=0.01, min_images=2 if rule == "new-no-minimum" else min_images)["chosen"]
        hits += chosen != "baseline" if want is None else chosen == want
    return hits / reps


def tables(reps: int, seed: int = 0, progress: bool = True) -> tuple[str, dict]:
    """The markdown tables and the numbers behind them."""
    numbers: dict = {"false": {}, "power": {}}
    rows = []
    for n in NS:
        t0 = time.perf_counter()
        row = {rule: adoption_rate(rule, n, (0.0, 0.0, 0.0), reps, seed + n) for rule in ("today", "new")}
        row |= {f"{rule} skewed": adoption_rate(rule, n, (0.0, 0.0, 0.0), reps, seed + 1000 + n, shape="skewed")
                for rule in ("today", "new", "new-no-minimum")}
        numbers["false"][n] = row
        rows.append(f"| {n} | {100 * row['today']:.1f} | {100 * row['new']:.1f} | {100 * row['today skewed']:.1f} | "
                    f"{100 * row['new skewed']:.1f} | {100 * row['new-no-minimum skewed']:.1f} |")
        if progress:
            print(f"n={n}: {row} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    false_table = "\n".join([
        "| val anomalies | old rule | new rule | old rule, skewed | new rule, skewed | new rule without the "
        f"minimum of {MIN_VAL_ANOMALIES}, skewed |",
        "|---|---|---|---|---|---|", *rows])
    rows = []
    for n, delta in POWER:
        row = {rule: adoption_rate(rule, n, (delta, 0.0, 0.0), reps, seed + 7 * n + int(1000 * delta))
               for rule in ("today", "new")}
        row |= {f"{rule} right arm": adoption_rate(rule, n, (delta, 0.0, 0.0), reps,
                                                     seed + 7 * n + int(1000 * delta), want=ARMS[0])
                for rule in ("today", "new")}
        numbers["power"][(n, delta)] = row
        rows.append(f"| {n} | +{100 * delta:.0f} | {100 * row['today']:.1f} ({100 * row['today right arm']:.1f}) | "
                    f"{100 * row['new']:.1f} ({100 * row['new right arm']:.1f}) |")
        if progress:
            print(f"power n={n} delta={delta}: {row}", file=sys.stderr, flush=True)
    power_table = "\n".join([
        "| val anomalies | true gain of one arm (points) | old rule: adopts an arm (the right one), % | new rule, % |",
        "|---|---|---|---|", *rows])
    rows = []
    for n, delta, tau in CV_CASES:
        row = {rule: cv_adoption_rate(rule, n, (delta, 0.0, 0.0), tau, reps, seed + 31 * n + int(1000 * delta)
                                      + int(1000 * tau)) for rule in ("cv", "pooled")}
        numbers.setdefault("cv", {})[(n, delta, tau)] = row
        rows.append(f"| {n} | +{100 * delta:.0f} | {100 * tau:.0f} | {100 * row['cv']:.1f} | {100 * row['pooled']:.1f} |")
        if progress:
            print(f"cv n={n} delta={delta} tau={tau}: {row}", file=sys.stderr, flush=True)
    cv_table = "\n".join([
        "| labelled anomalies (5 folds) | true gain of one arm (points) | fold effect sd (points) | cross-fitted rule "
        "(t on fold means), % adopted | all held-out images pooled as independent, % adopted |",
        "|---|---|---|---|---|", *rows])
    text = (f"False adoption, % of {reps} simulated val splits where an arm replaced the baseline though no arm "
            f"gains (three arms, per-image gain sd 12 points):\n\n{false_table}\n\nPower, % of {reps} simulated "
            f"splits where an arm was adopted when one arm truly gains (the two others 0):\n\n{power_table}\n\n"
            f"The cross-fitted choice's statistics (``choose_cv``, `run --choice cv`), % of {reps} "
            f"simulated 5-fold cross-fittings where an arm was adopted (+0: false adoption):\n\n{cv_table}\n")
    return text, numbers


def write_doc(doc: Path, text: str, header: str) -> None:
    """Replace the block between the markers in ``doc`` (added at the end of the file when missing)."""
    old = doc.read_text()
    block = f"{MARK_START}\n{header}\n\n{text}{MARK_END}"
    if MARK_START in old and MARK_END in old:
        new = re.sub(re.escape(MARK_START) + ".*?" + re.escape(MARK_END), lambda _: block, old, flags=re.S)
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(new)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2000, help="simulated val splits per cell")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--doc", type=Path, default=None, help="write the tables into this doc's marked section")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    text, _ = tables(args.reps, args.seed)
    print(text)
    header = (f"`python benchmarks/choice_rule_simulation.py --reps {args.reps} --seed {args.seed} --doc docs/run.md` "
              f"({time.perf_counter() - t0:.0f} s); Monte Carlo standard error of a 5 % rate: "
              f"{100 * math.sqrt(0.05 * 0.95 / args.reps):.1f} points.")
    if args.doc is not None:
        write_doc(args.doc, text, header)
    return 0


if __name__ == "__main__":
    sys.exit(main())
