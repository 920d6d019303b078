//! Times in queries: RFC 3339, or relative to now (`-2h`).

/// Milliseconds since the epoch of an RFC3339 time or of a time relative to `now_ms`
/// (`-2h`: two hours ago; units s, m, h, d, w).
pub fn parse_time(text: &str, now_ms: i64) -> Option<i64> {
    if let Some(relative) = text.strip_prefix('-') {
        let unit = relative.chars().last()?;
        let amount: f64 = relative[..relative.len() - unit.len_utf8()].parse().ok()?;
        let unit_ms = match unit {
            's' => 1_000.0,
            'm' => 60_000.0,
            'h' => 3_600_000.0,
            'd' => 86_400_000.0,
            'w' => 604_800_000.0,
            _ => return None,
        };
        if !amount.is_finite() || amount < 0.0 {
            return None;
        }
        return Some(now_ms - (amount * unit_ms) as i64);
    }
    parse_rfc3339(text)
}

/// An RFC 3339 time with its offset (`2024-05-01T12:00:00Z`, `...T14:00:00.5+02:00`) as
/// milliseconds since the epoch; a bare date (`2024-05-01`) is midnight UTC. Parsed by
/// `jiff`.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    if let Ok(time) = text.parse::<jiff::Timestamp>() {
        return Some(time.as_millisecond());
    }
    let date = jiff::civil::Date::strptime("%Y-%m-%d", text).ok()?;
    let midnight = date.to_zoned(jiff::tz::TimeZone::UTC).ok()?;
    Some(midnight.timestamp().as_millisecond())
}
