#!/usr/bin/env python3
"""ladder's dispatch throughput next to Optuna's journal storage, on the same machine.

Runs `ladder bench dispatch` (a sweep of `true` commands on in-process agents, each run
placed, started as a process, reaped and its completion stored with fsync before it is
acknowledged), then Optuna with its journal file storage and WORKERS worker processes
(the multi-process mode its users run) doing the same number of trials, twice: with an
objective that returns at once (what Optuna users usually time), and with one that starts
`true` as a process like ladder does. Prints every figure and the medians.

Needs `pip install optuna==5.0.0` (not part of the test suite's requirements).

    python3 bench/dispatch_vs_optuna.py --ladder target/release/ladder --runs 1000 --repeat 3
"""

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time


def ladder_dispatch(ladder, runs, agents, slots):
    out = subprocess.run(
        [ladder, "bench", "dispatch", "--runs", str(runs), "--agents", str(agents),
         "--slots", str(slots), "--json"],
        check=True, capture_output=True, text=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    if result["completed"] != runs:
        raise SystemExit(f"ladder completed {result['completed']} of {runs} runs")
    return result["runs_per_second"]


def _worker(path, study_name, trials, spawn):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(path))
    # Random sampling, as ladder's grid needs no model: load_study's default sampler is
    # TPE, whose cost grows with the trials and would measure the sampler, not storage.
    study = optuna.load_study(study_name=study_name, storage=storage,
                              sampler=optuna.samplers.RandomSampler())

    def objective(trial):
        trial.suggest_int("i", 1, 1_000_000)
        if spawn:
            subprocess.run(["true"], check=True)
        return 0.0

    study.optimize(objective, n_trials=trials)


def optuna_journal(runs, workers, spawn):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "journal.log")
        storage = JournalStorage(JournalFileBackend(path))
        name = "bench"
        optuna.create_study(study_name=name, storage=storage,
                            sampler=optuna.samplers.RandomSampler(seed=0))
        share = [runs // workers + (1 if i < runs % workers else 0) for i in range(workers)]
        context = multiprocessing.get_context("fork")
        procs = [context.Process(target=_worker, args=(path, name, n, spawn)) for n in share]
        start = time.perf_counter()
        for p in procs:
            p.start()
        for p in procs:
            p.join()
            if p.exitcode != 0:
                raise SystemExit(f"an Optuna worker exited with {p.exitcode}")
        elapsed = time.perf_counter() - start
        done = len(optuna.load_study(study_name=name, storage=storage).trials)
        if done != runs:
            raise SystemExit(f"Optuna finished {done} of {runs} trials")
        return runs / elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ladder", default="target/release/ladder")
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    import optuna

    figures = {"ladder": [], "optuna": [], "optuna_spawn": []}
    for _ in range(args.repeat):
        figures["ladder"].append(ladder_dispatch(args.ladder, args.runs, args.agents, args.slots))
        figures["optuna"].append(optuna_journal(args.runs, args.workers, spawn=False))
        figures["optuna_spawn"].append(optuna_journal(args.runs, args.workers, spawn=True))
    labels = {
        "ladder": f"ladder bench dispatch ({args.agents} agents x {args.slots} slots, a process per run, fsync per group commit)",
        "optuna": f"Optuna {optuna.__version__} JournalFileBackend, {args.workers} workers, objective returns at once",
        "optuna_spawn": f"Optuna {optuna.__version__} JournalFileBackend, {args.workers} workers, objective runs `true`",
    }
    print(f"{args.runs} runs / trials, {args.repeat} alternating repetitions on {os.cpu_count()} cores")
    for key, values in figures.items():
        shown = " / ".join(f"{v:,.0f}" for v in values)
        print(f"  {labels[key]}: {shown} per second (median {statistics.median(values):,.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
