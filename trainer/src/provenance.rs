//! What a run was made from, for its card: the base model, the data, the tokenizer and
//! the evaluation files, each by the path the config gives and its content hash.
//!
//! A file's hash is its SHA-256. A directory's (a model) is the SHA-256 of the listing
//! `sha256sum` prints for the files directly in it, sorted by name, so
//! `(cd DIR && sha256sum $(ls) | sha256sum)` reproduces it.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::config::TrainConfig;
use crate::{Result, TrainerError};

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a file's content, in hex.
pub fn file_sha256(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| TrainerError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file
            .read(&mut buffer)
            .map_err(|e| TrainerError::io(path, e))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hex(&hasher.finalize()))
}

/// SHA-256 of a file, or of a directory's `sha256sum` listing (see the module doc).
pub fn content_sha256(path: &Path) -> Result<String> {
    if !path.is_dir() {
        return file_sha256(path);
    }
    let mut names: Vec<String> = std::fs::read_dir(path)
        .map_err(|e| TrainerError::io(path, e))?
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_file()))
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut listing = String::new();
    for name in names {
        listing.push_str(&format!("{}  {name}\n", file_sha256(&path.join(&name))?));
    }
    Ok(hex(&Sha256::digest(listing.as_bytes())))
}

/// `(key, value)` facts about what `config` trains on, paths as written in the config
/// and hashes of what they point to (relative paths resolve against `base_dir`).
pub fn provenance(config: &TrainConfig, base_dir: &Path) -> Result<Vec<(String, String)>> {
    let mut facts = Vec::new();
    let mut with_hash = |key: &str, path: &str| -> Result<()> {
        facts.push((key.to_string(), path.to_string()));
        facts.push((
            format!("{key}.sha256"),
            content_sha256(&base_dir.join(path))?,
        ));
        Ok(())
    };
    if let Some(path) = &config.model.path {
        with_hash("base_model", path)?;
    }
    if let Some(path) = &config.data.path {
        with_hash("data.train", path)?;
    }
    if let Some(path) = &config.data.validation {
        with_hash("data.validation", path)?;
    }
    if let Some(path) = config
        .tokenizer
        .as_deref()
        .filter(|p| base_dir.join(p).is_file())
    {
        with_hash("tokenizer", path)?;
    }
    for task in &config.eval {
        if base_dir.join(&task.task).is_file() {
            with_hash(&format!("eval.{}", task.task), &task.task)?;
        }
    }
    if config.model.path.is_none() {
        facts.push((
            "base_model".into(),
            format!("random init (seed {})", config.seed),
        ));
    }
    if let Some(task) = &config.data.task {
        facts.push((
            "data.train".into(),
            format!(
                "{task} (built-in, {} examples, seed {})",
                config.data.examples, config.seed
            ),
        ));
    }
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_match_sha256sum() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.txt"), b"hello\n").unwrap();
        std::fs::write(dir.path().join("a.json"), b"{}").unwrap();
        // `printf 'hello\n' | sha256sum`
        assert_eq!(
            file_sha256(&dir.path().join("b.txt")).unwrap(),
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
        );
        // `printf '{}' | sha256sum`
        let a = "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
        let listing = format!(
            "{a}  a.json\n5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03  b.txt\n"
        );
        assert_eq!(
            content_sha256(dir.path()).unwrap(),
            hex(&Sha256::digest(listing.as_bytes()))
        );
        std::fs::write(dir.path().join("b.txt"), b"hellO\n").unwrap();
        assert_ne!(
            content_sha256(dir.path()).unwrap(),
            hex(&Sha256::digest(listing.as_bytes())),
            "a changed file changes the directory's hash"
        );
    }
}
