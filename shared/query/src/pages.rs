//! `--sort`, the order of rows, cursors and pages.

use super::*;

/// One `--sort` key: a field, ascending unless written `-field`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SortKey {
    pub field: Field,
    pub descending: bool,
}

/// Parses a `--sort` key: `metrics.eval/avg`, `-params.lr`, `+created`.
pub fn parse_sort(text: &str) -> Result<SortKey, QueryError> {
    let error = |message: String| QueryError {
        source: "--sort".into(),
        column: 1,
        message,
    };
    let trimmed = text.trim();
    let (descending, name) = match trimmed.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, trimmed.strip_prefix('+').unwrap_or(trimmed)),
    };
    let field = Field::parse(name).ok_or_else(|| {
        error(format!(
            "unknown field \"{name}\" (expected one of: {FIELD_NAMES})"
        ))
    })?;
    if field == Field::Tag {
        return Err(error("runs cannot be sorted by tag".into()));
    }
    Ok(SortKey { field, descending })
}

/// Parses the `--sort` keys of one listing: at most [`MAX_SORT_KEYS`] of them, each at
/// most [`MAX_QUERY_BYTES`] long.
pub fn parse_sort_keys(texts: &[String]) -> Result<Vec<SortKey>, QueryError> {
    if texts.len() > MAX_SORT_KEYS {
        return Err(QueryError {
            source: "--sort".into(),
            column: 1,
            message: format!(
                "{} sort keys, more than the limit of {MAX_SORT_KEYS}",
                texts.len()
            ),
        });
    }
    let mut keys = Vec::with_capacity(texts.len());
    for text in texts {
        if text.len() > MAX_QUERY_BYTES {
            return Err(too_long("--sort", "sort key", text, MAX_QUERY_BYTES, ""));
        }
        keys.push(parse_sort(text)?);
    }
    Ok(keys)
}

/// Decodes a `--cursor` sent by a client: at most [`MAX_CURSOR_BYTES`], then
/// [`Cursor::decode`].
pub fn parse_cursor(text: &str) -> Result<Cursor, QueryError> {
    if text.len() > MAX_CURSOR_BYTES {
        return Err(too_long(
            "--cursor",
            "cursor",
            text,
            MAX_CURSOR_BYTES,
            " (pass the `next_cursor` of the previous page)",
        ));
    }
    Cursor::decode(text)
}

/// Where a run stands in every listing: sweep creation time, sweep id, trial index.
/// Unique per run; the last tie-break of every order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    pub sweep_created_ms: i64,
    pub sweep_id: String,
    pub index: u64,
}

/// A row's sort values and position: what the order compares and what a cursor keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowKey {
    pub values: Vec<Option<Value>>,
    pub position: Position,
}

/// The sort values of a run for `keys`.
pub fn row_key(run: &dyn RunFacts, keys: &[SortKey], position: Position) -> RowKey {
    RowKey {
        values: keys.iter().map(|k| run.value(&k.field)).collect(),
        position,
    }
}

/// The order of rows under `keys`: each key in its direction with missing values last,
/// then position. Total: two rows compare equal only with the same position.
pub fn compare_rows(keys: &[SortKey], a: &RowKey, b: &RowKey) -> Ordering {
    for (i, key) in keys.iter().enumerate() {
        let ordering = match (
            a.values.get(i).cloned().flatten(),
            b.values.get(i).cloned().flatten(),
        ) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(x), Some(y)) => {
                let natural = x.total_cmp(&y);
                if key.descending {
                    natural.reverse()
                } else {
                    natural
                }
            }
        };
        if ordering != Ordering::Equal {
            return ordering;
        }
    }
    a.position.cmp(&b.position)
}

/// The position after which the next page starts, with the sort it belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    /// The `--sort` keys as written (a cursor is only valid for the same sort).
    pub sort: Vec<String>,
    pub last: RowKey,
}

impl Cursor {
    /// Opaque, URL-safe text: base64 of the cursor as a JSON array without field names
    /// (`[sort, values, sweep_created_ms, sweep_id, index]`), a few dozen characters
    /// for the usual listings.
    pub fn encode(&self) -> String {
        use base64::Engine;
        let position = &self.last.position;
        let compact = (
            &self.sort,
            &self.last.values,
            position.sweep_created_ms,
            &position.sweep_id,
            position.index,
        );
        let json = serde_json::to_vec(&compact).expect("cursor serialises");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    pub fn decode(text: &str) -> Result<Cursor, QueryError> {
        use base64::Engine;
        let error = || {
            QueryError {
            source: "--cursor".into(),
            column: 1,
            message: "not a cursor returned by this coordinator (pass the `next_cursor` of the previous page)".into(),
        }
        };
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| error())?;
        type Compact = (Vec<String>, Vec<Option<Value>>, i64, String, u64);
        let (sort, values, sweep_created_ms, sweep_id, index): Compact =
            serde_json::from_slice(&bytes).map_err(|_| error())?;
        Ok(Cursor {
            sort,
            last: RowKey {
                values,
                position: Position {
                    sweep_created_ms,
                    sweep_id,
                    index,
                },
            },
        })
    }
}

/// One page of `rows` (already filtered) in `keys` order, starting strictly after
/// `after`; returns the page and whether more rows follow.
pub fn page<T>(
    keys: &[SortKey],
    mut rows: Vec<(RowKey, T)>,
    after: Option<&RowKey>,
    limit: usize,
) -> (Vec<(RowKey, T)>, bool) {
    if let Some(after) = after {
        rows.retain(|(key, _)| compare_rows(keys, key, after) == Ordering::Greater);
    }
    rows.sort_by(|a, b| compare_rows(keys, &a.0, &b.0));
    let more = limit > 0 && rows.len() > limit;
    if limit > 0 {
        rows.truncate(limit);
    }
    (rows, more)
}

/// [`page`] over rows offered one at a time, holding at most about `2 * (limit + 1)` of
/// them (all of them when `limit` is 0): a scan of a million runs keeps a page's worth
/// in memory, not the million.
pub struct PageCollector<'k, T> {
    keys: &'k [SortKey],
    after: Option<RowKey>,
    limit: usize,
    rows: Vec<(RowKey, T)>,
}

impl<'k, T> PageCollector<'k, T> {
    pub fn new(keys: &'k [SortKey], after: Option<RowKey>, limit: usize) -> Self {
        PageCollector {
            keys,
            after,
            limit,
            rows: Vec::new(),
        }
    }

    /// Offers one row; rows at or before the cursor are dropped at once.
    pub fn offer(&mut self, key: RowKey, row: T) {
        if let Some(after) = &self.after {
            if compare_rows(self.keys, &key, after) != Ordering::Greater {
                return;
            }
        }
        self.rows.push((key, row));
        if self.limit > 0 && self.rows.len() >= 2 * (self.limit + 1) {
            let keys = self.keys;
            self.rows.sort_by(|a, b| compare_rows(keys, &a.0, &b.0));
            // One more than the page, so `finish` can tell whether more follow.
            self.rows.truncate(self.limit + 1);
        }
    }

    /// The page and whether more rows follow it: the same as [`page`] of every row
    /// offered.
    pub fn finish(self) -> (Vec<(RowKey, T)>, bool) {
        page(self.keys, self.rows, None, self.limit)
    }
}
