//! `WatchRunResponse` by hand, so that the points of one change of a run are encoded once
//! and the bytes shared by every stream that watches the run.
//!
//! The message is the one `runs.proto` declares, field for field, and decodes like it;
//! [`WatchRunResponse::encoded_points`] adds points that are already encoded as entries of
//! field 2 (`points`), written after `points` itself. Protobuf readers see one repeated
//! field either way. `build.rs` maps `.ladder.v1.WatchRunResponse` to this type.

use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{self, DecodeContext, WireType};
use prost::DecodeError;

use crate::v1::{LogLine, MetricPoint, RunStatus};

/// See `WatchRunResponse` in `runs.proto`.
#[derive(Clone, PartialEq, Default, Debug)]
pub struct WatchRunResponse {
    /// The attempt the points and lines belong to.
    pub attempt: u32,
    pub points: Vec<MetricPoint>,
    pub lines: Vec<LogLine>,
    /// The run's status after these (a `RunStatus`).
    pub status: i32,
    /// Whether `points` is a downsampled history.
    pub downsampled: bool,
    /// More points, already encoded as field-2 entries ([`encode_points`]) and sent after
    /// `points`; cloning shares the bytes. Decoding puts every point in `points` and
    /// leaves this empty.
    pub encoded_points: Bytes,
}

/// `points` encoded as entries of `WatchRunResponse.points`, for
/// [`WatchRunResponse::encoded_points`].
pub fn encode_points(points: &[MetricPoint]) -> Bytes {
    let mut buffer = Vec::with_capacity(encoding::message::encoded_len_repeated(2, points));
    for point in points {
        encoding::message::encode(2, point, &mut buffer);
    }
    Bytes::from(buffer)
}

impl WatchRunResponse {
    /// `status` as the enum; an unknown value reads as the default.
    pub fn status(&self) -> RunStatus {
        RunStatus::try_from(self.status).unwrap_or_default()
    }

    pub fn set_status(&mut self, status: RunStatus) {
        self.status = status as i32;
    }
}

impl prost::Message for WatchRunResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if self.attempt != 0 {
            encoding::uint32::encode(1, &self.attempt, buf);
        }
        for point in &self.points {
            encoding::message::encode(2, point, buf);
        }
        buf.put_slice(&self.encoded_points);
        for line in &self.lines {
            encoding::message::encode(3, line, buf);
        }
        if self.status != 0 {
            encoding::int32::encode(4, &self.status, buf);
        }
        if self.downsampled {
            encoding::bool::encode(5, &self.downsampled, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => encoding::uint32::merge(wire_type, &mut self.attempt, buf, ctx),
            2 => encoding::message::merge_repeated(wire_type, &mut self.points, buf, ctx),
            3 => encoding::message::merge_repeated(wire_type, &mut self.lines, buf, ctx),
            4 => encoding::int32::merge(wire_type, &mut self.status, buf, ctx),
            5 => encoding::bool::merge(wire_type, &mut self.downsampled, buf, ctx),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let attempt = if self.attempt != 0 {
            encoding::uint32::encoded_len(1, &self.attempt)
        } else {
            0
        };
        let status = if self.status != 0 {
            encoding::int32::encoded_len(4, &self.status)
        } else {
            0
        };
        let downsampled = if self.downsampled {
            encoding::bool::encoded_len(5, &self.downsampled)
        } else {
            0
        };
        attempt
            + encoding::message::encoded_len_repeated(2, &self.points)
            + self.encoded_points.len()
            + encoding::message::encoded_len_repeated(3, &self.lines)
            + status
            + downsampled
    }

    fn clear(&mut self) {
        *self = WatchRunResponse::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn point(step: i64) -> MetricPoint {
        MetricPoint {
            step: Some(step),
            values: [
                ("loss".to_string(), 1.0 / step as f64),
                ("acc".to_string(), 0.5),
            ]
            .into(),
            time_ms: 1_700_000_000_000 + step,
        }
    }

    /// What the generated code would be: the same fields, decoded as `runs.proto` says.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Generated {
        #[prost(uint32, tag = "1")]
        attempt: u32,
        #[prost(message, repeated, tag = "2")]
        points: Vec<MetricPoint>,
        #[prost(message, repeated, tag = "3")]
        lines: Vec<LogLine>,
        #[prost(enumeration = "RunStatus", tag = "4")]
        status: i32,
        #[prost(bool, tag = "5")]
        downsampled: bool,
    }

    #[test]
    fn shared_points_encode_as_the_declared_message_and_decode_back() {
        let message = WatchRunResponse {
            attempt: 2,
            points: vec![point(1)],
            lines: vec![LogLine {
                time_ms: 5,
                stream: "stdout".into(),
                text: "hello".into(),
            }],
            status: RunStatus::Running as i32,
            downsampled: false,
            encoded_points: encode_points(&[point(2), point(3)]),
        };
        let bytes = message.encode_to_vec();
        assert_eq!(bytes.len(), message.encoded_len());
        let generated = Generated::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(generated.attempt, 2);
        assert_eq!(generated.points, vec![point(1), point(2), point(3)]);
        assert_eq!(generated.lines, message.lines);
        assert_eq!(generated.status, RunStatus::Running as i32);
        let decoded = WatchRunResponse::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(decoded.points, vec![point(1), point(2), point(3)]);
        assert!(decoded.encoded_points.is_empty());
        assert_eq!(decoded.status(), RunStatus::Running);
        // Without shared points it is byte for byte the generated message (one value per
        // point: a map's entries come in its hash order).
        let single = MetricPoint {
            step: Some(7),
            values: [("loss".to_string(), 0.25)].into(),
            time_ms: 9,
        };
        let plain = WatchRunResponse {
            points: vec![single.clone()],
            encoded_points: Bytes::new(),
            downsampled: true,
            ..message.clone()
        };
        let twin = Generated {
            attempt: 2,
            points: vec![single],
            lines: message.lines.clone(),
            status: RunStatus::Running as i32,
            downsampled: true,
        };
        assert_eq!(plain.encode_to_vec(), twin.encode_to_vec());
    }
}
