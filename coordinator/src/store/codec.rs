//! How records and keys are encoded: JSON records (run records zstd-compressed against
//! a fixed dictionary), metric point chunks, the keys of output events.

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

/// A record as JSON, or, from its first byte, zstd-compressed JSON (see
/// [`encode_compressed`]).
pub(super) fn decode<T: DeserializeOwned>(tree: &str, key: &[u8], bytes: &[u8]) -> Result<T> {
    let corrupt = |source| CoordinatorError::CorruptRecord {
        tree: tree.to_string(),
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    };
    match bytes.split_first() {
        Some((&RUN_DICT_V1_TAG, frame)) => {
            let json = decompress_v1(frame).map_err(|e| corrupt(serde_json::Error::io(e)))?;
            serde_json::from_slice(&json).map_err(corrupt)
        }
        _ => serde_json::from_slice(bytes).map_err(corrupt),
    }
}

/// First byte of a record stored as a zstd frame of its JSON, compressed against the
/// dictionary [`RUN_DICT_V1`]. A JSON record starts with `{` or `[`, so records stored
/// uncompressed (by earlier versions, or short ones) are told apart by that byte alone.
pub(super) const RUN_DICT_V1_TAG: u8 = 0x01;

/// The zstd raw-content dictionary of tag [`RUN_DICT_V1_TAG`]: a typical run record's
/// JSON, so that field names, status words and the shape of summaries and attempts
/// cost a few bits each. Records on disk are decoded with it forever: it must never
/// change (a test pins its hash); a better dictionary gets a new tag.
pub(super) const RUN_DICT_V1: &[u8] = include_bytes!("run-record-v1.dict");

/// zstd level of [`encode_compressed`]: level 3 is zstd's default, and records are
/// small enough that higher levels buy little.
const RUN_COMPRESSION_LEVEL: i32 = 3;

/// Largest decompressed record accepted: a frame claiming more is corrupt (run records
/// are bounded far below this by the limits on what a run may store).
const MAX_DECOMPRESSED_RECORD_BYTES: usize = 64 << 20;

/// JSON shorter than this is stored as it is: a frame would not be smaller.
const MIN_COMPRESSED_RECORD_BYTES: usize = 64;

fn encoder_dictionary() -> &'static zstd::dict::EncoderDictionary<'static> {
    static DICT: std::sync::OnceLock<zstd::dict::EncoderDictionary<'static>> =
        std::sync::OnceLock::new();
    DICT.get_or_init(|| zstd::dict::EncoderDictionary::copy(RUN_DICT_V1, RUN_COMPRESSION_LEVEL))
}

fn decoder_dictionary() -> &'static zstd::dict::DecoderDictionary<'static> {
    static DICT: std::sync::OnceLock<zstd::dict::DecoderDictionary<'static>> =
        std::sync::OnceLock::new();
    DICT.get_or_init(|| zstd::dict::DecoderDictionary::copy(RUN_DICT_V1))
}

/// A record as [`RUN_DICT_V1_TAG`] and a zstd frame of its JSON (without checksum:
/// sled checks every log entry's CRC), or as plain JSON when that is no longer.
/// Run records are about a quarter of their JSON size this way.
pub(super) fn encode_compressed<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let json = encode(value)?;
    if json.len() < MIN_COMPRESSED_RECORD_BYTES {
        return Ok(json);
    }
    thread_local! {
        static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    let frame = COMPRESSOR.with(|cell| -> std::io::Result<Vec<u8>> {
        let mut cell = cell.borrow_mut();
        let compressor = match cell.as_mut() {
            Some(compressor) => compressor,
            None => {
                let mut compressor =
                    zstd::bulk::Compressor::with_prepared_dictionary(encoder_dictionary())?;
                compressor.include_checksum(false)?;
                compressor.include_dictid(false)?;
                compressor.include_contentsize(true)?;
                cell.insert(compressor)
            }
        };
        let body = compressor.compress(&json)?;
        let mut out = Vec::with_capacity(1 + body.len());
        out.push(RUN_DICT_V1_TAG);
        out.extend_from_slice(&body);
        Ok(out)
    });
    match frame {
        Ok(frame) if frame.len() < json.len() => Ok(frame),
        Ok(_) => Ok(json),
        Err(source) => Err(CoordinatorError::Io {
            context: "failed to compress a record".into(),
            source,
        }),
    }
}

fn decompress_v1(frame: &[u8]) -> std::io::Result<Vec<u8>> {
    let invalid = |message: String| std::io::Error::new(std::io::ErrorKind::InvalidData, message);
    let size = match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(size)) => size,
        Ok(None) => return Err(invalid("zstd frame without its content size".into())),
        Err(_) => return Err(invalid("not a zstd frame".into())),
    };
    if size > MAX_DECOMPRESSED_RECORD_BYTES as u64 {
        return Err(invalid(format!(
            "zstd frame claims {size} bytes, more than the {MAX_DECOMPRESSED_RECORD_BYTES} a record may hold"
        )));
    }
    thread_local! {
        static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    DECOMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        let decompressor = match cell.as_mut() {
            Some(decompressor) => decompressor,
            None => cell.insert(zstd::bulk::Decompressor::with_prepared_dictionary(
                decoder_dictionary(),
            )?),
        };
        let json = decompressor.decompress(frame, size as usize)?;
        if json.len() as u64 != size {
            return Err(invalid(format!(
                "zstd frame holds {} bytes, not the {size} it claims",
                json.len()
            )));
        }
        Ok(json)
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
