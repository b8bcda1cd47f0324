//! Instants as people read them: RFC 3339 UTC with milliseconds (`2026-12-05T15:00:00.000Z`),
//! the format of every timestamp in the HTTP answers, so a message and a JSON field that name
//! the same instant spell it the same way.
//!
//! Formatting only: the core reads no clock (chrono is built without its `clock` feature).

use chrono::{DateTime, SecondsFormat, Utc};

/// Displays milliseconds since the Unix epoch as RFC 3339 UTC, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rfc3339(pub u64);

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match i64::try_from(self.0).ok().and_then(DateTime::<Utc>::from_timestamp_millis) {
            Some(t) => f.write_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true)),
            // Instants a request can carry are validated to the years 2000..=9999, far inside
            // chrono's range; a message must still never panic, so show the raw number.
            None => write!(f, "{} ms after the Unix epoch", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_as_rfc3339_utc_with_milliseconds() {
        assert_eq!(Rfc3339(1_796_482_800_000).to_string(), "2026-12-05T15:00:00.000Z");
        assert_eq!(Rfc3339(1_796_482_800_042).to_string(), "2026-12-05T15:00:00.042Z");
        assert_eq!(Rfc3339(0).to_string(), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn out_of_range_instants_show_their_number() {
        assert_eq!(Rfc3339(u64::MAX).to_string(), format!("{} ms after the Unix epoch", u64::MAX));
    }
}
