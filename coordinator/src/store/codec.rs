//! How records and keys are encoded: JSON records, metric point chunks, the keys of
//! output events.

use super::*;

/// Largest encoded chunk of metric points stored as one record (one point larger than
/// this is a chunk of its own). sled splits a leaf page at 16 entries whatever their
/// size, and writes a page larger than a quarter of its 512 KiB log segment to a
/// separate blob file; chunks of 4 KiB keep every page of `metrics` inline in the log.
pub const POINT_CHUNK_BYTES: usize = 4096;

/// The points of one event as records: `(index of the chunk's first point, JSON array)`,
/// each array at most [`POINT_CHUNK_BYTES`] unless it holds a single point.
pub(super) fn encode_point_chunks(points: &[StoredPoint]) -> Result<Vec<(u32, Vec<u8>)>> {
    let mut chunks = Vec::new();
    let mut chunk: Vec<u8> = Vec::new();
    let mut first = 0u32;
    for (index, point) in points.iter().enumerate() {
        let encoded = encode(point)?;
        if !chunk.is_empty() && chunk.len() + 1 + encoded.len() + 1 > POINT_CHUNK_BYTES {
            chunk.push(b']');
            chunks.push((first, std::mem::take(&mut chunk)));
        }
        if chunk.is_empty() {
            first = index as u32;
            chunk.push(b'[');
        } else {
            chunk.push(b',');
        }
        chunk.extend_from_slice(&encoded);
    }
    if !chunk.is_empty() {
        chunk.push(b']');
        chunks.push((first, chunk));
    }
    Ok(chunks)
}

/// The points of one `metrics` record: a chunk (JSON array), or the single point (JSON
/// object) of a store written before chunking.
pub(super) fn decode_point_chunk(key: &[u8], value: &[u8]) -> Result<Vec<StoredPoint>> {
    if value.first() == Some(&b'[') {
        decode("metrics", key, value)
    } else {
        Ok(vec![decode("metrics", key, value)?])
    }
}

pub(super) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(CoordinatorError::Encode)
}

pub(super) fn decode<T: DeserializeOwned>(tree: &str, key: &[u8], bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| CoordinatorError::CorruptRecord {
        tree: tree.to_string(),
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}

pub(super) fn sled_err(e: sled::Error) -> CoordinatorError {
    CoordinatorError::Sled(e)
}

/// `run_id/` + attempt + seq + index, big-endian so keys sort in report order.
pub(super) fn event_key(run_id: &str, attempt: u32, seq: u64, index: u32) -> Vec<u8> {
    let mut key = attempt_prefix(run_id, attempt);
    key.extend_from_slice(&seq.to_be_bytes());
    key.extend_from_slice(&index.to_be_bytes());
    key
}

pub(super) fn attempt_prefix(run_id: &str, attempt: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(run_id.len() + 1 + 16);
    key.extend_from_slice(run_id.as_bytes());
    key.push(b'/');
    key.extend_from_slice(&attempt.to_be_bytes());
    key
}

pub(super) fn scan_all<T: DeserializeOwned>(
    tree: &sled::Tree,
    name: &str,
    prefix: &[u8],
) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for entry in tree.scan_prefix(prefix) {
        let (key, value) = entry.map_err(sled_err)?;
        out.push(decode(name, &key, &value)?);
    }
    Ok(out)
}
