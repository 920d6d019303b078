//! The model's tokenizer: either a Hugging Face `tokenizer.json` found in the model
//! directory, or the built-in byte-level tokenizer that needs no file at all.
//!
//! The byte tokenizer maps each UTF-8 byte to its own id (0..=255) and reserves 256 for
//! BOS and 257 for EOS, so a from-scratch model on the synthetic tasks has a vocabulary
//! of 258 and round-trips any text exactly.

use std::path::Path;

use crate::error::{Result, TrainerError};

/// Name of the Hugging Face tokenizer file inside a model directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

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
    Hf(Box<tokenizers::Tokenizer>),
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tokenizer::Byte => write!(f, "Tokenizer::Byte"),
            Tokenizer::Hf(tok) => write!(f, "Tokenizer::Hf(vocab {})", tok.get_vocab_size(true)),
        }
    }
}

impl Tokenizer {
    /// The byte-level tokenizer.
    pub fn byte() -> Self {
        Tokenizer::Byte
    }

    /// Loads `dir/tokenizer.json` when it exists, otherwise returns the byte tokenizer.
    /// A `tokenizer.json` that exists but cannot be parsed is an error naming the file.
    pub fn for_model_dir(dir: &Path) -> Result<Self> {
        let path = dir.join(TOKENIZER_FILE);
        if !path.exists() {
            return Ok(Tokenizer::Byte);
        }
        let tok = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| TrainerError::Tokenizer(format!("{}: {e}", path.display())))?;
        Ok(Tokenizer::Hf(Box::new(tok)))
    }

    /// Encodes `text`. `add_special_tokens` follows the HF tokenizer's own post-processor
    /// (e.g. a LLaMA tokenizer adds BOS); the byte tokenizer never adds any token.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        match self {
            Tokenizer::Byte => Ok(text.bytes().map(u32::from).collect()),
            Tokenizer::Hf(tok) => {
                let encoding = tok
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
            Tokenizer::Hf(tok) => tok
                .decode(ids, false)
                .map_err(|e| TrainerError::Tokenizer(format!("decoding {ids:?}: {e}"))),
        }
    }

    /// Number of ids the model's embedding must cover (HF: including added tokens).
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Byte => BYTE_VOCAB_SIZE,
            Tokenizer::Hf(tok) => tok.get_vocab_size(true),
        }
    }

    /// The beginning-of-sequence id, if the tokenizer has one.
    pub fn bos_id(&self) -> Option<u32> {
        match self {
            Tokenizer::Byte => Some(BYTE_BOS),
            Tokenizer::Hf(tok) => BOS_NAMES.iter().find_map(|name| tok.token_to_id(name)),
        }
    }

    /// The end-of-sequence id, if the tokenizer has one. lm-eval-style scoring uses it
    /// as the prefix of a continuation whose context is empty.
    pub fn eos_id(&self) -> Option<u32> {
        match self {
            Tokenizer::Byte => Some(BYTE_EOS),
            Tokenizer::Hf(tok) => EOS_NAMES.iter().find_map(|name| tok.token_to_id(name)),
        }
    }

    /// Writes `dir/tokenizer.json` for a model directory being saved, so the saved model
    /// loads with the same tokenizer. The byte tokenizer writes nothing.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let Tokenizer::Hf(tok) = self else {
            return Ok(());
        };
        let path = dir.join(TOKENIZER_FILE);
        tok.save(&path, false)
            .map_err(|e| TrainerError::Tokenizer(format!("{}: {e}", path.display())))
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
