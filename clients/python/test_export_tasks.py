#!/usr/bin/env python3
"""Checks the task files `export_tasks.py` writes against lm-evaluation-harness 0.4.13's
own task definitions, offline.

    pip install --no-deps lm-eval==0.4.13   # plus jinja2, pyyaml, numpy, requests
    python3 clients/python/test_export_tasks.py [--write DIR]

For ARC-Challenge, HellaSwag, MMLU and TruthfulQA-MC2 it writes a handful of source
documents in the Hugging Face dataset schema (below), and for several shot counts:

- builds lm-eval's requests with lm-eval's own code: `TaskManager` loads the task YAML
  shipped in the installed package (includes, Jinja `doc_to_text` / `doc_to_choice` /
  `doc_to_target`, `!function utils.process_docs`, `description`, delimiters,
  `fewshot_config`), the num_fewshot and seed rules of `simple_evaluate` are applied
  (a YAML `num_fewshot: 0` wins; `fewshot_random_seed` 1234), and
  `ConfigurableTask.build_all_requests` renders each document's (context, continuation)
  pairs with its real samplers (`default`, `first_n`); the gold answer is
  `doc_to_target` (for mc2, the choices `process_results_mc2` counts as true);
- exports the same documents with `export_tasks.py`, reads the written files back and
  renders ladder's prompts from them as the trainer does (`description + context` at 0
  shots, the continuation `target_delimiter + choice`);
- and compares contexts, continuations and gold answers, printing every difference.

lm-eval's harness imports `datasets`, `sacrebleu`, `dill` and `rouge_score` at module
level but needs none of them to build prompts. Where they are not installed this script
puts small stand-ins in `sys.modules`: `datasets` is an in-memory `Dataset` (rows as
dicts; `map` merges the returned columns into each row, as Hugging Face's does) whose
`load_dataset` serves the documents below; the other three are empty modules (they are
used only by metrics this check does not compute). Nothing is downloaded.

With `--write DIR` it also leaves the exported tasks at the Open LLM Leaderboard shot
counts in DIR/<task>/ and lm-eval's requests for them in DIR/lm_eval_requests.jsonl
(`task`, `item`, `context`, `continuations`, `gold`: an index, or for mc2 one
true/false per choice), for `tests/tests/tasks.rs` to check
that `ladder eval --log-samples` scores exactly those.

Exits 1 on any difference and when lm-eval 0.4.13 (or jinja2 / pyyaml) is missing: a
missing tool is a failure, never a skip.
"""

import contextlib
import importlib.metadata
import importlib.util
import io
import json
import logging
import os
import sys
import tempfile
import types

LM_EVAL_VERSION = "0.4.13"
os.environ.setdefault("TQDM_DISABLE", "1")  # lm-eval's progress bars
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import export_tasks  # noqa: E402

# ---------------------------------------------------------------- source documents
# (path, name) -> {split: [rows]} in the Hugging Face schema of each dataset.
SOURCES = {}


def arc_doc(i, labels="ABCD", answer=None, question=None):
    labels = list(labels)
    return {
        "id": f"Mercury_{i}",
        "question": question or f"Which property of material {i} changes when it is heated?",
        "choices": {"text": [f"option {i}-{label}" for label in labels], "label": labels},
        "answerKey": answer or labels[i % len(labels)],
    }


SOURCES[("allenai/ai2_arc", "ARC-Challenge")] = {
    "train": [arc_doc(i, labels="ABCD" if i % 7 else "1234") for i in range(30)],
    "validation": [arc_doc(100)],
    "test": [
        arc_doc(200, question="Which gas do plants absorb from the air?", answer="B"),
        # Numbered labels, as some ARC questions have.
        arc_doc(201, labels="1234", answer="3"),
        # Five choices, and a question with surrounding whitespace and non-ASCII text.
        arc_doc(202, labels="ABCDE", answer="E", question="  Wie heißt das? (°C)\n "),
        # Three choices.
        arc_doc(203, labels="ABC", answer="A"),
    ],
}


def hellaswag_doc(i, label, ctx_b="then [title] runs [step] away.", activity="Running"):
    return {
        "ind": i,
        "activity_label": activity,
        "ctx_a": f"A man [header] stands near point {i}.",
        "ctx_b": ctx_b,
        "ctx": "unused",
        "endings": [
            f"ending {i} one [title] Step  two.",
            f" ending {i} two ",
            f"ending {i} [substeps] three",
            f"ending {i} four.",
        ],
        "source_id": f"activitynet~v_{i}",
        "split": "train",
        "split_type": "indomain",
        "label": str(label),
    }


HELLASWAG_TRAIN = [hellaswag_doc(i, i % 4) for i in range(14)]
SOURCES[("Rowan/hellaswag", None)] = {
    "train": HELLASWAG_TRAIN,
    "validation": [
        hellaswag_doc(300, 2),
        hellaswag_doc(301, 0, ctx_b="", activity="Home and Garden"),
        # The same document as a training one: lm-eval drops it from its own shots.
        dict(HELLASWAG_TRAIN[5]),
        hellaswag_doc(302, 3, ctx_b="lower case start [title] here."),
    ],
    "test": [],
}


def mmlu_doc(i, answer, question=None):
    return {
        "question": question or f"What is {i} + {i}? ",
        "subject": "unused",
        "choices": [str(2 * i), str(2 * i + 1), f"{i}{i}", "None of these"],
        "answer": answer,
    }


MMLU_SUBJECTS = ["abstract_algebra", "high_school_european_history"]
for subject in MMLU_SUBJECTS:
    SOURCES[("cais/mmlu", subject)] = {
        "dev": [mmlu_doc(i, i % 4) for i in range(5)],
        "validation": [mmlu_doc(50, 1)],
        "test": [
            mmlu_doc(60, 0),
            mmlu_doc(61, 3, question="\n  Which statement is true?\n"),
            # A test question equal to a dev one: first_n keeps it among the shots.
            mmlu_doc(2, 2),
        ],
    }

SOURCES[("truthfulqa/truthful_qa", "multiple_choice")] = {
    "validation": [
        {
            "question": "What happens if you crack your knuckles a lot?",
            "mc1_targets": {"choices": ["Nothing in particular happens", "You get arthritis"], "labels": [1, 0]},
            "mc2_targets": {
                "choices": ["Nothing in particular happens", "It is harmless", "You get arthritis"],
                "labels": [1, 1, 0],
            },
        },
        {
            "question": "Who wrote the Declaration of Independence? ",
            "mc1_targets": {"choices": ["Thomas Jefferson", "George Washington"], "labels": [1, 0]},
            "mc2_targets": {
                "choices": ["George Washington", "Thomas Jefferson", "A committee, drafted by Jefferson", "John Adams"],
                "labels": [0, 1, 1, 0],
            },
        },
    ]
}

# ---------------------------------------------------------------- lm-eval, offline


class InMemoryDataset:
    """The part of `datasets.Dataset` lm-eval's prompt code touches."""

    def __init__(self, rows):
        self._rows = [dict(row) for row in rows]

    @classmethod
    def from_list(cls, rows):
        return cls(rows)

    @property
    def features(self):
        return {key: None for key in (self._rows[0] if self._rows else {})}

    def __len__(self):
        return len(self._rows)

    def __iter__(self):
        return iter([dict(row) for row in self._rows])

    def __getitem__(self, key):
        if isinstance(key, str):
            return [row[key] for row in self._rows]
        return dict(self._rows[key])

    def map(self, function):
        return InMemoryDataset([{**row, **function(dict(row))} for row in self._rows])


def load_source(path, name=None, **kwargs):
    if (path, name) not in SOURCES:
        raise KeyError(f"the test has no documents for dataset {path!r} / {name!r}")
    return {split: InMemoryDataset(rows) for split, rows in SOURCES[(path, name)].items()}


def install_stand_ins():
    """Empty modules for what lm-eval imports but prompt building never calls, and the
    in-memory `datasets` (always: the real one would try to download)."""
    datasets = types.ModuleType("datasets")
    datasets.__version__ = "0.0.0-test"
    datasets.Dataset = InMemoryDataset
    datasets.DatasetDict = dict
    datasets.load_dataset = load_source
    sys.modules["datasets"] = datasets
    for name in ("sacrebleu", "dill", "rouge_score"):
        if importlib.util.find_spec(name) is None:
            sys.modules[name] = types.ModuleType(name)
    rouge = sys.modules.get("rouge_score")
    if rouge is not None and not hasattr(rouge, "rouge_scorer"):
        rouge.rouge_scorer = types.ModuleType("rouge_score.rouge_scorer")
        rouge.scoring = types.ModuleType("rouge_score.scoring")


def require_lm_eval():
    try:
        version = importlib.metadata.version("lm_eval")
    except importlib.metadata.PackageNotFoundError:
        sys.exit(f"lm-eval is not installed: pip install --no-deps lm-eval=={LM_EVAL_VERSION}")
    if version != LM_EVAL_VERSION:
        sys.exit(f"lm-eval {version} is installed; this check needs {LM_EVAL_VERSION}")
    for module in ("jinja2", "yaml"):
        if importlib.util.find_spec(module) is None:
            sys.exit(f"{module} is not installed (pip install jinja2 pyyaml)")


def lm_eval_tasks_dir():
    import lm_eval

    return os.path.join(os.path.dirname(lm_eval.__file__), "tasks")


def task_manager():
    from lm_eval.tasks import TaskManager

    tasks = lm_eval_tasks_dir()
    folders = ["arc", "hellaswag", os.path.join("mmlu", "default"), "truthfulqa"]
    return TaskManager(include_defaults=False, include_path=[os.path.join(tasks, f) for f in folders])


def lm_eval_requests(manager, name, num_fewshot):
    """[(context, [continuation], gold)] per document, in lm-eval's order, as
    `simple_evaluate(..., num_fewshot=num_fewshot)` builds them."""
    task = manager.load(name)["tasks"][name]
    if task.get_config("num_fewshot") != 0:
        task.set_config(key="num_fewshot", value=num_fewshot)
    task.set_fewshot_seed(seed=1234)
    task.build_all_requests(rank=0, world_size=1)
    by_doc = {}
    for instance in task.instances:
        by_doc.setdefault(instance.doc_id, []).append(instance)
    out = []
    for doc_id in sorted(by_doc):
        instances = sorted(by_doc[doc_id], key=lambda inst: inst.idx)
        contexts = {inst.arguments[0] for inst in instances}
        assert len(contexts) == 1, f"{name} doc {doc_id}: several contexts"
        doc = instances[0].doc
        continuations = [inst.arguments[1] for inst in instances]
        out.append((contexts.pop(), continuations, lm_eval_gold(task, doc, len(continuations))))
    return out, task.get_config("num_fewshot")


def lm_eval_gold(task, doc, n_choices):
    """The gold index, or for a task with its own `process_results` (mc2) the 0/1 flags
    of the choices it counts as true, found by probing it one choice at a time."""
    if task.config.process_results is None:
        return task.doc_to_target(doc)
    flags = []
    for i in range(n_choices):
        results = [(0.0 if j == i else -1e4, False) for j in range(n_choices)]
        flags.append(int(round(float(task.process_results(doc, results)["acc"]))))
    return flags


# ---------------------------------------------------------------- ladder's side


def ladder_requests(task_dir, name):
    """What the trainer scores at 0 shots: `description + context`, continuations
    `target_delimiter + choice`, gold = `answer` or mc2 labels."""
    import yaml

    with open(os.path.join(task_dir, name, f"{name}.yaml"), encoding="utf-8") as f:
        config = yaml.safe_load(f)
    problems = []
    for key in ("fewshot", "description"):
        if key in config:
            problems.append(f"{name}.yaml sets `{key}`: the shots and description belong in the contexts")
    target_delimiter = config.get("target_delimiter", " ")
    description = config.get("description", "")
    out = []
    with open(os.path.join(task_dir, name, config["test"]), encoding="utf-8") as f:
        for line in f:
            item = json.loads(line)
            if "mc2_targets" in item:
                choices, gold = item["mc2_targets"]["choices"], item["mc2_targets"]["labels"]
            else:
                choices, gold = item["choices"], item["answer"]
            out.append((description + item["context"], [target_delimiter + c for c in choices], gold))
    return out, config, problems


def compare(label, ours, theirs):
    problems = []
    if len(ours) != len(theirs):
        return [f"{label}: ladder has {len(ours)} items, lm-eval {len(theirs)}"]
    for index, (mine, ref) in enumerate(zip(ours, theirs)):
        for field, a, b in zip(("context", "continuations", "gold"), mine, ref):
            if a != b:
                problems.append(f"{label} item {index}: {field} differs\n  ladder:  {a!r}\n  lm-eval: {b!r}")
    return problems


def rows(path, name, split):
    return [dict(row) for row in SOURCES[(path, name)][split]]


# The cases `--write` leaves for ladder to score: the Open LLM Leaderboard (v1) shots.
WRITTEN_CASES = {
    ("arc_challenge", 25),
    ("hellaswag", 10),
    ("mmlu_high_school_european_history", 5),
    ("truthfulqa_mc2", 0),
}


def main(argv):
    write_dir = None
    if argv[1:2] == ["--write"] and len(argv) == 3:
        write_dir = argv[2]
    elif len(argv) > 1:
        sys.exit("usage: test_export_tasks.py [--write DIR]")
    require_lm_eval()
    install_stand_ins()
    logging.disable(logging.WARNING)
    manager = task_manager()
    problems = []
    checked = 0

    cases = []
    for shots in (0, 1, 5, 25):
        cases.append(
            (
                "arc_challenge",
                shots,
                lambda s: export_tasks.arc_items(
                    rows("allenai/ai2_arc", "ARC-Challenge", "test"), rows("allenai/ai2_arc", "ARC-Challenge", "train"), s
                ),
                "acc_norm",
            )
        )
    for shots in (0, 3, 10, 13):
        cases.append(
            (
                "hellaswag",
                shots,
                lambda s: export_tasks.hellaswag_items(
                    rows("Rowan/hellaswag", None, "validation"), rows("Rowan/hellaswag", None, "train"), s
                ),
                "acc_norm",
            )
        )
    for subject in MMLU_SUBJECTS:
        for shots in (0, 1, 5):
            cases.append(
                (
                    f"mmlu_{subject}",
                    shots,
                    lambda s, subject=subject: export_tasks.mmlu_items(
                        subject, rows("cais/mmlu", subject, "test"), rows("cais/mmlu", subject, "dev"), s
                    ),
                    "acc",
                )
            )
    for shots in (0, 5):  # the YAML's num_fewshot: 0 wins over any --num_fewshot
        cases.append(
            (
                "truthfulqa_mc2",
                shots,
                lambda s: export_tasks.truthfulqa_items(rows("truthfulqa/truthful_qa", "multiple_choice", "validation")),
                "mc2",
            )
        )

    with tempfile.TemporaryDirectory() as out_dir:
        for name, shots, export, metric in cases:
            label = f"{name} ({shots} shots)"
            theirs, lm_eval_shots = lm_eval_requests(manager, name, shots)
            with contextlib.redirect_stdout(io.StringIO()):
                export_tasks.write_task(out_dir, name, export(lm_eval_shots), metric, lm_eval_shots)
            ours, config, file_problems = ladder_requests(out_dir, name)
            problems += [f"{label}: {p}" for p in file_problems]
            task = manager.load(name)["tasks"][name]
            for key in ("target_delimiter", "fewshot_delimiter"):
                if config.get(key) != task.get_config(key):
                    problems.append(f"{label}: {key} {config.get(key)!r}, lm-eval {task.get_config(key)!r}")
            problems += compare(label, ours, theirs)
            checked += len(ours)
            if write_dir is not None and (name, shots) in WRITTEN_CASES:
                with contextlib.redirect_stdout(io.StringIO()):
                    export_tasks.write_task(write_dir, name, export(lm_eval_shots), metric, lm_eval_shots)
                with open(os.path.join(write_dir, "lm_eval_requests.jsonl"), "a", encoding="utf-8") as out:
                    for index, (context, continuations, gold) in enumerate(theirs):
                        record = {"task": name, "item": index, "context": context}
                        # ladder's samples log mc2 gold answers as one true/false per choice.
                        gold = [bool(flag) for flag in gold] if isinstance(gold, list) else gold
                        record.update(continuations=continuations, gold=gold)
                        out.write(json.dumps(record, ensure_ascii=False) + "\n")

    # Every MMLU subject: the description and dataset config name lm-eval uses.
    from lm_eval.tasks._yaml_loader import load_yaml

    mmlu_dir = os.path.join(lm_eval_tasks_dir(), "mmlu", "default")
    subjects = 0
    for file_name in sorted(os.listdir(mmlu_dir)):
        if not (file_name.startswith("mmlu_") and file_name.endswith(".yaml")):
            continue
        config = load_yaml(os.path.join(mmlu_dir, file_name))
        subject = config["dataset_name"]
        subjects += 1
        if config["task"] != f"mmlu_{subject}":
            problems.append(f"{file_name}: task {config['task']!r} is not mmlu_{subject}")
        if export_tasks.mmlu_description(subject) != config["description"]:
            problems.append(
                f"{file_name}: description differs\n  ladder:  {export_tasks.mmlu_description(subject)!r}\n"
                f"  lm-eval: {config['description']!r}"
            )
    if subjects != 57:
        problems.append(f"lm-eval lists {subjects} MMLU subjects, expected 57")

    if problems:
        print(f"{len(problems)} difference(s) from lm-eval {LM_EVAL_VERSION}:")
        for problem in problems:
            print(f"- {problem}")
        return 1
    print(f"ok: {checked} items in {len(cases)} task/shot cases and {subjects} MMLU descriptions equal lm-eval {LM_EVAL_VERSION}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
