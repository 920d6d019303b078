#!/usr/bin/env python3
"""Exports public multiple-choice benchmarks from the Hugging Face hub into ladder's task
format (JSONL items plus a task YAML), with the prompts lm-evaluation-harness uses, so
`ladder-trainer` scores them the way the Open LLM Leaderboard did.

    pip install datasets
    python3 clients/python/export_tasks.py OUT_DIR [arc_challenge] [hellaswag] [mmlu] [truthfulqa_mc2]

With no task names it exports all four. Each task lands in OUT_DIR/<task>/ as
`test.jsonl`, `fewshot.jsonl` (when the benchmark has a few-shot split) and
`<task>.yaml`; MMLU writes one directory per subject (`mmlu_<subject>`). Point the
trainer at the YAML file. This script downloads data, so it does not run in CI; see
docs/reference/train-config.md ("Evaluation tasks") for the format.
"""

import json
import os
import re
import sys

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


def write_task(out_dir, name, test, fewshot, metric, description=""):
    task_dir = os.path.join(out_dir, name)
    os.makedirs(task_dir, exist_ok=True)
    write_jsonl(os.path.join(task_dir, "test.jsonl"), test)
    lines = [f"name: {name}", "test: test.jsonl"]
    if fewshot:
        write_jsonl(os.path.join(task_dir, "fewshot.jsonl"), fewshot)
        lines.append("fewshot: fewshot.jsonl")
    lines.append(f"metric: {metric}")
    if description:
        lines.append(f"description: {yaml_string(description)}")
    with open(os.path.join(task_dir, f"{name}.yaml"), "w", encoding="utf-8") as out:
        out.write("\n".join(lines) + "\n")
    print(f"{name}: {len(test)} items, {len(fewshot)} few-shot -> {task_dir}/{name}.yaml")


def arc_item(doc):
    """lm-eval arc_challenge: "Question: {question}\\nAnswer:", choices.text, answerKey index."""
    return {
        "context": f"Question: {doc['question']}\nAnswer:",
        "choices": list(doc["choices"]["text"]),
        "answer": list(doc["choices"]["label"]).index(doc["answerKey"]),
    }


def export_arc(out_dir):
    from datasets import load_dataset

    data = load_dataset("allenai/ai2_arc", "ARC-Challenge")
    write_task(
        out_dir,
        "arc_challenge",
        [arc_item(d) for d in data["test"]],
        [arc_item(d) for d in data["train"]],
        "acc_norm",
    )


def hellaswag_preprocess(text):
    """lm-eval hellaswag `preprocess`: strip WikiHow artifacts."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def hellaswag_item(doc):
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return {
        "context": hellaswag_preprocess(doc["activity_label"] + ": " + ctx),
        "choices": [hellaswag_preprocess(e) for e in doc["endings"]],
        "answer": int(doc["label"]),
    }


def export_hellaswag(out_dir):
    from datasets import load_dataset

    # The test split has no labels; lm-eval scores the validation split.
    data = load_dataset("Rowan/hellaswag")
    write_task(
        out_dir,
        "hellaswag",
        [hellaswag_item(d) for d in data["validation"]],
        [hellaswag_item(d) for d in data["train"]],
        "acc_norm",
    )


def mmlu_item(doc):
    a, b, c, d = doc["choices"]
    return {
        "context": f"{doc['question'].strip()}\nA. {a}\nB. {b}\nC. {c}\nD. {d}\nAnswer:",
        "choices": ["A", "B", "C", "D"],
        "answer": int(doc["answer"]),
    }


def export_mmlu(out_dir):
    from datasets import get_dataset_config_names, load_dataset

    subjects = [s for s in get_dataset_config_names("cais/mmlu") if s not in ("all", "auxiliary_train")]
    for subject in subjects:
        data = load_dataset("cais/mmlu", subject)
        # dev holds exactly 5 questions per subject; ladder keeps sampled shots in pool
        # order, so 5 shots reproduce lm-eval's first_n sampler.
        write_task(
            out_dir,
            f"mmlu_{subject}",
            [mmlu_item(d) for d in data["test"]],
            [mmlu_item(d) for d in data["dev"]],
            "acc",
            description=f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n",
        )


def truthfulqa_item(doc):
    targets = doc["mc2_targets"]
    return {
        "context": f"{TRUTHFULQA_PRIMER}\n\nQ: {doc['question']}\nA:",
        "mc2_targets": {"choices": list(targets["choices"]), "labels": [int(x) for x in targets["labels"]]},
    }


def export_truthfulqa(out_dir):
    from datasets import load_dataset

    data = load_dataset("truthfulqa/truthful_qa", "multiple_choice")
    # The 6-shot primer is part of every context: score it with 0 shots.
    write_task(out_dir, "truthfulqa_mc2", [truthfulqa_item(d) for d in data["validation"]], [], "mc2")


EXPORTERS = {
    "arc_challenge": export_arc,
    "hellaswag": export_hellaswag,
    "mmlu": export_mmlu,
    "truthfulqa_mc2": export_truthfulqa,
}


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__)
        return 0 if len(argv) >= 2 else 2
    out_dir = argv[1]
    names = argv[2:] or list(EXPORTERS)
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        print(f"unknown task(s) {unknown}; expected some of {list(EXPORTERS)}", file=sys.stderr)
        return 2
    os.makedirs(out_dir, exist_ok=True)
    for name in names:
        EXPORTERS[name](out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
