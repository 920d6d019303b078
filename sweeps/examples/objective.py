#!/usr/bin/env python3
"""A noisy objective for ladder's quickstart: a stand-in for a training run.

It "trains" for --steps steps, printing a metric line per step on stdout:

    @ladder {"step": 3, "loss": 0.81, "eval/acc": 0.42}

The loss decays toward a floor that depends on the learning rate (best near 3e-3),
the width (wider is better, with diminishing returns) and the optimizer. Noise is
seeded by LADDER_RUN_ID so a run's curve is reproducible. Everything else printed is
the run's log.
"""

import argparse
import json
import math
import os
import random
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sleep", type=float, default=0.02)
    args = parser.parse_args()

    run_id = os.environ.get("LADDER_RUN_ID", "local")
    params = json.loads(os.environ.get("LADDER_PARAMS", "{}"))
    print(f"run {run_id} starting with params {json.dumps(params, sort_keys=True)}")
    rng = random.Random(run_id)

    distance = abs(math.log10(args.lr) - math.log10(3e-3))
    floor = 0.15 + 0.35 * distance**2 + 2.0 / args.width
    if args.optimizer == "sgd":
        floor += 0.1
    loss = 2.5
    for step in range(1, args.steps + 1):
        loss = floor + (loss - floor) * 0.8 + rng.gauss(0, 0.01)
        acc = max(0.0, min(1.0, 1.0 - loss / 2.5 + rng.gauss(0, 0.005)))
        print("@ladder " + json.dumps({"step": step, "loss": round(loss, 5), "eval/acc": round(acc, 5)}), flush=True)
        if step % 5 == 0:
            print(f"step {step}: loss {loss:.4f}", file=sys.stderr, flush=True)
        time.sleep(args.sleep)
    print(f"done: final loss {loss:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
