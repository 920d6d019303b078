//! The model's tokenizer: either a Hugging Face `tokenizer.json` found in the model
//! directory, or the built-in byte-level tokenizer that needs no file at all.
//!
//! A Hugging Face tokenizer's BOS and EOS are the ones `transformers.AutoTokenizer`
//! would report: `bos_token` / `eos_token` of `tokenizer_config.json` (or of
//! `special_tokens_map.json`), and only for a directory with neither file a guess by the
//! usual token names. Saving writes `tokenizer.json` together with both files, so the
//! saved model's tokenizer keeps its special tokens in transformers and
//! lm-evaluation-harness.
//!
//! The byte tokenizer maps each UTF-8 byte to its own id (0..=255) and reserves 256 for
//! BOS and 257 for EOS, so a from-scratch model on the synthetic tasks has a vocabulary
//! of 258 and round-trips any text exactly.

use std::path::Path;

use crate::error::{Result, TrainerError};

/// Name of the Hugging Face tokenizer file inside a model directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// transformers' tokenizer settings (class, special tokens, ...) beside `tokenizer.json`.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// transformers' older list of a tokenizer's special tokens.
pub const SPECIAL_TOKENS_MAP_FILE: &str = "special_tokens_map.json";

/// Id of the byte tokenizer's beginning-of-sequence token.
pub const BYTE_BOS: u32 = 256;
/// Id of the byte tokenizer's end-of-sequence token.
pub const BYTE_EOS: u32 = 257;
/// Vocabulary size of the byte tokenizer: 256 bytes plus BOS and EOS.
pub const BYTE_VOCAB_SIZE: usize = 258;

/// Token names tried, in order, when looking up a Hugging Face tokenizer's BOS token.
const BOS_NAMES: &[&str] = &[
    "<s>",
    "<|begin_of_text|>",
    "<bos>",
    "<|startoftext|>",
    "<|endoftext|>",
];
/// Token names tried, in order, when looking up a Hugging Face tokenizer's EOS token.
const EOS_NAMES: &[&str] = &[
    "</s>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "<eos>",
    "<|eos|>",
    "<|im_end|>",
];

/// The model's tokenizer: Hugging Face `tokenizer.json` (tokenizers crate) when the model
/// dir has one, otherwise byte-level: ids 0..=255 are the UTF-8 bytes, 256 = BOS,
/// 257 = EOS, vocab_size 258.
pub enum Tokenizer {
    /// Byte-level: one id per UTF-8 byte, plus BOS and EOS.
    Byte,
    /// A Hugging Face tokenizer loaded from `tokenizer.json`.
    Hf(Box<HfTokenizer>),
}

/// A Hugging Face tokenizer with the special tokens transformers would give it.
pub struct HfTokenizer {
    tokenizer: tokenizers::Tokenizer,
    /// The beginning-of-sequence token's text, if the tokenizer has one.
    bos: Option<String>,
    /// The end-of-sequence token's text, if the tokenizer has one.
    eos: Option<String>,
    /// `tokenizer_config.json` as read, written back unchanged on save.
    config: Option<serde_json::Value>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tokenizer::Byte => write!(f, "Tokenizer::Byte"),
            Tokenizer::Hf(hf) => write!(
                f,
                "Tokenizer::Hf(vocab {}, bos {:?}, eos {:?})",
                hf.tokenizer.get_vocab_size(true),
                hf.bos,
                hf.eos
            ),
        }
    }
}

impl Tokenizer {
    /// The byte-level tokenizer.
    pub fn byte() -> Self {
        Tokenizer::Byte
    }

    /// Loads `dir/tokenizer.json` when it exists, otherwise returns the byte tokenizer.
    /// BOS and EOS come from `dir/tokenizer_config.json`, else from
    /// `dir/special_tokens_map.json`, else (neither file present) from the usual token
    /// names. A file that exists but cannot be parsed, or that names a special token the
    /// vocabulary lacks, is an error naming the file.
    pub fn for_model_dir(dir: &Path) -> Result<Self> {
        let path = dir.join(TOKENIZER_FILE);
        if !path.exists() {
            return Ok(Tokenizer::Byte);
        }
        let tokenizer = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| TrainerError::Tokenizer(format!("{}: {e}", path.display())))?;
        let config = read_json_if_present(&dir.join(TOKENIZER_CONFIG_FILE))?;
        let map = read_json_if_present(&dir.join(SPECIAL_TOKENS_MAP_FILE))?;
        let mut special = [None, None];
        for (slot, (key, guesses)) in special
            .iter_mut()
            .zip([("bos_token", BOS_NAMES), ("eos_token", EOS_NAMES)])
        {
            let declared = [
                (TOKENIZER_CONFIG_FILE, config.as_ref()),
                (SPECIAL_TOKENS_MAP_FILE, map.as_ref()),
            ]
            .into_iter()
            .find_map(|(file, value)| Some((file, value?.get(key)?)));
            *slot = match declared {
                Some((file, value)) => {
                    let token = special_token_text(value).map_err(|message| {
                        TrainerError::invalid(
                            format!("{}: {key}", dir.join(file).display()),
                            message,
                        )
                    })?;
                    if let Some(text) = &token {
                        if tokenizer.token_to_id(text).is_none() {
                            return Err(TrainerError::invalid(
                                format!("{}: {key}", dir.join(file).display()),
                                format!("{text:?} is not in the vocabulary of {TOKENIZER_FILE}"),
                            ));
                        }
                    }
                    token
                }
                None if config.is_none() && map.is_none() => guesses
                    .iter()
                    .find(|name| tokenizer.token_to_id(name).is_some())
                    .map(|name| name.to_string()),
                None => None,
            };
        }
        let [bos, eos] = special;
        let hf = HfTokenizer {
            tokenizer,
            bos,
            eos,
            config,
        };
        hf.check_special_token_flags(dir)?;
        Ok(Tokenizer::Hf(Box::new(hf)))
    }

    /// Encodes `text`. `add_special_tokens` follows the HF tokenizer's own post-processor
    /// (e.g. a LLaMA tokenizer adds BOS); the byte tokenizer never adds any token.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        match self {
            Tokenizer::Byte => Ok(text.bytes().map(u32::from).collect()),
            Tokenizer::Hf(hf) => {
                let encoding = hf
                    .tokenizer
                    .encode(text, add_special_tokens)
                    .map_err(|e| TrainerError::Tokenizer(format!("encoding {text:?}: {e}")))?;
                Ok(encoding.get_ids().to_vec())
            }
        }
    }

    /// Decodes `ids` back to text. The byte tokenizer skips BOS/EOS and replaces invalid
    /// UTF-8 with U+FFFD; the HF tokenizer keeps special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match self {
            Tokenizer::Byte => {
                let mut bytes = Vec::with_capacity(ids.len());
                for &id in ids {
                    match u8::try_from(id) {
                        Ok(byte) => bytes.push(byte),
                        Err(_) if id == BYTE_BOS || id == BYTE_EOS => {}
                        Err(_) => {
                            return Err(TrainerError::Tokenizer(format!(
                                "id {id} is outside the byte vocabulary (0..{BYTE_VOCAB_SIZE})"
                            )))
                        }
                    }
                }
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            Tokenizer::Hf(hf) => hf
                .tokenizer
                .decode(ids, false)
                .map_err(|e| TrainerError::Tokenizer(format!("decoding {ids:?}: {e}"))),
        }
    }

    /// Number of ids the model's embedding must cover (HF: including added tokens).
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Byte => BYTE_VOCAB_SIZE,
            Tokenizer::Hf(hf) => hf.tokenizer.get_vocab_size(true),
        }
    }

    /// The beginning-of-sequence id, if the tokenizer has one.
    pub fn bos_id(&self) -> Option<u32> {
        match self {
            Tokenizer::Byte => Some(BYTE_BOS),
            Tokenizer::Hf(hf) => hf.bos.as_deref().and_then(|t| hf.tokenizer.token_to_id(t)),
        }
    }

    /// The end-of-sequence id, if the tokenizer has one. lm-eval-style scoring uses it
    /// as the prefix of a continuation whose context is empty.
    pub fn eos_id(&self) -> Option<u32> {
        match self {
            Tokenizer::Byte => Some(BYTE_EOS),
            Tokenizer::Hf(hf) => hf.eos.as_deref().and_then(|t| hf.tokenizer.token_to_id(t)),
        }
    }

    /// Writes `dir/tokenizer.json`, `dir/tokenizer_config.json` and
    /// `dir/special_tokens_map.json` for a model directory being saved, so the saved
    /// model loads with the same tokenizer and special tokens in ladder and in
    /// `transformers.AutoTokenizer`. A `tokenizer_config.json` read at load time is
    /// written back unchanged; otherwise one naming `PreTrainedTokenizerFast` and the
    /// special tokens is written. The byte tokenizer writes nothing.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let Tokenizer::Hf(hf) = self else {
            return Ok(());
        };
        let path = dir.join(TOKENIZER_FILE);
        hf.tokenizer
            .save(&path, false)
            .map_err(|e| TrainerError::Tokenizer(format!("{}: {e}", path.display())))?;
        let mut special = serde_json::Map::new();
        for (key, token) in [("bos_token", &hf.bos), ("eos_token", &hf.eos)] {
            if let Some(text) = token {
                special.insert(key.to_string(), serde_json::Value::String(text.clone()));
            }
        }
        let config = match &hf.config {
            Some(config) => config.clone(),
            None => {
                let mut config = special.clone();
                config.insert(
                    "tokenizer_class".to_string(),
                    serde_json::Value::String("PreTrainedTokenizerFast".to_string()),
                );
                config.insert(
                    "clean_up_tokenization_spaces".to_string(),
                    serde_json::Value::Bool(false),
                );
                serde_json::Value::Object(config)
            }
        };
        let files = [
            (TOKENIZER_CONFIG_FILE, config),
            (SPECIAL_TOKENS_MAP_FILE, serde_json::Value::Object(special)),
        ];
        for (name, value) in files {
            let path = dir.join(name);
            // Serializing a JSON value cannot fail.
            let text = serde_json::to_string_pretty(&value).expect("json serializes");
            std::fs::write(&path, text).map_err(|e| TrainerError::io(&path, e))?;
        }
        Ok(())
    }
}

impl HfTokenizer {
    /// Refuses a `tokenizer_config.json` whose `add_bos_token` / `add_eos_token` disagree
    /// with what `tokenizer.json`'s post-processor adds: transformers rebuilds the
    /// post-processor from these flags for some tokenizer classes, so the encoding
    /// lm-evaluation-harness sees would depend on the class, and ladder only applies
    /// `tokenizer.json`.
    fn check_special_token_flags(&self, dir: &Path) -> Result<()> {
        let Some(config) = &self.config else {
            return Ok(());
        };
        let added = self
            .tokenizer
            .encode("", true)
            .map_err(|e| TrainerError::Tokenizer(format!("encoding an empty text: {e}")))?
            .get_ids()
            .to_vec();
        let id_of = |token: &Option<String>| {
            token
                .as_deref()
                .and_then(|text| self.tokenizer.token_to_id(text))
        };
        let flags = [
            ("add_bos_token", id_of(&self.bos), added.first().copied()),
            ("add_eos_token", id_of(&self.eos), added.last().copied()),
        ];
        for (key, special, edge) in flags {
            let Some(declared) = config.get(key).and_then(serde_json::Value::as_bool) else {
                continue;
            };
            let adds = special.is_some() && special == edge;
            if declared != adds {
                return Err(TrainerError::invalid(
                    format!("{}: {key}", dir.join(TOKENIZER_CONFIG_FILE).display()),
                    format!(
                        "is {declared}, but the post-processor of {TOKENIZER_FILE} {} that token; \
                         transformers may rebuild the post-processor from this flag, so make the two agree",
                        if adds { "adds" } else { "does not add" }
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The JSON content of `path`, or `None` when the file does not exist.
fn read_json_if_present(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| TrainerError::io(path, e))?;
    let value = serde_json::from_str(&text).map_err(|e| {
        TrainerError::invalid(
            format!("{}:{}:{}", path.display(), e.line(), e.column()),
            e.to_string(),
        )
    })?;
    Ok(Some(value))
}

/// The text of a special token as transformers writes it: a string, an `AddedToken`
/// object with `content`, or null for none.
fn special_token_text(value: &serde_json::Value) -> Result<Option<String>, String> {
    match value {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(text) => Ok(Some(text.clone())),
        serde_json::Value::Object(token) => match token.get("content") {
            Some(serde_json::Value::String(text)) => Ok(Some(text.clone())),
            _ => Err("a token object needs a string \"content\"".to_string()),
        },
        other => Err(format!(
            "expected a string, a token object or null, found {other}"
        )),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tiny WordLevel tokenizer whose post-processor adds `<s>`, as a LLaMA one does.
    pub(crate) const TINY_TOKENIZER_JSON: &str = r#"{
  "version": "1.0",
  "truncation": null,
  "padding": null,
  "added_tokens": [
    {"id": 0, "content": "<unk>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 1, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 2, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
  ],
  "normalizer": null,
  "pre_tokenizer": {"type": "Whitespace"},
  "post_processor": {
    "type": "TemplateProcessing",
    "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
    "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
    "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}
  },
  "decoder": null,
  "model": {
    "type": "WordLevel",
    "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "the": 3, "cat": 4, "sat": 5, "on": 6, "mat": 7},
    "unk_token": "<unk>"
  }
}"#;

    /// The tiny tokenizer with a `tokenizer_config.json` that, like Qwen2's, declares no
    /// BOS and `</s>` as EOS.
    pub(crate) fn tokenizer_without_bos() -> Tokenizer {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(TOKENIZER_FILE), TINY_TOKENIZER_JSON).unwrap();
        std::fs::write(
            dir.path().join(TOKENIZER_CONFIG_FILE),
            r#"{"bos_token": null, "eos_token": "</s>", "tokenizer_class": "PreTrainedTokenizerFast"}"#,
        )
        .unwrap();
        Tokenizer::for_model_dir(dir.path()).unwrap()
    }

    #[test]
    fn special_tokens_come_from_tokenizer_config() {
        let no_bos = tokenizer_without_bos();
        assert_eq!((no_bos.bos_id(), no_bos.eos_id()), (None, Some(2)));

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(TOKENIZER_FILE), TINY_TOKENIZER_JSON).unwrap();
        std::fs::write(
            dir.path().join(TOKENIZER_CONFIG_FILE),
            r#"{"bos_token": {"content": "</s>", "special": true}, "eos_token": "<unk>"}"#,
        )
        .unwrap();
        let tok = Tokenizer::for_model_dir(dir.path()).unwrap();
        assert_eq!((tok.bos_id(), tok.eos_id()), (Some(2), Some(0)));

        // special_tokens_map.json is read when tokenizer_config.json is absent.
        std::fs::remove_file(dir.path().join(TOKENIZER_CONFIG_FILE)).unwrap();
        std::fs::write(
            dir.path().join(SPECIAL_TOKENS_MAP_FILE),
            r#"{"eos_token": "</s>"}"#,
        )
        .unwrap();
        let tok = Tokenizer::for_model_dir(dir.path()).unwrap();
        assert_eq!((tok.bos_id(), tok.eos_id()), (None, Some(2)));

        std::fs::write(
            dir.path().join(TOKENIZER_CONFIG_FILE),
            r#"{"bos_token": "<|begin_of_text|>"}"#,
        )
        .unwrap();
        let error = Tokenizer::for_model_dir(dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("tokenizer_config.json: bos_token")
                && error.contains("not in the vocabulary"),
            "{error}"
        );
        std::fs::write(
            dir.path().join(TOKENIZER_CONFIG_FILE),
            r#"{"bos_token": 7}"#,
        )
        .unwrap();
        let error = Tokenizer::for_model_dir(dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("tokenizer_config.json: bos_token"),
            "{error}"
        );
    }

    #[test]
    fn add_bos_token_must_agree_with_the_post_processor() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(TOKENIZER_FILE), TINY_TOKENIZER_JSON).unwrap();
        let config = dir.path().join(TOKENIZER_CONFIG_FILE);
        std::fs::write(
            &config,
            r#"{"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": true, "add_eos_token": false}"#,
        )
        .unwrap();
        let tok = Tokenizer::for_model_dir(dir.path()).unwrap();
        assert_eq!(tok.encode("the", true).unwrap(), vec![1, 3]);
        for (flags, key) in [
            (r#""add_bos_token": false"#, "add_bos_token"),
            (r#""add_eos_token": true"#, "add_eos_token"),
        ] {
            std::fs::write(
                &config,
                format!(r#"{{"bos_token": "<s>", "eos_token": "</s>", {flags}}}"#),
            )
            .unwrap();
            let error = Tokenizer::for_model_dir(dir.path())
                .unwrap_err()
                .to_string();
            assert!(
                error.contains(&format!("tokenizer_config.json: {key}")),
                "{error}"
            );
        }
    }

    #[test]
    fn saving_writes_the_special_tokens_transformers_reads() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(TOKENIZER_FILE), TINY_TOKENIZER_JSON).unwrap();
        let tok = Tokenizer::for_model_dir(dir.path()).unwrap();
        let out = tempfile::tempdir().unwrap();
        tok.save(out.path()).unwrap();
        let read = |name: &str| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(out.path().join(name)).unwrap()).unwrap()
        };
        let config = read(TOKENIZER_CONFIG_FILE);
        assert_eq!(config["bos_token"], "<s>");
        assert_eq!(config["eos_token"], "</s>");
        assert_eq!(config["tokenizer_class"], "PreTrainedTokenizerFast");
        let map = read(SPECIAL_TOKENS_MAP_FILE);
        assert_eq!(
            (&map["bos_token"], &map["eos_token"]),
            (&config["bos_token"], &config["eos_token"])
        );

        // A tokenizer_config.json that came with the model is kept as it was.
        let no_bos = tokenizer_without_bos();
        let again = tempfile::tempdir().unwrap();
        no_bos.save(again.path()).unwrap();
        let reloaded = Tokenizer::for_model_dir(again.path()).unwrap();
        assert_eq!((reloaded.bos_id(), reloaded.eos_id()), (None, Some(2)));
        let kept: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(again.path().join(TOKENIZER_CONFIG_FILE)).unwrap(),
        )
        .unwrap();
        assert_eq!(kept["bos_token"], serde_json::Value::Null);
    }

    #[test]
    fn byte_tokenizer_round_trips_and_adds_nothing() {
        let tok = Tokenizer::byte();
        let ids = tok.encode("héllo", true).unwrap();
        assert_eq!(ids, "héllo".bytes().map(u32::from).collect::<Vec<_>>());
        assert_eq!(tok.decode(&ids).unwrap(), "héllo");
        assert_eq!(tok.vocab_size(), 258);
        assert_eq!((tok.bos_id(), tok.eos_id()), (Some(256), Some(257)));
        assert!(tok.decode(&[300]).is_err());
    }

    #[test]
    fn missing_tokenizer_json_means_byte_tokenizer() {
        let dir = tempfile::tempdir().unwrap();
        let tok = Tokenizer::for_model_dir(dir.path()).unwrap();
        assert!(matches!(tok, Tokenizer::Byte));
        tok.save(dir.path()).unwrap();
        assert!(!dir.path().join(TOKENIZER_FILE).exists());
    }

    #[test]
    fn hf_tokenizer_loads_encodes_and_saves() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(TOKENIZER_FILE), TINY_TOKENIZER_JSON).unwrap();
        let tok = Tokenizer::for_model_dir(dir.path()).unwrap();
        assert!(matches!(tok, Tokenizer::Hf(_)));
        assert_eq!(tok.encode("the cat sat", false).unwrap(), vec![3, 4, 5]);
        assert_eq!(tok.encode("the cat sat", true).unwrap(), vec![1, 3, 4, 5]);
        assert_eq!(tok.encode("the dog", false).unwrap(), vec![3, 0]);
        assert_eq!(tok.vocab_size(), 8);
        assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(2)));
        assert_eq!(tok.decode(&[3, 4]).unwrap(), "the cat");

        let out = tempfile::tempdir().unwrap();
        tok.save(out.path()).unwrap();
        let reloaded = Tokenizer::for_model_dir(out.path()).unwrap();
        assert_eq!(
            reloaded.encode("on the mat", true).unwrap(),
            vec![1, 6, 3, 7]
        );
    }

    #[test]
    fn broken_tokenizer_json_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(TOKENIZER_FILE), "{not json").unwrap();
        let err = Tokenizer::for_model_dir(dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("tokenizer.json"), "{err}");
    }
}
