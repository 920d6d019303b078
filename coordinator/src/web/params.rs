//! The query string of an API request: decoded, bounded, and checked against the
//! parameters the endpoint knows, so that a misspelt parameter is an error that names
//! it rather than silently ignored.

use super::ApiError;

/// Longest query string accepted; beyond it, 400 naming the limit. Leaves room for the
/// longest `where` (16 KiB) percent-encoded.
pub const MAX_QUERY_BYTES: usize = ladder_limits::MAX_HTTP_QUERY_BYTES;

/// The decoded `name=value` pairs of a query string, in order.
#[derive(Debug, Default)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// Decodes `query`, refusing parameters not in `known` and repeats of those not in
    /// `repeatable`.
    pub fn parse(
        query: Option<&str>,
        known: &[&str],
        repeatable: &[&str],
    ) -> Result<Params, ApiError> {
        let Some(query) = query else {
            return Ok(Params::default());
        };
        if query.len() > MAX_QUERY_BYTES {
            return Err(ApiError::invalid(
                "query",
                format!(
                    "the query string is {} bytes; the limit is {MAX_QUERY_BYTES}",
                    query.len()
                ),
            ));
        }
        let mut pairs: Vec<(String, String)> = Vec::new();
        for part in query.split('&').filter(|p| !p.is_empty()) {
            let (raw_name, raw_value) = part.split_once('=').unwrap_or((part, ""));
            let name = decode(raw_name).map_err(|m| ApiError::invalid("query", m))?;
            if !known.contains(&name.as_str()) {
                return Err(ApiError::invalid(
                    clip(&name, 64),
                    format!(
                        "unknown parameter (this endpoint takes: {})",
                        known.join(", ")
                    ),
                ));
            }
            let value = decode(raw_value).map_err(|m| ApiError::invalid(&name, m))?;
            if !repeatable.contains(&name.as_str()) && pairs.iter().any(|(n, _)| *n == name) {
                return Err(ApiError::invalid(&name, "given more than once"));
            }
            pairs.push((name, value));
        }
        Ok(Params { pairs })
    }

    /// The value of `name`; empty when absent.
    pub fn text(&self, name: &str) -> &str {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.as_str())
    }

    /// Every value of a repeatable `name`, in order.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.pairs
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The value of `name` as a whole number; 0 when absent or empty.
    pub fn number(&self, name: &str) -> Result<u32, ApiError> {
        let text = self.text(name);
        if text.is_empty() {
            return Ok(0);
        }
        text.parse::<u32>().map_err(|_| {
            ApiError::invalid(
                name,
                format!("expected a whole number, found {:?}", clip(text, 32)),
            )
        })
    }
}

/// At most the first `max` bytes of `text`, cut at a character boundary: what an error
/// message quotes of a value.
pub fn clip(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Percent-decodes one component of a query string (`+` is a space) as UTF-8.
pub fn decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent-escape at byte {i}"))?;
                out.push(hex);
                i += 2;
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "not UTF-8 once percent-decoded".to_string())
}

/// Percent-encodes `text` for a query string or a cookie value: everything but ASCII
/// letters, digits and `-._~`.
pub fn encode(text: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn unknown_repeated_and_malformed_parameters_are_refused_by_name() {
        let parsed = Params::parse(Some("a=1&b=x+y%2Fz&b=2"), &["a", "b"], &["b"]).unwrap();
        assert_eq!(parsed.text("a"), "1");
        assert_eq!(parsed.all("b"), vec!["x y/z", "2"]);
        assert_eq!(parsed.number("a").unwrap(), 1);
        let error = Params::parse(Some("c=1"), &["a"], &[]).unwrap_err();
        assert_eq!(error.field.as_deref(), Some("c"));
        assert!(error.message.contains("unknown parameter"), "{error:?}");
        let error = Params::parse(Some("a=1&a=2"), &["a"], &[]).unwrap_err();
        assert_eq!(error.field.as_deref(), Some("a"));
        let error = Params::parse(Some("a=%G1"), &["a"], &[]).unwrap_err();
        assert_eq!(error.field.as_deref(), Some("a"));
        let error = Params::parse(Some("a=x"), &["a"], &[])
            .unwrap()
            .number("a")
            .unwrap_err();
        assert!(error.message.contains("whole number"), "{error:?}");
        let long = "a=".to_string() + &"x".repeat(MAX_QUERY_BYTES);
        assert!(Params::parse(Some(&long), &["a"], &[]).is_err());
    }

    proptest! {
        #[test]
        fn decoding_what_was_encoded_gives_it_back(text in ".{0,64}") {
            prop_assert_eq!(decode(&encode(&text)).unwrap(), text);
        }

        #[test]
        fn arbitrary_query_strings_never_panic(query in ".{0,256}") {
            let _ = Params::parse(Some(&query), &["a", "b"], &["b"]);
        }
    }
}
