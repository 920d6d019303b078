//! The deployment files in `deploy/` (systemd units, Containerfile, Kubernetes manifests,
//! Slurm script), checked without deploying anything:
//!
//! - shell scripts (`*.sh`, `*.sbatch`) pass `bash -n`;
//! - YAML files load with PyYAML, Kubernetes documents are named, and the kustomization
//!   lists exactly the manifests beside it and renders with `kubectl kustomize`;
//! - the systemd units pass `systemd-analyze verify` without a warning, and a broken
//!   unit is shown to fail that check (`systemd-analyze` missing fails both tests);
//! - the Containerfile builds `ladder` in one stage, enters it in the last, and copies
//!   every workspace member;
//! - every `--flag` given to `ladder coordinator` or `ladder agent` in these files is one
//!   the binary's `--help` lists (the only test here that needs the `ladder` binary).
//!
//! docs/guides/deploy.md ("What CI checks") describes the same list to users.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ladder_e2e::{describe, ladder, TestDir, Value};

fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

fn deploy_dir() -> PathBuf {
    workspace_dir().join("deploy")
}

/// Every file under `dir`, recursively, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let entries =
        fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// The files under deploy/ whose name ends with one of `suffixes`.
fn deploy_files(suffixes: &[&str]) -> Vec<PathBuf> {
    files_under(&deploy_dir())
        .into_iter()
        .filter(|path| {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            suffixes.iter().any(|suffix| name.ends_with(suffix))
        })
        .collect()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Where a program is on `PATH`, if it is installed.
fn installed(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

fn both_streams(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

// ---------------------------------------------------------------------------------------
// Shell scripts

#[test]
fn shell_scripts_pass_bash_syntax_check() {
    let scripts = deploy_files(&[".sh", ".sbatch"]);
    assert!(
        !scripts.is_empty(),
        "no *.sh or *.sbatch under {} (the Slurm script is expected)",
        deploy_dir().display()
    );
    for script in &scripts {
        let output = run(Command::new("bash").arg("-n").arg(script));
        assert!(
            output.status.success(),
            "bash -n {} failed:\n{}",
            script.display(),
            both_streams(&output)
        );
    }
}

// ---------------------------------------------------------------------------------------
// YAML and Kubernetes

/// Fails the test (never skips it) when PyYAML is missing: CI installs it from
/// clients/python/requirements.txt.
fn require_pyyaml() {
    let output = run(Command::new("python3").args(["-c", "import yaml"]));
    assert!(
        output.status.success(),
        "the deploy test needs PyYAML: python3 -m pip install -r clients/python/requirements.txt\n{}",
        both_streams(&output)
    );
}

/// The documents of a YAML file, loaded by PyYAML's `safe_load_all` and handed over as
/// JSON. Empty documents (`null`) are kept.
fn load_yaml(path: &Path) -> Vec<Value> {
    let script = "import json, sys, yaml\n\
                  docs = list(yaml.safe_load_all(open(sys.argv[1])))\n\
                  print(json.dumps(docs, default=str))";
    let output = run(Command::new("python3").args(["-c", script]).arg(path));
    assert!(
        output.status.success(),
        "{} is not valid YAML:\n{}",
        path.display(),
        both_streams(&output)
    );
    match serde_json::from_slice(&output.stdout) {
        Ok(Value::Array(docs)) => docs,
        other => panic!("unexpected loader output for {}: {other:?}", path.display()),
    }
}

fn is_kustomization(path: &Path) -> bool {
    matches!(
        path.file_name().and_then(|n| n.to_str()),
        Some("kustomization.yaml" | "kustomization.yml" | "Kustomization")
    )
}

fn non_empty_str<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

#[test]
fn yaml_files_load_and_kubernetes_documents_are_named() {
    require_pyyaml();
    let files = deploy_files(&[".yaml", ".yml"]);
    assert!(!files.is_empty(), "no YAML files under deploy/");
    let kubernetes_dir = deploy_dir().join("kubernetes");
    let mut problems = Vec::new();
    for file in &files {
        let docs = load_yaml(file);
        if !file.starts_with(&kubernetes_dir) || is_kustomization(file) {
            continue;
        }
        for (index, doc) in docs.iter().enumerate() {
            if doc.is_null() {
                continue;
            }
            for (pointer, what) in [
                ("/apiVersion", "apiVersion"),
                ("/kind", "kind"),
                ("/metadata/name", "metadata.name"),
            ] {
                if non_empty_str(doc, pointer).is_none() {
                    problems.push(format!(
                        "{} document {}: no {what}",
                        file.display(),
                        index + 1
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn kustomization_lists_exactly_the_manifests_beside_it() {
    require_pyyaml();
    let dir = deploy_dir().join("kubernetes");
    let path = dir.join("kustomization.yaml");
    let docs = load_yaml(&path);
    assert_eq!(docs.len(), 1, "{} has one document", path.display());
    let kustomization = &docs[0];
    let api_version = non_empty_str(kustomization, "/apiVersion").unwrap_or_default();
    assert!(
        api_version.starts_with("kustomize.config.k8s.io/"),
        "{}: apiVersion {api_version:?} is not kustomize.config.k8s.io/...",
        path.display()
    );
    assert_eq!(
        non_empty_str(kustomization, "/kind"),
        Some("Kustomization"),
        "{}: kind",
        path.display()
    );
    let listed: BTreeSet<String> = kustomization
        .get("resources")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("{}: no resources list", path.display()))
        .iter()
        .map(|r| r.as_str().expect("resources are paths").to_string())
        .collect();
    for resource in &listed {
        assert!(
            dir.join(resource).is_file(),
            "{} lists {resource}, which does not exist",
            path.display()
        );
    }
    let present: BTreeSet<String> = files_under(&dir)
        .iter()
        .filter(|p| !is_kustomization(p))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .map(|p| {
            p.strip_prefix(&dir)
                .expect("under dir")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let unlisted: Vec<_> = present.difference(&listed).collect();
    assert!(
        unlisted.is_empty(),
        "{} does not list {unlisted:?}: `kubectl apply -k` would leave them out",
        path.display()
    );
}

#[test]
fn kustomization_renders_with_kubectl() {
    let kubectl = installed("kubectl").expect(
        "kubectl is not installed (Debian package kubernetes-client; tests/setup.sh installs it)",
    );
    let output = run(Command::new(kubectl)
        .arg("kustomize")
        .arg(deploy_dir().join("kubernetes")));
    assert!(
        output.status.success(),
        "kubectl kustomize deploy/kubernetes failed:\n{}",
        both_streams(&output)
    );
}

// ---------------------------------------------------------------------------------------
// systemd

/// Runs `systemd-analyze verify` on a copy of `unit` and returns what it reported when
/// it found anything wrong.
///
/// The copy differs in two ways, both outside what the check is for:
/// - `Exec*=` commands run `/bin/true`, because verify refuses a command that is not
///   executable on this machine, and `/usr/local/bin/ladder` is not installed on CI
///   machines (the arguments are kept);
/// - `User=` and `Group=` name root, because the `ladder` user does not exist there.
///
/// systemd only warns about unknown sections, unknown keys and values it cannot parse,
/// with exit code 0, so any output line that names the unit counts as a failure, as
/// does a non-zero exit code. Lines about other units (the targets it pulls in) are
/// ignored.
fn verify_unit(systemd_analyze: &Path, unit: &Path) -> Result<(), String> {
    let name = unit.file_name().expect("a unit file name");
    let mut copy = String::new();
    for line in read(unit).lines() {
        let rewritten = match line.split_once('=') {
            Some((key, value)) if key.trim().starts_with("Exec") => {
                // Keep the special prefixes (`-`, `+`, `!`, `@`, `:`) of the command.
                let value = value.trim_start();
                let prefix_len = value
                    .find(|c: char| !"-+!@:".contains(c))
                    .unwrap_or(value.len());
                let (prefix, command) = value.split_at(prefix_len);
                let arguments = command
                    .split_once(char::is_whitespace)
                    .map(|(_, rest)| rest);
                match arguments {
                    Some(arguments) => format!("{key}={prefix}/bin/true {arguments}"),
                    None => format!("{key}={prefix}/bin/true"),
                }
            }
            Some((key, _)) if key.trim() == "User" || key.trim() == "Group" => {
                format!("{}=root", key.trim())
            }
            _ => line.to_string(),
        };
        copy.push_str(&rewritten);
        copy.push('\n');
    }
    let tmp = TestDir::new();
    let copy_path = tmp.path().join(name);
    fs::write(&copy_path, copy).expect("write the unit's copy");
    let output = run(Command::new(systemd_analyze)
        .args(["verify", "--man=no"])
        .arg(&copy_path)
        .current_dir(tmp.path()));
    let text = both_streams(&output);
    let name = name.to_string_lossy();
    let about_unit: Vec<&str> = text.lines().filter(|l| l.contains(&*name)).collect();
    if output.status.success() && about_unit.is_empty() {
        if !text.trim().is_empty() {
            eprintln!("systemd-analyze verify {name} (ignored, about other units):\n{text}");
        }
        return Ok(());
    }
    Err(format!(
        "systemd-analyze verify {name} exited with {}:\n{text}",
        output.status
    ))
}

/// `systemd-analyze`, which these checks need (Debian package `systemd`, installed by
/// `tests/setup.sh`): its absence fails the test instead of skipping the check.
fn systemd_analyze() -> PathBuf {
    installed("systemd-analyze").unwrap_or_else(|| {
        panic!(
            "systemd-analyze is not on PATH: install the Debian package systemd \
             (tests/setup.sh does)"
        )
    })
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let units = deploy_files(&[".service"]);
    let names: Vec<_> = units
        .iter()
        .map(|u| u.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["ladder-agent.service", "ladder-coordinator.service"],
        "the units under deploy/"
    );
    let systemd_analyze = systemd_analyze();
    let reports: Vec<String> = units
        .iter()
        .filter_map(|unit| verify_unit(&systemd_analyze, unit).err())
        .collect();
    assert!(reports.is_empty(), "{}", reports.join("\n"));
}

#[test]
fn systemd_check_fails_on_an_unknown_section_or_key() {
    let systemd_analyze = systemd_analyze();
    let cases = [
        (
            "unknown section",
            "[Unit]\nDescription=broken\n\n[Servise]\nType=simple\n\n\
             [Service]\nExecStart=/usr/local/bin/ladder agent\n",
            "Unknown section",
        ),
        (
            "unknown key",
            "[Unit]\nDescription=broken\n\n\
             [Service]\nUser=ladder\nExecStart=/usr/local/bin/ladder agent\nRestat=on-failure\n",
            "Unknown key",
        ),
        (
            "bad value",
            "[Unit]\nDescription=broken\n\n\
             [Service]\nExecStart=/usr/local/bin/ladder agent\nKillMode=drain\n",
            "kill mode",
        ),
    ];
    for (what, text, expected) in cases {
        let tmp = TestDir::new();
        let unit = tmp.path().join("ladder-broken.service");
        fs::write(&unit, text).expect("write the broken unit");
        match verify_unit(&systemd_analyze, &unit) {
            Ok(()) => panic!("a unit with an {what} passed the systemd check"),
            Err(report) => assert!(
                report.contains(expected),
                "the report on the {what} should mention {expected:?}:\n{report}"
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Containerfile

/// Lines of a file with `\` continuations joined, each with its 1-based first line number.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut lines = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (index, raw) in text.lines().enumerate() {
        let trimmed = raw.trim_end();
        let (content, continues) = match trimmed.strip_suffix('\\') {
            Some(content) => (content, true),
            None => (trimmed, false),
        };
        let (_, joined) = current.get_or_insert_with(|| (index + 1, String::new()));
        joined.push_str(content);
        joined.push(' ');
        if !continues {
            lines.extend(current.take());
        }
    }
    lines.extend(current);
    lines
}

/// `members = ["a", "b", ...]` of the workspace's Cargo.toml.
fn workspace_members() -> Vec<String> {
    let manifest = read(&workspace_dir().join("Cargo.toml"));
    let start = manifest
        .find("members")
        .expect("the workspace Cargo.toml lists members");
    let list = &manifest[start..];
    let list = &list[list.find('[').expect("[")..=list.find(']').expect("]")];
    list.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[test]
fn containerfile_builds_ladder_and_runs_it_as_entrypoint() {
    let path = deploy_dir().join("Containerfile");
    let text = read(&path);
    let lines: Vec<(usize, Vec<String>)> = logical_lines(&text)
        .into_iter()
        .filter(|(_, line)| !line.trim_start().starts_with('#'))
        .map(|(number, line)| {
            (
                number,
                line.split_whitespace().map(str::to_string).collect(),
            )
        })
        .filter(|(_, words): &(usize, Vec<String>)| !words.is_empty())
        .collect();
    let instruction = |name: &str| -> Vec<&Vec<String>> {
        lines
            .iter()
            .map(|(_, words)| words)
            .filter(|words| words[0].eq_ignore_ascii_case(name))
            .collect()
    };
    let from = instruction("FROM");
    assert!(
        from.len() >= 2,
        "{}: expected a build stage and a runtime stage, found {} FROM lines",
        path.display(),
        from.len()
    );
    assert!(
        instruction("RUN").iter().any(|words| {
            let line = words.join(" ");
            line.contains("cargo build --release") && line.contains("-p ladder-cli")
        }),
        "{}: no RUN line builds `cargo build --release ... -p ladder-cli`",
        path.display()
    );
    let entrypoints = instruction("ENTRYPOINT");
    assert_eq!(entrypoints.len(), 1, "{}: one ENTRYPOINT", path.display());
    let entrypoint: String = entrypoints[0][1..].concat();
    assert_eq!(
        entrypoint.replace(' ', ""),
        r#"["ladder"]"#,
        "{}: ENTRYPOINT",
        path.display()
    );
    let users = instruction("USER");
    let last_user = users.last().map(|words| words[1..].join(" "));
    assert!(
        last_user
            .as_deref()
            .is_some_and(|user| !user.starts_with("root") && !user.starts_with('0')),
        "{}: the image must end on a non-root USER, found {last_user:?}",
        path.display()
    );
    let copied: BTreeSet<String> = instruction("COPY")
        .iter()
        .filter(|words| !words.iter().any(|w| w.starts_with("--from")))
        .flat_map(|words| {
            // COPY SOURCE... DESTINATION
            let sources = words.get(1..words.len().saturating_sub(1)).unwrap_or(&[]);
            sources
                .iter()
                .map(|s| s.trim_end_matches('/').to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    let mut needed = vec!["Cargo.toml".to_string(), "Cargo.lock".to_string()];
    needed.extend(workspace_members());
    // A member is copied with itself or with a folder above it (`shared` holds several).
    let missing: Vec<_> = needed
        .iter()
        .filter(|m| {
            !copied
                .iter()
                .any(|c| *m == c || m.starts_with(&format!("{c}/")))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{}: the build stage does not COPY {missing:?} (every workspace member is needed \
         for cargo to load the workspace)",
        path.display()
    );
}

// ---------------------------------------------------------------------------------------
// `ladder coordinator` / `ladder agent` flags

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Coordinator,
    Agent,
}

impl Role {
    fn from_word(word: &str) -> Option<Role> {
        match word {
            "coordinator" => Some(Role::Coordinator),
            "agent" => Some(Role::Agent),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Coordinator => "coordinator",
            Role::Agent => "agent",
        })
    }
}

/// One `--flag` given to `ladder ROLE` somewhere in deploy/.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FlagUse {
    /// `FILE:LINE`, or the file and container for manifests.
    place: String,
    role: Role,
    /// Without the leading `--` and any `=value`.
    flag: String,
}

/// A word with the quoting and punctuation of shell, Markdown and YAML flow lists
/// removed from both ends.
fn bare(word: &str) -> &str {
    word.trim_matches(|c: char| "\"'`{}()[],;".contains(c))
}

/// Whether a word is the `ladder` program: `ladder`, `/usr/local/bin/ladder`,
/// `ExecStart=/usr/local/bin/ladder`, `"${LADDER_BIN:-ladder}"`, but not `ladder-cli`.
fn names_ladder(word: &str) -> bool {
    let word = bare(word);
    let Some(before) = word.strip_suffix("ladder") else {
        return false;
    };
    before
        .chars()
        .last()
        .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '.'))
}

/// The long flags in a word: `--work-dir`, `--gpus=auto`, `${X:+--slots}`; not the
/// `--` inside `a--b`.
fn long_flags_in(word: &str) -> Vec<String> {
    let mut flags = Vec::new();
    let bytes = word.as_bytes();
    let mut start = 0;
    while let Some(offset) = word[start..].find("--") {
        let at = start + offset;
        let preceded_by_word =
            at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'-');
        let name: String = word[at + 2..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
            .collect();
        if !preceded_by_word && name.starts_with(|c: char| c.is_ascii_lowercase()) {
            flags.push(name.trim_end_matches('-').to_string());
        }
        start = at + 2 + name.len();
    }
    flags
}

/// The flag of one manifest argument: `--gpus` or `--gpus=auto` gives `gpus`; only a
/// leading `--` counts, since each element of `args` is one argument.
fn leading_flag(word: &str) -> Vec<String> {
    let Some(rest) = word.strip_prefix("--") else {
        return Vec::new();
    };
    let name = rest.split('=').next().unwrap_or_default();
    if name.is_empty() {
        return Vec::new();
    }
    vec![name.to_string()]
}

/// Flags that follow `ladder coordinator` / `ladder agent` in a sequence of words, up to
/// the end of the sequence or a word that ends the command (`;`, `&&`, `|`, a closing
/// Markdown backtick). `flags_of` finds the flags in one word.
fn flag_uses_in_words(
    words: &[&str],
    place: &str,
    flags_of: fn(&str) -> Vec<String>,
) -> Vec<FlagUse> {
    let mut uses = Vec::new();
    let mut role: Option<Role> = None;
    let mut index = 0;
    while index < words.len() {
        let word = words[index];
        let next_role = words.get(index + 1).and_then(|w| Role::from_word(bare(w)));
        if names_ladder(word) && next_role.is_some() {
            role = next_role;
            index += 2;
            continue;
        }
        if let Some(current) = role {
            for flag in flags_of(word) {
                uses.push(FlagUse {
                    place: place.to_string(),
                    role: current,
                    flag,
                });
            }
            let ends_command = matches!(word, ";" | "&&" | "||" | "|")
                || word.ends_with(';')
                || word.ends_with('`');
            if ends_command {
                role = None;
            }
        }
        index += 1;
    }
    uses
}

/// Flag uses on the logical lines of a text file (shell, systemd, Markdown, comments).
fn flag_uses_in_text(text: &str, file: &str) -> Vec<FlagUse> {
    let mut uses = Vec::new();
    for (number, line) in logical_lines(text) {
        let words: Vec<&str> = line.split_whitespace().collect();
        uses.extend(flag_uses_in_words(
            &words,
            &format!("{file}:{number}"),
            long_flags_in,
        ));
    }
    uses
}

/// Flag uses in the containers of Kubernetes documents: `command` + `args`, where a
/// container without `command` runs the image's entrypoint, `ladder`.
fn flag_uses_in_manifest(doc: &Value, file: &str, uses: &mut Vec<FlagUse>) {
    match doc {
        Value::Object(map) => {
            for (key, value) in map {
                let is_container_list = key == "containers" || key == "initContainers";
                if let (true, Some(containers)) = (is_container_list, value.as_array()) {
                    for container in containers {
                        let strings = |field: &str| -> Option<Vec<String>> {
                            container.get(field).and_then(Value::as_array).map(|items| {
                                items
                                    .iter()
                                    .map(|i| match i {
                                        Value::String(s) => s.clone(),
                                        other => other.to_string(),
                                    })
                                    .collect()
                            })
                        };
                        let mut argv =
                            strings("command").unwrap_or_else(|| vec!["ladder".to_string()]);
                        argv.extend(strings("args").unwrap_or_default());
                        let name = container.get("name").and_then(Value::as_str).unwrap_or("?");
                        let words: Vec<&str> = argv.iter().map(String::as_str).collect();
                        let place = format!("{file} (container {name})");
                        uses.extend(flag_uses_in_words(&words, &place, leading_flag));
                    }
                } else {
                    flag_uses_in_manifest(value, file, uses);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                flag_uses_in_manifest(item, file, uses);
            }
        }
        _ => {}
    }
}

/// The long flags `ladder ROLE --help` lists: lines `      --name <NAME>` or
/// `  -h, --help`.
fn flags_in_help(help: &str) -> BTreeSet<String> {
    let mut flags = BTreeSet::new();
    for line in help.lines() {
        let line = line.trim_start();
        let line = match line.as_bytes() {
            [b'-', short, b',', b' ', ..] if short.is_ascii_alphanumeric() => &line[4..],
            _ => line,
        };
        if let Some(rest) = line.strip_prefix("--") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if !name.is_empty() {
                flags.insert(name);
            }
        }
    }
    flags
}

/// The uses whose flag `ladder ROLE` does not accept, as messages.
fn unknown_flags(uses: &[FlagUse], accepted: &dyn Fn(Role) -> BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    for flag_use in uses {
        let flags = accepted(flag_use.role);
        if flags.contains(&flag_use.flag) {
            continue;
        }
        problems.push(format!(
            "{}: `ladder {} --{}` is not a flag of `ladder {}` (it accepts: {})",
            flag_use.place,
            flag_use.role,
            flag_use.flag,
            flag_use.role,
            flags
                .iter()
                .map(|f| format!("--{f}"))
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    problems
}

/// Every flag use in deploy/: text files line by line, plus the manifests' containers.
fn flag_uses_in_deploy() -> Vec<FlagUse> {
    let root = workspace_dir();
    let mut uses = Vec::new();
    // The deployment guide whole, and the code blocks of every other page.
    let deploy_guide = root.join("docs/guides/deploy.md");
    let pages = files_under(&root.join("docs"))
        .into_iter()
        .chain([root.join("README.md")])
        .filter(|f| f.extension().is_some_and(|e| e == "md") && *f != deploy_guide);
    for page in pages {
        let shown = page
            .strip_prefix(&root)
            .unwrap_or(&page)
            .display()
            .to_string();
        let text = fs::read_to_string(&page).expect("docs pages are text");
        uses.extend(flag_uses_in_text(&code_blocks_only(&text), &shown));
    }
    let mut files = files_under(&deploy_dir());
    files.push(deploy_guide);
    for file in files {
        let shown = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .display()
            .to_string();
        let Ok(text) = fs::read_to_string(&file) else {
            continue; // not text
        };
        uses.extend(flag_uses_in_text(&text, &shown));
        let is_yaml = file.extension().is_some_and(|e| e == "yaml" || e == "yml");
        if is_yaml {
            for doc in load_yaml(&file) {
                flag_uses_in_manifest(&doc, &shown, &mut uses);
            }
        }
    }
    uses
}

/// `text` with every line outside a fenced code block blanked (line numbers kept).
fn code_blocks_only(text: &str) -> String {
    let mut in_block = false;
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
        } else if in_block {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

#[test]
fn flag_scanner_reads_shell_systemd_markdown_and_manifests() {
    let text = "ExecStart=/usr/local/bin/ladder agent \\\n    --work-dir /w \\\n    $LADDER_AGENT_ARGS\n\
                exec \"${LADDER_BIN:-ladder}\" coordinator --listen=0.0.0.0:7070 ${X:+--lease-timeout 3}\n\
                see `ladder agent --name` and `ladder coordinator --auth FILE`; not `cargo --release`\n\
                cargo build -p ladder-cli --features cuda\n\
                systemctl stop ladder-agent.service --now\n\
                http://a--b ladder agent a--b\n";
    let found: Vec<(usize, Role, String)> = flag_uses_in_text(text, "f")
        .into_iter()
        .map(|u| {
            let line = u.place.trim_start_matches("f:").parse().unwrap();
            (line, u.role, u.flag)
        })
        .collect();
    let expected = vec![
        (1, Role::Agent, "work-dir".to_string()),
        (4, Role::Coordinator, "listen".to_string()),
        (4, Role::Coordinator, "lease-timeout".to_string()),
        (5, Role::Agent, "name".to_string()),
        (5, Role::Coordinator, "auth".to_string()),
    ];
    assert_eq!(found, expected);

    let manifest: Value = serde_json::json!({
        "kind": "DaemonSet",
        "spec": {"template": {"spec": {"containers": [
            {"name": "agent", "args": ["agent", "--name", "$(NODE_NAME)", "--gpus=auto"]},
            {"name": "sidecar", "command": ["sh", "-c"], "args": ["sleep --forever"]}
        ]}}}
    });
    let mut uses = Vec::new();
    flag_uses_in_manifest(&manifest, "m.yaml", &mut uses);
    let flags: Vec<_> = uses.iter().map(|u| (u.role, u.flag.as_str())).collect();
    assert_eq!(flags, [(Role::Agent, "name"), (Role::Agent, "gpus")]);
}

#[test]
fn flag_check_reports_a_misspelled_or_misplaced_flag() {
    let help = "Usage: ladder agent [OPTIONS]\n\nOptions:\n      --work-dir <WORK_DIR>\n          \
                Runs execute in WORK_DIR/runs/RUN_ID [default: ladder-work]\n  -h, --help\n          Print help\n";
    let accepted = flags_in_help(help);
    assert_eq!(
        accepted,
        ["help", "work-dir"].map(String::from).into_iter().collect()
    );
    let uses = flag_uses_in_text(
        "ladder agent --work-dir /w --wrok-dir /w --gpus auto\nladder coordinator --work-dir /w\n",
        "f",
    );
    let problems = unknown_flags(&uses, &|role| match role {
        Role::Agent => accepted.clone(),
        Role::Coordinator => ["listen".to_string()].into_iter().collect(),
    });
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(
        problems[0].contains("f:1: `ladder agent --wrok-dir`"),
        "{}",
        problems[0]
    );
    // A flag this (made-up) help text lacks is reported like any other.
    assert!(
        problems[1].contains("f:1: `ladder agent --gpus`"),
        "{}",
        problems[1]
    );
    assert!(
        problems[2].contains("f:2: `ladder coordinator --work-dir`"),
        "{}",
        problems[2]
    );
}

#[test]
fn deploy_files_use_only_flags_the_cli_accepts() {
    require_pyyaml();
    let help = |role: Role| -> BTreeSet<String> {
        let args = [role.to_string(), "--help".to_string()];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = ladder(&args);
        assert!(output.status.success(), "{}", describe(&args, &output));
        let flags = flags_in_help(&String::from_utf8_lossy(&output.stdout));
        assert!(
            flags.contains("help"),
            "`ladder {role} --help` listed no flags:\n{}",
            describe(&args, &output)
        );
        flags
    };
    let coordinator_flags = help(Role::Coordinator);
    let agent_flags = help(Role::Agent);
    let uses = flag_uses_in_deploy();
    for role in [Role::Coordinator, Role::Agent] {
        assert!(
            uses.iter().any(|u| u.role == role),
            "no `ladder {role} --...` found under deploy/: the scanner is broken"
        );
    }
    let problems = unknown_flags(&uses, &|role| match role {
        Role::Coordinator => coordinator_flags.clone(),
        Role::Agent => agent_flags.clone(),
    });
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
