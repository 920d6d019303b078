//! Multiple-choice evaluation tasks: the built-in synthetic ones, JSONL item files and
//! YAML task files that point at them.
//!
//! A [`Task`] is a list of [`McItem`]s plus the prompt settings lm-evaluation-harness
//! keeps per task (delimiters, description, few-shot pool, primary metric);
//! [`crate::eval`] turns it into log-likelihood requests and scores. Every malformed
//! input is rejected here with its `file:line` and field, so scoring never sees a bad
//! item.

use std::path::{Path, PathBuf};

use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

use crate::error::{Result, TrainerError};
use crate::synthetic::{self, Split};

/// Number of items a built-in task evaluates when no limit is given.
pub const DEFAULT_BUILTIN_LIMIT: usize = 200;
/// Size of a built-in task's few-shot pool (drawn from its Train split).
const BUILTIN_FEWSHOT_POOL: usize = 64;
/// Seed that fixes which items a built-in task holds, so every run scores the same items.
const BUILTIN_TASK_SEED: u64 = 0x1adde5;

/// Which choices of an item are right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gold {
    /// Exactly one right choice, by index.
    Index(usize),
    /// TruthfulQA mc2 style: one flag per choice, at least one true.
    Labels(Vec<bool>),
}

/// One multiple-choice question. Invariants (checked by the loaders): `choices` is
/// non-empty, an `Index` is in range, `Labels` has one flag per choice and a true one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McItem {
    /// The prompt the choices continue, without the target delimiter.
    pub context: String,
    /// The candidate continuations as written in the data (no leading delimiter).
    pub choices: Vec<String>,
    pub gold: Gold,
}

impl McItem {
    /// The choice used when this item is shown as a few-shot example: the gold choice,
    /// or for `Labels` the first true one.
    pub fn gold_choice(&self) -> &str {
        let index = match &self.gold {
            Gold::Index(index) => *index,
            Gold::Labels(labels) => labels.iter().position(|&l| l).unwrap_or(0),
        };
        &self.choices[index]
    }

    /// Whether choice `index` is a right answer.
    pub fn is_correct(&self, index: usize) -> bool {
        match &self.gold {
            Gold::Index(gold) => *gold == index,
            Gold::Labels(labels) => labels.get(index).copied().unwrap_or(false),
        }
    }

    /// Checks the invariants; `location` is the `file:line` used in the error.
    fn validate(&self, location: &str) -> Result<()> {
        if self.choices.is_empty() {
            return Err(TrainerError::invalid(location, "field `choices`: is empty"));
        }
        match &self.gold {
            Gold::Index(index) if *index >= self.choices.len() => Err(TrainerError::invalid(
                location,
                format!(
                    "field `answer`: {index} is out of range for {} choices",
                    self.choices.len()
                ),
            )),
            Gold::Labels(labels) if labels.len() != self.choices.len() => {
                Err(TrainerError::invalid(
                    location,
                    format!(
                        "field `mc2_targets.labels`: has {} labels for {} choices",
                        labels.len(),
                        self.choices.len()
                    ),
                ))
            }
            Gold::Labels(labels) if !labels.contains(&true) => Err(TrainerError::invalid(
                location,
                "field `mc2_targets.labels`: no label is 1 (true)",
            )),
            _ => Ok(()),
        }
    }
}

/// The metric a task reports as its headline number (and feeds into `eval/avg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrimaryMetric {
    Acc,
    AccNorm,
    Mc2,
}

impl PrimaryMetric {
    /// The name used in task files and metric keys.
    pub fn as_str(self) -> &'static str {
        match self {
            PrimaryMetric::Acc => "acc",
            PrimaryMetric::AccNorm => "acc_norm",
            PrimaryMetric::Mc2 => "mc2",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        match name {
            "acc" => Some(PrimaryMetric::Acc),
            "acc_norm" => Some(PrimaryMetric::AccNorm),
            "mc2" => Some(PrimaryMetric::Mc2),
            _ => None,
        }
    }
}

/// A loaded multiple-choice task, ready for [`crate::eval::evaluate`].
#[derive(Debug, Clone)]
pub struct Task {
    pub name: String,
    /// The items scored.
    pub items: Vec<McItem>,
    /// Items few-shot examples are drawn from (never the scored item itself).
    pub fewshot_pool: Vec<McItem>,
    /// Put between the context and each choice; `" "` like lm-eval.
    pub target_delimiter: String,
    /// Put between few-shot examples and before the scored context; `"\n\n"`.
    pub fewshot_delimiter: String,
    /// Prepended to the whole prompt (few-shot examples included); `""` by default.
    pub description: String,
    pub primary: PrimaryMetric,
}

impl Task {
    /// A task with lm-eval's default delimiters, no description, and the default
    /// primary metric for its items (mc2 when any item has labels, acc otherwise).
    pub fn new(name: impl Into<String>, items: Vec<McItem>, fewshot_pool: Vec<McItem>) -> Self {
        let primary = default_metric(&items);
        Task {
            name: name.into(),
            items,
            fewshot_pool,
            target_delimiter: " ".to_string(),
            fewshot_delimiter: "\n\n".to_string(),
            description: String::new(),
            primary,
        }
    }
}

fn default_metric(items: &[McItem]) -> PrimaryMetric {
    if items
        .iter()
        .any(|item| matches!(item.gold, Gold::Labels(_)))
    {
        PrimaryMetric::Mc2
    } else {
        PrimaryMetric::Acc
    }
}

/// Loads a task. `spec` is a built-in task name (synthetic-*-mc; the few-shot pool is
/// its Train split, the items its Test split, `limit` items, default 200), a `.jsonl`
/// file, or a `.yaml`/`.yml` task file. `limit` keeps the first `limit` items and
/// overrides a task file's own `limit`.
pub fn load_task(spec: &str, limit: Option<usize>) -> Result<Task> {
    if synthetic::MC_TASKS.contains(&spec) {
        let count = limit.unwrap_or(DEFAULT_BUILTIN_LIMIT);
        let items = synthetic::mc_items(spec, Split::Test, count, BUILTIN_TASK_SEED)?;
        let pool =
            synthetic::mc_items(spec, Split::Train, BUILTIN_FEWSHOT_POOL, BUILTIN_TASK_SEED)?;
        return Ok(Task::new(spec, items, pool));
    }
    let path = Path::new(spec);
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    match extension {
        "jsonl" => {
            let mut items = load_jsonl(path)?;
            if let Some(limit) = limit {
                items.truncate(limit);
            }
            Ok(Task::new(file_stem(path), items, Vec::new()))
        }
        "yaml" | "yml" => load_yaml(path, limit),
        _ => Err(TrainerError::config(
            "task",
            format!(
                "unknown task {spec:?} (expected a built-in task, one of: {}, or a .jsonl or .yaml file)",
                synthetic::MC_TASKS.join(", ")
            ),
        )),
    }
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| TrainerError::io(path, e))
}

/// Reads a JSONL item file: one item per non-blank line.
pub fn load_jsonl(path: &Path) -> Result<Vec<McItem>> {
    let text = read_text(path)?;
    let mut items = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let location = format!("{}:{}", path.display(), index + 1);
        items.push(parse_item(line, &location)?);
    }
    Ok(items)
}

/// Parses one JSONL line into a validated item.
fn parse_item(line: &str, location: &str) -> Result<McItem> {
    let value: Value = serde_json::from_str(line)
        .map_err(|e| TrainerError::invalid(location, format!("bad JSON: {e}")))?;
    let Value::Object(fields) = &value else {
        return Err(TrainerError::invalid(location, "expected a JSON object"));
    };
    let context = match (fields.get("context"), fields.get("question")) {
        (Some(context), _) => string_field(context, "context", location)?,
        (None, Some(question)) => format!(
            "Question: {}\nAnswer:",
            string_field(question, "question", location)?
        ),
        (None, None) => {
            return Err(TrainerError::invalid(
                location,
                "missing field `context` (or `question`)",
            ))
        }
    };
    let item = if let Some(targets) = fields.get("mc2_targets") {
        let choices = string_list(targets.get("choices"), "mc2_targets.choices", location)?;
        let labels = label_list(targets.get("labels"), location)?;
        McItem {
            context,
            choices,
            gold: Gold::Labels(labels),
        }
    } else {
        let choices = string_list(fields.get("choices"), "choices", location)?;
        let answer = match fields.get("answer") {
            Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64().unwrap_or(0) as usize,
            Some(other) => {
                return Err(TrainerError::invalid(
                    location,
                    format!("field `answer`: expected a non-negative integer, got {other}"),
                ))
            }
            None => return Err(TrainerError::invalid(location, "missing field `answer`")),
        };
        McItem {
            context,
            choices,
            gold: Gold::Index(answer),
        }
    };
    item.validate(location)?;
    Ok(item)
}

fn string_field(value: &Value, field: &str, location: &str) -> Result<String> {
    value.as_str().map(str::to_string).ok_or_else(|| {
        TrainerError::invalid(
            location,
            format!("field `{field}`: expected a string, got {value}"),
        )
    })
}

fn string_list(value: Option<&Value>, field: &str, location: &str) -> Result<Vec<String>> {
    let Some(value) = value else {
        return Err(TrainerError::invalid(
            location,
            format!("missing field `{field}`"),
        ));
    };
    let Value::Array(entries) = value else {
        return Err(TrainerError::invalid(
            location,
            format!("field `{field}`: expected a list of strings, got {value}"),
        ));
    };
    let mut strings = Vec::with_capacity(entries.len());
    for entry in entries {
        strings.push(string_field(entry, field, location)?);
    }
    Ok(strings)
}

fn label_list(value: Option<&Value>, location: &str) -> Result<Vec<bool>> {
    const FIELD: &str = "mc2_targets.labels";
    let Some(Value::Array(entries)) = value else {
        return Err(TrainerError::invalid(
            location,
            format!("field `{FIELD}`: expected a list of 0/1 labels"),
        ));
    };
    let mut labels = Vec::with_capacity(entries.len());
    for entry in entries {
        let label = match entry {
            Value::Number(n) if n.as_u64() == Some(0) => false,
            Value::Number(n) if n.as_u64() == Some(1) => true,
            Value::Bool(b) => *b,
            other => {
                return Err(TrainerError::invalid(
                    location,
                    format!("field `{FIELD}`: expected 0 or 1, got {other}"),
                ))
            }
        };
        labels.push(label);
    }
    Ok(labels)
}

/// Keys a task YAML file may contain.
const YAML_KEYS: &[&str] = &[
    "name",
    "test",
    "fewshot",
    "target_delimiter",
    "fewshot_delimiter",
    "description",
    "metric",
    "limit",
];

/// 1-based line of the first top-level `key:` in a YAML text (the parser keeps no
/// positions), or 1 when it cannot be found.
fn key_line(text: &str, key: &str) -> usize {
    text.lines()
        .position(|line| {
            let trimmed = line.trim_start_matches(['"', '\'']);
            trimmed.starts_with(key)
                && trimmed[key.len()..]
                    .trim_start_matches(['"', '\''])
                    .starts_with(':')
        })
        .map(|index| index + 1)
        .unwrap_or(1)
}

/// Reads a task YAML file; `test` and `fewshot` paths are relative to its directory.
fn load_yaml(path: &Path, limit: Option<usize>) -> Result<Task> {
    let text = read_text(path)?;
    let at = |key: &str| format!("{}:{}", path.display(), key_line(&text, key));
    let docs = YamlLoader::load_from_str(&text).map_err(|e| {
        TrainerError::invalid(
            format!("{}:{}", path.display(), e.marker().line()),
            format!("bad YAML: {e}"),
        )
    })?;
    let Some(Yaml::Hash(map)) = docs.first() else {
        return Err(TrainerError::invalid(
            format!("{}:1", path.display()),
            "expected a mapping of task settings",
        ));
    };

    let mut name = file_stem(path);
    let mut test: Option<PathBuf> = None;
    let mut fewshot: Option<PathBuf> = None;
    let mut target_delimiter = " ".to_string();
    let mut fewshot_delimiter = "\n\n".to_string();
    let mut description = String::new();
    let mut metric: Option<PrimaryMetric> = None;
    let mut file_limit: Option<usize> = None;
    let base = path.parent().unwrap_or(Path::new("."));

    for (key, value) in map {
        let Some(key) = key.as_str() else {
            return Err(TrainerError::invalid(
                format!("{}:1", path.display()),
                format!("keys must be strings, got {key:?}"),
            ));
        };
        let string = || {
            value.as_str().map(str::to_string).ok_or_else(|| {
                TrainerError::invalid(at(key), format!("field `{key}`: expected a string"))
            })
        };
        match key {
            "name" => name = string()?,
            "test" => test = Some(base.join(string()?)),
            "fewshot" => fewshot = Some(base.join(string()?)),
            "target_delimiter" => target_delimiter = string()?,
            "fewshot_delimiter" => fewshot_delimiter = string()?,
            "description" => description = string()?,
            "metric" => {
                let raw = string()?;
                metric = Some(PrimaryMetric::parse(&raw).ok_or_else(|| {
                    TrainerError::invalid(
                        at(key),
                        format!("field `metric`: unknown metric {raw:?} (expected one of: acc, acc_norm, mc2)"),
                    )
                })?);
            }
            "limit" => match value.as_i64() {
                Some(n) if n >= 0 => file_limit = Some(n as usize),
                _ => {
                    return Err(TrainerError::invalid(
                        at(key),
                        "field `limit`: expected a non-negative integer",
                    ))
                }
            },
            unknown => {
                return Err(TrainerError::invalid(
                    at(unknown),
                    format!(
                        "unknown key `{unknown}` (expected one of: {})",
                        YAML_KEYS.join(", ")
                    ),
                ))
            }
        }
    }

    let Some(test) = test else {
        return Err(TrainerError::invalid(
            format!("{}:1", path.display()),
            "missing field `test` (the JSONL file of items to score)",
        ));
    };
    let mut items = load_jsonl(&test)?;
    if let Some(limit) = limit.or(file_limit) {
        items.truncate(limit);
    }
    let fewshot_pool = match fewshot {
        Some(fewshot) => load_jsonl(&fewshot)?,
        None => Vec::new(),
    };
    let primary = metric.unwrap_or_else(|| default_metric(&items));
    Ok(Task {
        name,
        items,
        fewshot_pool,
        target_delimiter,
        fewshot_delimiter,
        description,
        primary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn load_err(text: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "items.jsonl", text);
        load_task(path.to_str().unwrap(), None)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn jsonl_accepts_context_question_and_mc2_forms() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "mixed.jsonl",
            concat!(
                r#"{"context": "1+1=", "choices": ["2", "3"], "answer": 0}"#,
                "\n\n",
                r#"{"question": "Sky colour?", "choices": ["red", "blue"], "answer": 1}"#,
                "\n",
                r#"{"question": "Q?", "mc2_targets": {"choices": ["a", "b", "c"], "labels": [1, 1, 0]}}"#,
                "\n"
            ),
        );
        let task = load_task(path.to_str().unwrap(), None).unwrap();
        assert_eq!(task.name, "mixed");
        assert_eq!(task.items.len(), 3);
        assert_eq!(task.items[0].gold, Gold::Index(0));
        assert_eq!(task.items[1].context, "Question: Sky colour?\nAnswer:");
        assert_eq!(task.items[2].gold, Gold::Labels(vec![true, true, false]));
        assert_eq!(task.primary, PrimaryMetric::Mc2);
        assert_eq!(task.target_delimiter, " ");
        assert_eq!(task.fewshot_delimiter, "\n\n");

        let limited = load_task(path.to_str().unwrap(), Some(1)).unwrap();
        assert_eq!(limited.items.len(), 1);
        assert_eq!(limited.primary, PrimaryMetric::Acc);
    }

    #[test]
    fn jsonl_errors_name_line_and_field() {
        let good = r#"{"context": "c", "choices": ["a", "b"], "answer": 0}"#;
        let cases = [
            ("{oops", "bad JSON"),
            (
                r#"{"context": "c", "answer": 0}"#,
                "missing field `choices`",
            ),
            (
                r#"{"context": "c", "choices": ["a"], "answer": 3}"#,
                "field `answer`: 3 is out of range for 1 choices",
            ),
            (
                r#"{"context": "c", "choices": [], "answer": 0}"#,
                "field `choices`: is empty",
            ),
            (
                r#"{"choices": ["a"], "answer": 0}"#,
                "missing field `context`",
            ),
            (
                r#"{"context": "c", "choices": ["a"]}"#,
                "missing field `answer`",
            ),
            (
                r#"{"context": "c", "mc2_targets": {"choices": ["a", "b"], "labels": [1]}}"#,
                "field `mc2_targets.labels`: has 1 labels for 2 choices",
            ),
            (
                r#"{"context": "c", "mc2_targets": {"choices": ["a", "b"], "labels": [0, 0]}}"#,
                "field `mc2_targets.labels`: no label is 1",
            ),
        ];
        for (bad, expected) in cases {
            let err = load_err(&format!("{good}\n{bad}\n"));
            assert!(err.contains("items.jsonl:2: "), "{err}");
            assert!(err.contains(expected), "expected {expected:?} in {err}");
        }
    }

    #[test]
    fn yaml_task_file_sets_everything() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        write(
            &dir.path().join("data"),
            "test.jsonl",
            "{\"context\": \"a\", \"choices\": [\"x\", \"y\"], \"answer\": 1}\n{\"context\": \"b\", \"choices\": [\"x\", \"y\"], \"answer\": 0}\n",
        );
        write(
            &dir.path().join("data"),
            "dev.jsonl",
            "{\"context\": \"d\", \"choices\": [\"x\", \"y\"], \"answer\": 0}\n",
        );
        let path = write(
            dir.path(),
            "mine.yaml",
            "name: my_task\ntest: data/test.jsonl\nfewshot: data/dev.jsonl\ntarget_delimiter: \"\"\nfewshot_delimiter: \"\\n###\\n\"\ndescription: \"About things.\\n\\n\"\nmetric: acc_norm\nlimit: 1\n",
        );
        let task = load_task(path.to_str().unwrap(), None).unwrap();
        assert_eq!(task.name, "my_task");
        assert_eq!(task.items.len(), 1);
        assert_eq!(task.fewshot_pool.len(), 1);
        assert_eq!(task.target_delimiter, "");
        assert_eq!(task.fewshot_delimiter, "\n###\n");
        assert_eq!(task.description, "About things.\n\n");
        assert_eq!(task.primary, PrimaryMetric::AccNorm);
        let overridden = load_task(path.to_str().unwrap(), Some(2)).unwrap();
        assert_eq!(overridden.items.len(), 2);
    }

    #[test]
    fn yaml_errors_name_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "t.jsonl",
            "{\"context\": \"a\", \"choices\": [\"x\"], \"answer\": 0}\n{\"context\": \"a\", \"choices\": [\"x\"], \"answer\": 5}\n",
        );
        let cases = [
            (
                "name: n\ntest: t.jsonl\nshots: 5\n",
                "bad.yaml:3",
                "unknown key `shots`",
            ),
            (
                "name: n\nmetric: f1\ntest: t.jsonl\n",
                "bad.yaml:2",
                "field `metric`: unknown metric",
            ),
            ("name: n\n", "bad.yaml:1", "missing field `test`"),
            ("test: t.jsonl\nlimit: -2\n", "bad.yaml:2", "field `limit`"),
            ("test: t.jsonl\n", "t.jsonl:2", "field `answer`"),
            ("test: missing.jsonl\n", "missing.jsonl", ""),
        ];
        for (text, location, message) in cases {
            let path = write(dir.path(), "bad.yaml", text);
            let err = load_task(path.to_str().unwrap(), None)
                .unwrap_err()
                .to_string();
            assert!(err.contains(location), "expected {location:?} in {err}");
            assert!(err.contains(message), "expected {message:?} in {err}");
        }
    }

    #[test]
    fn builtin_tasks_load_and_unknown_specs_list_them() {
        let task = load_task("synthetic-arith-mc", Some(10)).unwrap();
        assert_eq!(task.items.len(), 10);
        assert_eq!(task.fewshot_pool.len(), BUILTIN_FEWSHOT_POOL);
        assert_eq!(task.primary, PrimaryMetric::Acc);
        assert_eq!(
            load_task("synthetic-kv-mc", None).unwrap().items.len(),
            DEFAULT_BUILTIN_LIMIT
        );
        let err = load_task("hellaswag", None).unwrap_err().to_string();
        assert!(err.contains("synthetic-arith-mc"), "{err}");
    }
}
