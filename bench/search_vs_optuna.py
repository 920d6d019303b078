#!/usr/bin/env python3
"""ladder's `method: bayes` next to Optuna 5's default TPESampler, on the same test functions.

Runs `ladder bench search --json` (random, multivariate TPE and univariate TPE), then
Optuna's `TPESampler(seed=s)` with its defaults (multivariate TPE for one objective,
10 start-up trials, constant liar) on the same functions, bounds, seeds (0..SEEDS-1) and
budget, and prints one table: median simple regret (best so far - global minimum) with its
interquartile range at 25, 50 and 100 trials, and the ratio of ladder's TPE to Optuna's.
Seeds are the same numbers, not the same random streams (each tool has its own generator).

Needs `pip install optuna==5.0.0 numpy` (not part of the test suite's requirements).

    python3 bench/search_vs_optuna.py --ladder target/release/ladder
    python3 bench/search_vs_optuna.py --optuna-only --save optuna.json   # Optuna alone
    python3 bench/search_vs_optuna.py --ladder target/release/ladder --load optuna.json
    python3 bench/search_vs_optuna.py --speed   # Optuna's proposal rate at 1,000 trials
"""

import argparse
import json
import math
import subprocess
import sys
import time

import numpy as np

FUNCTIONS = {
    # name: (bounds, global minimum)
    "branin": ([(-5.0, 10.0), (0.0, 15.0)], 5.0 / (4.0 * math.pi)),
    "hartmann6": ([(0.0, 1.0)] * 6, -3.32236801141551),
    "rosenbrock4": ([(-5.0, 10.0)] * 4, 0.0),
    "ackley5": ([(-32.768, 32.768)] * 5, 0.0),
}

HARTMANN_A = np.array([
    [10.0, 3.0, 17.0, 3.5, 1.7, 8.0],
    [0.05, 10.0, 17.0, 0.1, 8.0, 14.0],
    [3.0, 3.5, 1.7, 10.0, 17.0, 8.0],
    [17.0, 8.0, 0.05, 10.0, 0.1, 14.0],
])
HARTMANN_P = 1e-4 * np.array([
    [1312.0, 1696.0, 5569.0, 124.0, 8283.0, 5886.0],
    [2329.0, 4135.0, 8307.0, 3736.0, 1004.0, 9991.0],
    [2348.0, 1451.0, 3522.0, 2883.0, 3047.0, 6650.0],
    [4047.0, 8828.0, 8732.0, 5743.0, 1091.0, 381.0],
])
HARTMANN_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])


def evaluate(name, x):
    x = np.asarray(x, dtype=float)
    if name == "branin":
        x1, x2 = x
        b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
        return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10
    if name == "hartmann6":
        inner = (HARTMANN_A * (x - HARTMANN_P) ** 2).sum(axis=1)
        return float(-(HARTMANN_ALPHA * np.exp(-inner)).sum())
    if name == "rosenbrock4":
        return float(sum(100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2 for i in range(3)))
    if name == "ackley5":
        d = len(x)
        return float(-20 * math.exp(-0.2 * math.sqrt((x**2).sum() / d))
                     - math.exp(np.cos(2 * math.pi * x).sum() / d) + 20 + math.e)
    raise ValueError(name)


def optuna_curves(name, seeds, trials):
    """One regret curve per seed in `seeds`."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    bounds, minimum = FUNCTIONS[name]
    curves = []
    for seed in seeds:
        study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))

        def objective(trial):
            x = [trial.suggest_float(f"x{i + 1}", lo, hi) for i, (lo, hi) in enumerate(bounds)]
            return evaluate(name, x)

        study.optimize(objective, n_trials=trials)
        values = np.array([t.value for t in study.trials])
        curves.append((np.minimum.accumulate(values) - minimum).tolist())
    return curves


def optuna_proposal_rate(dims=6, observed=1000, rounds=3, calls=10):
    """Optuna's TPESampler proposals per second (ask + tell) with `observed` finished
    trials of a `dims`-dimensional uniform space, like `ladder bench search`'s last line."""
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng = np.random.default_rng(7)
    space = {f"x{d}": FloatDistribution(0.0, 1.0) for d in range(dims)}
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=1))
    for _ in range(observed):
        x = rng.random(dims)
        study.add_trial(create_trial(
            params={f"x{d}": float(x[d]) for d in range(dims)}, distributions=space,
            value=float(((x - 0.3) ** 2).sum())))
    rates = []
    for _ in range(rounds):
        began = time.perf_counter()
        for _ in range(calls):
            study.tell(study.ask(space), 1.0)
        rates.append(calls / (time.perf_counter() - began))
    return rates


def summarise(curves, at):
    values = np.array([c[at - 1] for c in curves])
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return median, q1, q3


def sig(x):
    if x == 0 or not math.isfinite(x):
        return str(x)
    magnitude = math.floor(math.log10(abs(x)))
    if -4 <= magnitude < 6:
        return f"{x:.{max(0, 3 - magnitude)}f}"
    return f"{x:.3e}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ladder", default="target/release/ladder")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=0, help="runs use seeds first..first+seeds-1")
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--optuna-only", action="store_true")
    parser.add_argument("--save", help="write Optuna's curves to this JSON file")
    parser.add_argument("--load", help="read Optuna's curves from this JSON file")
    parser.add_argument("--speed", action="store_true",
                        help="only time Optuna's proposals with 1,000 finished trials in 6 dims")
    args = parser.parse_args()
    if args.speed:
        rates = optuna_proposal_rate()
        print("optuna TPESampler proposals/s with 1000 finished trials in 6 dims, 3 rounds of 10:",
              ", ".join(f"{r:.0f}" for r in rates))
        return
    checkpoints = [t for t in (25, 50, 100) if t < args.trials] + [args.trials]

    if args.load:
        with open(args.load) as f:
            saved = json.load(f)
        if (saved["seeds"], saved.get("first_seed", 0), saved["trials"]) != (
            args.seeds, args.first_seed, args.trials
        ):
            sys.exit(f"{args.load} holds other seeds or another budget")
        optuna = saved["curves"]
    else:
        optuna = {}
        for name in FUNCTIONS:
            began = time.time()
            seeds = range(args.first_seed, args.first_seed + args.seeds)
            optuna[name] = optuna_curves(name, seeds, args.trials)
            print(f"optuna {name}: {time.time() - began:.1f}s", file=sys.stderr)
    if args.save:
        with open(args.save, "w") as f:
            json.dump({"seeds": args.seeds, "first_seed": args.first_seed, "trials": args.trials,
                       "curves": optuna}, f)

    rows = {}  # (function, tool) -> [(median, q1, q3) per checkpoint]
    for name, curves in optuna.items():
        rows[(name, "optuna-tpe")] = [summarise(curves, t) for t in checkpoints]
    if not args.optuna_only:
        out = subprocess.run(
            [args.ladder, "bench", "search", "--seeds", str(args.seeds),
             "--first-seed", str(args.first_seed), "--trials", str(args.trials), "--json"],
            check=True, capture_output=True, text=True,
        ).stdout
        result = json.loads(out.strip().splitlines()[-1])
        for row in result["results"]:
            at = {r["trials"]: (r["median"], r["q25"], r["q75"]) for r in row["regret"]}
            rows[(row["function"], "ladder-" + row["method"])] = [at[t] for t in checkpoints]

    last = args.first_seed + args.seeds - 1
    print(f"median simple regret [interquartile range] over {args.seeds} seeds ({args.first_seed}..{last})")
    header = f"{'function':<12} {'tool':<26}" + "".join(f" {'@' + str(t):>28}" for t in checkpoints)
    print(header)
    for name in FUNCTIONS:
        tools = [tool for (fn, tool) in rows if fn == name]
        for tool in tools:
            cells = "".join(
                f" {sig(m) + ' [' + sig(a) + ', ' + sig(b) + ']':>28}" for m, a, b in rows[(name, tool)]
            )
            print(f"{name:<12} {tool:<26}{cells}")
        if (name, "ladder-tpe") in rows:
            ratios = "".join(
                f" {'x' + format(l[0] / o[0], '.2f'):>28}"
                for l, o in zip(rows[(name, "ladder-tpe")], rows[(name, "optuna-tpe")])
            )
            print(f"{name:<12} {'ladder-tpe / optuna':<26}{ratios}")


if __name__ == "__main__":
    main()
