//! The documentation against the repository: the README's test command is what CI
//! runs, and every relative link in the README, `CONTRIBUTING.md` and `docs/` leads
//! to a file that exists (and, with a `#fragment`, to a heading of that page).

use std::fs;
use std::path::{Path, PathBuf};

fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// The markdown pages a reader meets.
fn pages() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    let root = workspace_dir();
    let mut pages = vec![root.join("README.md"), root.join("CONTRIBUTING.md")];
    walk(&root.join("docs"), &mut pages);
    pages.sort();
    pages
}

/// A shell command with its `\`-continued lines joined and runs of spaces collapsed.
fn normalized(command: &str) -> String {
    command
        .replace("\\\n", " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The first ```sh block after `marker` in `text`.
fn shell_block_after(text: &str, marker: &str) -> Option<String> {
    let rest = &text[text.find(marker)?..];
    let start = rest.find("```sh\n")? + "```sh\n".len();
    let end = rest[start..].find("```")?;
    Some(rest[start..start + end].to_string())
}

#[test]
fn the_readme_test_command_is_what_ci_runs() {
    let root = workspace_dir();
    let readme = fs::read_to_string(root.join("README.md")).unwrap();
    let command = shell_block_after(&readme, "Run the whole test suite")
        .expect("README.md has a sh block after \"Run the whole test suite\"");
    let ci = fs::read_to_string(root.join(".ci/run")).unwrap();
    let ci_command: String = ci
        .lines()
        .filter(|line| {
            !line.starts_with('#') && !line.starts_with("set ") && !line.starts_with("cd ")
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(normalized(&command), normalized(&ci_command));
    for page in ["docs/getting-started.md", "CONTRIBUTING.md"] {
        let text = fs::read_to_string(root.join(page)).unwrap();
        assert!(
            normalized(&text).contains(&normalized(&command)),
            "{page} does not show the README's test command"
        );
    }
}

/// GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to dashes.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors_of(text: &str) -> Vec<String> {
    let mut in_code = false;
    let mut anchors = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            anchors.push(anchor(line.trim_start_matches('#')));
        }
    }
    anchors
}

/// `(line, target)` of every inline link `[text](target)` outside code.
fn links_of(text: &str) -> Vec<(usize, String)> {
    let mut in_code = false;
    let mut links = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            links.push((number + 1, after[..end].to_string()));
            rest = &after[end..];
        }
    }
    links
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let root = workspace_dir();
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let text = fs::read_to_string(&page).unwrap();
        let shown = page.strip_prefix(&root).unwrap().display().to_string();
        for (line, target) in links_of(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, fragment) = match target.split_once('#') {
                Some((path, fragment)) => (path, Some(fragment)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(path)
            };
            if !file.exists() {
                broken.push(format!("{shown}:{line}: {target} (no such file)"));
                continue;
            }
            if let (Some(fragment), true) = (fragment, file.extension().is_some_and(|e| e == "md"))
            {
                let anchors = anchors_of(&fs::read_to_string(&file).unwrap());
                if !anchors.iter().any(|a| a == fragment) {
                    broken.push(format!("{shown}:{line}: {target} (no such heading)"));
                }
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} links found: is the scanner reading the pages?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_link_scanner_finds_links_and_anchors() {
    let text = "# A title: with `code`\n[a](b.md) and [c](d.md#e-f)\n```\n[no](x)\n```\n";
    assert_eq!(
        links_of(text),
        [(2, "b.md".to_string()), (2, "d.md#e-f".to_string())]
    );
    assert_eq!(anchors_of(text), ["a-title-with-code"]);
}
