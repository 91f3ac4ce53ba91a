//! Timestamps: stored as milliseconds since the Unix epoch, shown as RFC 3339 UTC with
//! exactly three fractional digits and `Z`.
use chrono::{DateTime, SecondsFormat, Utc};

pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

pub fn format_ms(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses an RFC 3339 timestamp (any offset) to epoch milliseconds, truncating below 1 ms.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc).timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_millis_and_z() {
        assert_eq!(format_ms(1_777_897_976_789), "2026-05-04T12:32:56.789Z");
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn parses_offsets() {
        assert_eq!(
            parse_rfc3339_ms("2026-05-04T14:32:56.789+02:00"),
            Some(1_777_897_976_789)
        );
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
    }
}
