//! The store's order-preserving index keys: byte strings that sort as the values they
//! encode, so that a sled range scan walks an index in the order a query asks for.

use ladder_query::{Position, Value};

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
#[cfg(test)]
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
#[cfg(test)]
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

#[cfg(test)]
mod tests {
    use std::cmp::Ordering;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn special_floats_order_in_key_bytes() {
        let values = [
            f64::NEG_INFINITY,
            -1e300,
            -1.0,
            -f64::MIN_POSITIVE,
            -0.0,
            0.0,
            1e-300,
            1.0,
            f64::INFINITY,
        ];
        for pair in values.windows(2) {
            assert!(
                f64_key(pair[0]) < f64_key(pair[1]),
                "{} < {}",
                pair[0],
                pair[1]
            );
        }
    }

    fn any_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            any::<f64>().prop_map(Value::Number),
            prop_oneof![Just(-0.0), Just(0.0), Just(1.0)].prop_map(Value::Number),
            "[a\\x00\\x01\\u{ff}\\u{e9}]{0,4}".prop_map(Value::Text),
        ]
    }

    fn any_position() -> impl Strategy<Value = Position> {
        (
            prop_oneof![any::<i64>(), -2i64..2],
            "[a\\x00\\u{ff}]{0,3}",
            prop_oneof![any::<u64>(), 0u64..3],
        )
            .prop_map(|(sweep_created_ms, sweep_id, index)| Position {
                sweep_created_ms,
                sweep_id,
                index,
            })
    }

    proptest! {
    #[test]
    fn f64_key_order_is_total_cmp(a in any::<f64>(), b in any::<f64>()) {
        prop_assert_eq!(f64_key(a).cmp(&f64_key(b)), a.total_cmp(&b));
        prop_assert_eq!(f64_from_key(f64_key(a)).to_bits(), a.to_bits());
    }

    #[test]
    fn value_and_position_keys_keep_the_order_and_round_trip(
        a in any_value(),
        b in any_value(),
        p in any_position(),
        q in any_position(),
        tail_a in proptest::collection::vec(any::<u8>(), 0..4),
        tail_b in proptest::collection::vec(any::<u8>(), 0..4),
    ) {
        let (ka, kb) = (value_key(&a), value_key(&b));
        prop_assert_eq!(ka.cmp(&kb), a.total_cmp(&b));
        let (back, used) = value_from_key(&ka).unwrap();
        prop_assert_eq!(used, ka.len());
        prop_assert_eq!(back.total_cmp(&a), Ordering::Equal);
        let (pa, pb) = (position_key(&p), position_key(&q));
        prop_assert_eq!(pa.cmp(&pb), p.cmp(&q));
        prop_assert_eq!(position_from_key(&pa), Some((p.clone(), pa.len())));
        // Self-delimiting: whatever follows, (value, position) order the full keys.
        let full = |k: &[u8], pk: &[u8], tail: &[u8]| [k, pk, tail].concat();
        let expected = a.total_cmp(&b).then(p.cmp(&q));
        if expected != Ordering::Equal {
            prop_assert_eq!(full(&ka, &pa, &tail_a).cmp(&full(&kb, &pb, &tail_b)), expected);
        }
    }

    }
}
