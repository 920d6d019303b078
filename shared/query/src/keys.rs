//! Order-preserving index keys: byte strings that sort as the values they encode.

use super::*;

/// Order-preserving bytes of an `f64`: comparing the bytes lexicographically gives
/// `f64::total_cmp` (so -inf < -1 < -0 < +0 < 1 < inf; NaNs at the ends).
pub fn f64_key(value: f64) -> [u8; 8] {
    let bits = value.to_bits();
    let ordered = if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    };
    ordered.to_be_bytes()
}

/// The inverse of [`f64_key`].
pub fn f64_from_key(bytes: [u8; 8]) -> f64 {
    let ordered = u64::from_be_bytes(bytes);
    let bits = if ordered >> 63 == 1 {
        ordered & !(1 << 63)
    } else {
        !ordered
    };
    f64::from_bits(bits)
}

/// Order-preserving, self-delimiting bytes of a [`Value`]: comparing the bytes of two
/// values lexicographically gives [`Value::total_cmp`] (booleans, then numbers by
/// [`f64_key`], then texts byte by byte), and no value's bytes are a prefix of another's,
/// so an index key may carry more bytes after them without disturbing the order.
///
/// Layout: a kind byte (0 boolean, 1 number, 2 text), then the boolean's byte, the
/// number's [`f64_key`], or the text with each 0x00 written as 0x00 0xFF and ended by
/// 0x00 0x00.
pub fn value_key(value: &Value) -> Vec<u8> {
    let mut key = Vec::new();
    push_value_key(&mut key, value);
    key
}

/// Appends [`value_key`] of `value` to `key`.
pub fn push_value_key(key: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Bool(flag) => key.extend_from_slice(&[0, u8::from(*flag)]),
        Value::Number(number) => {
            key.push(1);
            key.extend_from_slice(&f64_key(*number));
        }
        Value::Text(text) => {
            key.push(2);
            push_escaped(key, text.as_bytes());
        }
    }
}

/// The value at the start of `bytes` written by [`value_key`], and how many bytes it
/// took; `None` when they are not such a key.
pub fn value_from_key(bytes: &[u8]) -> Option<(Value, usize)> {
    let (&kind, rest) = bytes.split_first()?;
    match kind {
        0 => match rest.first()? {
            0 => Some((Value::Bool(false), 2)),
            1 => Some((Value::Bool(true), 2)),
            _ => None,
        },
        1 => {
            let number: [u8; 8] = rest.get(..8)?.try_into().ok()?;
            Some((Value::Number(f64_from_key(number)), 9))
        }
        2 => {
            let (text, used) = read_escaped(rest)?;
            Some((Value::Text(String::from_utf8(text).ok()?), 1 + used))
        }
        _ => None,
    }
}

/// Order-preserving, self-delimiting bytes of a [`Position`]: comparing them gives
/// `Position`'s order (sweep creation time, sweep id, trial index).
pub fn position_key(position: &Position) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + position.sweep_id.len() + 2 + 8);
    push_position_key(&mut key, position);
    key
}

/// Appends [`position_key`] of `position` to `key`.
pub fn push_position_key(key: &mut Vec<u8>, position: &Position) {
    let created = (position.sweep_created_ms as u64) ^ (1 << 63);
    key.extend_from_slice(&created.to_be_bytes());
    push_escaped(key, position.sweep_id.as_bytes());
    key.extend_from_slice(&position.index.to_be_bytes());
}

/// The position at the start of `bytes` written by [`position_key`], and how many bytes
/// it took.
pub fn position_from_key(bytes: &[u8]) -> Option<(Position, usize)> {
    let created: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    let sweep_created_ms = (u64::from_be_bytes(created) ^ (1 << 63)) as i64;
    let (sweep_id, used) = read_escaped(&bytes[8..])?;
    let start = 8 + used;
    let index: [u8; 8] = bytes.get(start..start + 8)?.try_into().ok()?;
    let position = Position {
        sweep_created_ms,
        sweep_id: String::from_utf8(sweep_id).ok()?,
        index: u64::from_be_bytes(index),
    };
    Some((position, start + 8))
}

/// `bytes` with 0x00 written as 0x00 0xFF, then 0x00 0x00: order-preserving and
/// self-delimiting.
pub(super) fn push_escaped(key: &mut Vec<u8>, bytes: &[u8]) {
    for &byte in bytes {
        key.push(byte);
        if byte == 0 {
            key.push(0xff);
        }
    }
    key.extend_from_slice(&[0, 0]);
}

/// The inverse of [`push_escaped`]: the bytes and how many key bytes they took.
pub(super) fn read_escaped(bytes: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        match *bytes.get(i)? {
            0 => match *bytes.get(i + 1)? {
                0 => return Some((out, i + 2)),
                0xff => {
                    out.push(0);
                    i += 2;
                }
                _ => return None,
            },
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
}
