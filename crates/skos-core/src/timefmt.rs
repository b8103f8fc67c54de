//! Timestamps on the wire.
//!
//! We always emit RFC 3339 in UTC with a `Z`. We accept RFC 3339 with any
//! offset, and also the naive ISO 8601 form the seed's Python agents emit
//! (`datetime.utcnow().isoformat()`, no offset), which is taken as UTC.

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serializer};

pub type Timestamp = DateTime<Utc>;

pub fn parse(text: &str) -> Option<Timestamp> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, fmt) {
            return Some(t.and_utc());
        }
    }
    None
}

pub fn format(t: &Timestamp) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(t))
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
    let text = String::deserialize(d)?;
    parse(&text).ok_or_else(|| serde::de::Error::custom(format!("invalid timestamp {text:?}")))
}

/// The same, for `Option<Timestamp>` fields.
pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        match text {
            None => Ok(None),
            Some(text) => parse(&text)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom(format!("invalid timestamp {text:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Deadline {
        #[serde(default, with = "option")]
        at: Option<Timestamp>,
    }

    #[test]
    fn an_optional_timestamp_reads_as_given() {
        let d: Deadline = serde_json::from_str(r#"{"at":"2024-01-01T00:00:05Z"}"#).unwrap();
        assert_eq!(d.at, parse("2024-01-01T00:00:05Z"));
        assert!(d.at.is_some());
        let d: Deadline = serde_json::from_str(r#"{"at":null}"#).unwrap();
        assert_eq!(d.at, None);
        assert!(serde_json::from_str::<Deadline>(r#"{"at":"soon"}"#).is_err());
    }

    #[test]
    fn accepts_seed_forms() {
        let z = parse("2024-01-01T00:00:00Z").unwrap();
        let naive = parse("2024-01-01T00:00:00").unwrap();
        let micro = parse("2024-01-01T00:00:00.123456").unwrap();
        let off = parse("2024-01-01T01:00:00+01:00").unwrap();
        assert_eq!(z, naive);
        assert_eq!(z, off);
        assert_eq!(micro.timestamp_subsec_micros(), 123456);
        assert!(parse("yesterday").is_none());
        assert_eq!(format(&z), "2024-01-01T00:00:00.000Z");
    }
}
