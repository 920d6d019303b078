#!/usr/bin/env python3
"""Exports public multiple-choice benchmarks from the Hugging Face hub into ladder's task
format (JSONL items plus a task YAML) with the prompts of lm-evaluation-harness 0.4.13,
so `ladder eval` and the trainer score exactly the requests lm-eval builds.

    pip install datasets
    python3 clients/python/export_tasks.py OUT_DIR [--shots N] [arc_challenge] [hellaswag] [mmlu] [truthfulqa_mc2]

With no task names it exports all four. Each task lands in OUT_DIR/<task>/ as
`test.jsonl` and `<task>.yaml`; MMLU writes one directory per subject
(`mmlu_<subject>`). Point the trainer at the YAML file and score it with 0 shots.

The few-shot examples are part of every item's `context`: each context is lm-eval's
whole prompt for that document (description, shots, the document's own text), drawn
the way lm-eval 0.4.13 draws them for `--num_fewshot N`: MMLU takes the first N dev
questions (`first_n`); ARC and HellaSwag use lm-eval's default sampler
(`random.Random(1234)` shared by the documents in order; HellaSwag draws N + 1 and
drops the scored document). ladder's own shot sampler cannot reproduce that order, so
the exported tasks have no few-shot pool: asking for shots on them is an error. `--shots`
defaults to the Open LLM Leaderboard (v1) settings: 25 for ARC, 10 for HellaSwag, 5
for MMLU; TruthfulQA-MC2 always gets 0, as in lm-eval, whose YAML pins it (its 6-shot
primer is part of the prompt).

This script downloads data, so CI runs only `clients/python/test_export_tasks.py`,
which checks the conversion against lm-eval's own task definitions on documents written
in the test; see docs/reference/train-config.md ("Exporting public benchmarks").
"""

import json
import os
import random
import re
import sys

# lm-eval's defaults: TaskConfig.target_delimiter / fewshot_delimiter, and
# DEFAULT_OTHER_SEED, the seed `simple_evaluate` gives the few-shot sampler.
TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"
FEWSHOT_SEED = 1234

# The Open LLM Leaderboard (v1) shot counts.
DEFAULT_SHOTS = {"arc_challenge": 25, "hellaswag": 10, "mmlu": 5, "truthfulqa_mc2": 0}

TRUTHFULQA_PRIMER = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain."
)


def write_jsonl(path, items):
    with open(path, "w", encoding="utf-8") as out:
        for item in items:
            out.write(json.dumps(item, ensure_ascii=False) + "\n")


def yaml_string(text):
    """A double-quoted YAML scalar; JSON string escapes are valid YAML."""
    return json.dumps(text, ensure_ascii=False)


def task_yaml(name, metric, shots):
    """The task file: no description and no few-shot pool, since both are in each
    item's context; the delimiters are lm-eval's."""
    return (
        f"# lm-evaluation-harness 0.4.13 `{name}` with num_fewshot {shots}: the description\n"
        "# and shots are part of each context, so score this task with 0 shots.\n"
        f"name: {name}\n"
        "test: test.jsonl\n"
        f"target_delimiter: {yaml_string(TARGET_DELIMITER)}\n"
        f"fewshot_delimiter: {yaml_string(FEWSHOT_DELIMITER)}\n"
        f"metric: {metric}\n"
    )


def write_task(out_dir, name, items, metric, shots):
    task_dir = os.path.join(out_dir, name)
    os.makedirs(task_dir, exist_ok=True)
    write_jsonl(os.path.join(task_dir, "test.jsonl"), items)
    with open(os.path.join(task_dir, f"{name}.yaml"), "w", encoding="utf-8") as out:
        out.write(task_yaml(name, metric, shots))
    print(f"{name}: {len(items)} items, {shots} shots -> {task_dir}/{name}.yaml")


# ---------------------------------------------------------------- few-shot sampling


class DefaultSampler:
    """lm-eval 0.4.13's `ContextSampler` (the `default` sampler): one `random.Random`
    for the whole task, drawn from once per scored document, in document order."""

    def __init__(self, pool, seed=FEWSHOT_SEED):
        self.pool = list(pool)
        self.rnd = random.Random(seed)

    def sample(self, n, eval_doc=None):
        if n == 0:
            return []
        if not self.pool:
            raise ValueError("no few-shot documents to sample from")
        if eval_doc is None:
            picked = self.rnd.sample(self.pool, n)
        else:
            # lm-eval draws one more and drops the scored document when the few-shot
            # split is the scored split (or, as for HellaSwag, both are unset).
            picked = [x for x in self.rnd.sample(self.pool, n + 1) if x != eval_doc][:n]
        if len(picked) < n:
            picked = self.rnd.sample([x for x in self.pool if x != eval_doc], n)
        return picked


class FirstNSampler:
    """lm-eval's `first_n` sampler: the first n documents of the few-shot split."""

    def __init__(self, pool):
        self.pool = list(pool)

    def sample(self, n, eval_doc=None):
        pool = [x for x in self.pool if x != eval_doc] if eval_doc is not None else self.pool
        if n > len(pool):
            raise ValueError(f"{n} shots asked for but the few-shot split has {len(pool)} documents")
        return pool[:n]


def build_items(docs, shots, sampler, text, choices, gold, description="", exclude_eval_doc=False):
    """ladder items whose contexts are lm-eval's plain-text prompts (`fewshot_context`):
    `description + (text + target_delimiter + gold choice + fewshot_delimiter) per shot
    + text`. `docs` are processed documents; `gold(doc)` is an index into `choices(doc)`."""
    items = []
    for doc in docs:
        prompt = description
        for shot in sampler.sample(shots, eval_doc=doc if exclude_eval_doc else None):
            prompt += text(shot) + TARGET_DELIMITER + choices(shot)[gold(shot)] + FEWSHOT_DELIMITER
        items.append({"context": prompt + text(doc), "choices": list(choices(doc)), "answer": gold(doc)})
    return items


# ---------------------------------------------------------------- ARC-Challenge


def arc_text(doc):
    return f"Question: {doc['question']}\nAnswer:"


def arc_choices(doc):
    return list(doc["choices"]["text"])


def arc_gold(doc):
    return list(doc["choices"]["label"]).index(doc["answerKey"])


def arc_items(test_docs, train_docs, shots):
    """lm-eval arc_challenge: test split scored, shots from train (default sampler)."""
    sampler = DefaultSampler(train_docs)
    return build_items(test_docs, shots, sampler, arc_text, arc_choices, arc_gold)


def export_arc(out_dir, shots):
    from datasets import load_dataset

    data = load_dataset("allenai/ai2_arc", "ARC-Challenge")
    write_task(out_dir, "arc_challenge", arc_items(list(data["test"]), list(data["train"]), shots), "acc_norm", shots)


# ---------------------------------------------------------------- HellaSwag


def hellaswag_preprocess(text):
    """lm-eval hellaswag `utils.preprocess`: strip WikiHow artifacts."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def hellaswag_process_doc(doc):
    """lm-eval hellaswag `utils.process_docs` for one document (`Dataset.map` keeps the
    original columns and adds these)."""
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return {
        **doc,
        "query": hellaswag_preprocess(doc["activity_label"] + ": " + ctx),
        "choices": [hellaswag_preprocess(ending) for ending in doc["endings"]],
        "gold": int(doc["label"]),
    }


def hellaswag_items(validation_docs, train_docs, shots):
    """lm-eval hellaswag: validation scored (test_split is null), shots from train with
    the default sampler; fewshot_split and test_split are both unset, so lm-eval draws
    shots + 1 and drops the scored document. The target is `{{label}}`."""
    sampler = DefaultSampler([hellaswag_process_doc(d) for d in train_docs])
    return build_items(
        [hellaswag_process_doc(d) for d in validation_docs],
        shots,
        sampler,
        lambda doc: doc["query"],
        lambda doc: doc["choices"],
        lambda doc: int(doc["label"]),
        exclude_eval_doc=True,
    )


def export_hellaswag(out_dir, shots):
    from datasets import load_dataset

    data = load_dataset("Rowan/hellaswag")
    items = hellaswag_items(list(data["validation"]), list(data["train"]), shots)
    write_task(out_dir, "hellaswag", items, "acc_norm", shots)


# ---------------------------------------------------------------- MMLU


def mmlu_description(subject):
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def mmlu_text(doc):
    a, b, c, d = doc["choices"]
    return f"{doc['question'].strip()}\nA. {a}\nB. {b}\nC. {c}\nD. {d}\nAnswer:"


def mmlu_items(subject, test_docs, dev_docs, shots):
    """lm-eval mmlu_<subject>: test scored, the first `shots` dev questions (first_n)."""
    return build_items(
        test_docs,
        shots,
        FirstNSampler(dev_docs),
        mmlu_text,
        lambda doc: ["A", "B", "C", "D"],
        lambda doc: int(doc["answer"]),
        description=mmlu_description(subject),
    )


def export_mmlu(out_dir, shots):
    from datasets import get_dataset_config_names, load_dataset

    subjects = [s for s in get_dataset_config_names("cais/mmlu") if s not in ("all", "auxiliary_train")]
    for subject in subjects:
        data = load_dataset("cais/mmlu", subject)
        items = mmlu_items(subject, list(data["test"]), list(data["dev"]), shots)
        write_task(out_dir, f"mmlu_{subject}", items, "acc", shots)


# ---------------------------------------------------------------- TruthfulQA-MC2


def truthfulqa_items(validation_docs):
    """lm-eval truthfulqa_mc2: validation scored with 0 shots (its YAML pins num_fewshot:
    0, which lm-eval keeps whatever --num_fewshot says); the primer is in doc_to_text."""
    items = []
    for doc in validation_docs:
        targets = doc["mc2_targets"]
        items.append(
            {
                "context": f"{TRUTHFULQA_PRIMER}\n\nQ: {doc['question']}\nA:",
                "mc2_targets": {"choices": list(targets["choices"]), "labels": [int(x) for x in targets["labels"]]},
            }
        )
    return items


def export_truthfulqa(out_dir, shots):
    from datasets import load_dataset

    del shots  # pinned to 0, as lm-eval does
    data = load_dataset("truthfulqa/truthful_qa", "multiple_choice")
    write_task(out_dir, "truthfulqa_mc2", truthfulqa_items(list(data["validation"])), "mc2", 0)


EXPORTERS = {
    "arc_challenge": export_arc,
    "hellaswag": export_hellaswag,
    "mmlu": export_mmlu,
    "truthfulqa_mc2": export_truthfulqa,
}


def main(argv):
    args = argv[1:]
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args else 2
    shots = None
    if "--shots" in args:
        at = args.index("--shots")
        try:
            shots = int(args[at + 1])
        except (IndexError, ValueError):
            print("--shots takes a number", file=sys.stderr)
            return 2
        if shots < 0:
            print("--shots must be 0 or more", file=sys.stderr)
            return 2
        del args[at : at + 2]
    out_dir, names = args[0], args[1:] or list(EXPORTERS)
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        print(f"unknown task(s) {unknown}; expected some of {list(EXPORTERS)}", file=sys.stderr)
        return 2
    os.makedirs(out_dir, exist_ok=True)
    for name in names:
        EXPORTERS[name](out_dir, DEFAULT_SHOTS[name] if shots is None else shots)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
