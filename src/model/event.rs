//! The clickstream event (docs/architecture.md, "Data contracts") and its JSON codec with field-level validation.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, Serializer};

use super::validate::{normalize_city, validate_name, validate_token, FieldError};
use super::ArmKey;
use crate::time;

pub const EVENT_ID_MAX: usize = 128;
pub const CUSTOMER_ID_MAX: usize = 128;
pub const REFERRER_MAX: usize = 64;
pub const REQUEST_ID_MAX: usize = 512;
/// A Kafka message or HTTP body larger than this is not an event.
pub const EVENT_JSON_MAX: usize = 16 * 1024;

/// The field names of the contract, in their documented order.
pub const FIELDS: [&str; 10] = [
    "event_id",
    "kind",
    "tenant",
    "slot",
    "city",
    "banner",
    "ts",
    "customer_id",
    "referrer",
    "request_id",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Impression,
    Click,
}

impl EventKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            EventKind::Impression => "impression",
            EventKind::Click => "click",
        }
    }

    pub fn parse(field: &str, s: &str) -> Result<Self, FieldError> {
        match s {
            "impression" => Ok(EventKind::Impression),
            "click" => Ok(EventKind::Click),
            other => Err(FieldError::new(
                field,
                format!(
                    "must be \"impression\" or \"click\" (got {})",
                    super::validate::shown(other)
                ),
            )),
        }
    }
}

/// One validated impression or click. Every constructor validates; fields are public for reading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub event_id: String,
    pub kind: EventKind,
    pub tenant: String,
    pub slot: String,
    pub city: String,
    pub banner: String,
    #[serde(serialize_with = "serialize_ts")]
    pub ts: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub referrer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// Why bytes are not an event. `field` names the field for field-level rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("an event must be a JSON object")]
    NotAnObject,
    #[error("event is {0} bytes, more than the limit of {EVENT_JSON_MAX}")]
    TooLarge(usize),
    #[error(transparent)]
    Field(#[from] FieldError),
}

impl EventError {
    /// The field the error is about, if it is about one.
    pub fn field(&self) -> Option<&str> {
        match self {
            EventError::Field(f) => Some(&f.field),
            _ => None,
        }
    }
}

fn serialize_ts<S: Serializer>(ts: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&time::format_utc(*ts))
}

/// The wire shape, borrowed where the JSON has no escapes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent<'a> {
    #[serde(borrow)]
    event_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    tenant: Option<Cow<'a, str>>,
    #[serde(borrow)]
    slot: Option<Cow<'a, str>>,
    #[serde(borrow)]
    city: Option<Cow<'a, str>>,
    #[serde(borrow)]
    banner: Option<Cow<'a, str>>,
    #[serde(borrow)]
    ts: Option<Cow<'a, str>>,
    #[serde(borrow)]
    customer_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    referrer: Option<Cow<'a, str>>,
    #[serde(borrow)]
    request_id: Option<Cow<'a, str>>,
}

/// Field values before validation, as read from any codec (JSON, Parquet, CSV, HTTP). A codec
/// hands the city through [`normalize_city`] first: [`EventFields::check`] takes it in that form
/// only.
#[derive(Debug, Default, Clone)]
pub struct EventFields<'a> {
    pub event_id: Option<&'a str>,
    pub kind: Option<&'a str>,
    pub tenant: Option<&'a str>,
    pub slot: Option<&'a str>,
    pub city: Option<&'a str>,
    pub banner: Option<&'a str>,
    pub ts: Option<DateTime<Utc>>,
    pub customer_id: Option<&'a str>,
    pub referrer: Option<&'a str>,
    pub request_id: Option<&'a str>,
}

fn required<'v>(field: &str, v: Option<&'v str>) -> Result<&'v str, FieldError> {
    v.ok_or_else(|| FieldError::new(field, "is required"))
}

fn name<'v>(field: &str, v: Option<&'v str>) -> Result<&'v str, FieldError> {
    let v = required(field, v)?;
    validate_name(field, v)?;
    Ok(v)
}

fn optional<'v>(
    field: &str,
    v: Option<&'v str>,
    max: usize,
) -> Result<Option<&'v str>, FieldError> {
    match v {
        None | Some("") => Ok(None),
        Some(v) => {
            validate_token(field, v, max)?;
            Ok(Some(v))
        }
    }
}

/// An event that borrows its strings: what [`EventFields::check`] gives once the rules hold, and
/// what the Parquet writer takes (the generator writes millions without allocating per row).
/// [`EventRef::to_event`] makes the owned [`Event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRef<'a> {
    pub event_id: &'a str,
    pub kind: EventKind,
    pub tenant: &'a str,
    pub slot: &'a str,
    pub city: &'a str,
    pub banner: &'a str,
    pub ts: DateTime<Utc>,
    pub customer_id: Option<&'a str>,
    pub referrer: Option<&'a str>,
    pub request_id: Option<&'a str>,
}

impl<'a> From<&'a Event> for EventRef<'a> {
    fn from(e: &'a Event) -> Self {
        Self {
            event_id: &e.event_id,
            kind: e.kind,
            tenant: &e.tenant,
            slot: &e.slot,
            city: &e.city,
            banner: &e.banner,
            ts: e.ts,
            customer_id: e.customer_id.as_deref(),
            referrer: e.referrer.as_deref(),
            request_id: e.request_id.as_deref(),
        }
    }
}

impl EventRef<'_> {
    pub fn to_event(&self) -> Event {
        Event {
            event_id: self.event_id.to_string(),
            kind: self.kind,
            tenant: self.tenant.to_string(),
            slot: self.slot.to_string(),
            city: self.city.to_string(),
            banner: self.banner.to_string(),
            ts: self.ts,
            customer_id: self.customer_id.map(str::to_string),
            referrer: self.referrer.map(str::to_string),
            request_id: self.request_id.map(str::to_string),
        }
    }

    pub fn arm(&self) -> ArmKey {
        ArmKey::new(self.tenant, self.slot, self.city, self.banner)
    }
}

impl<'a> EventFields<'a> {
    /// Applies every rule of the contract; the first broken rule (in field order) is returned.
    pub fn check(&self) -> Result<EventRef<'a>, FieldError> {
        let event_id = required("event_id", self.event_id)?;
        validate_token("event_id", event_id, EVENT_ID_MAX)?;
        let kind = EventKind::parse("kind", required("kind", self.kind)?)?;
        Ok(EventRef {
            event_id,
            kind,
            tenant: name("tenant", self.tenant)?,
            slot: name("slot", self.slot)?,
            city: name("city", self.city)?,
            banner: name("banner", self.banner)?,
            ts: self
                .ts
                .ok_or_else(|| FieldError::new("ts", "is required"))?,
            customer_id: optional("customer_id", self.customer_id, CUSTOMER_ID_MAX)?,
            referrer: optional("referrer", self.referrer, REFERRER_MAX)?,
            request_id: optional("request_id", self.request_id, REQUEST_ID_MAX)?,
        })
    }

    /// [`EventFields::check`], owned.
    pub fn validate(&self) -> Result<Event, FieldError> {
        self.check().map(|e| e.to_event())
    }
}

impl Event {
    /// Decodes and validates one JSON object.
    pub fn from_json(bytes: &[u8]) -> Result<Event, EventError> {
        Self::decode_json(bytes, |e| e.to_event())
    }

    /// Decodes and validates one JSON object and hands it, borrowed, to `use_event`.
    pub fn decode_json<T>(
        bytes: &[u8],
        use_event: impl FnOnce(EventRef<'_>) -> T,
    ) -> Result<T, EventError> {
        if bytes.len() > EVENT_JSON_MAX {
            return Err(EventError::TooLarge(bytes.len()));
        }
        // One UTF-8 check of the whole text is cheaper than serde_json's check per string; the
        // slice parser still runs on invalid text, for its error message.
        let parsed = match std::str::from_utf8(bytes) {
            Ok(text) => serde_json::from_str::<RawEvent>(text),
            Err(_) => serde_json::from_slice(bytes),
        };
        let raw = match parsed {
            Ok(raw) => raw,
            Err(e) => return Err(explain_json_error(bytes, e)),
        };
        let ts = match raw.ts.as_deref() {
            None => None,
            Some(s) => {
                Some(time::parse_rfc3339(s).map_err(|e| FieldError::new("ts", e.to_string()))?)
            }
        };
        let city = match raw.city.as_deref() {
            None => None,
            Some(c) => Some(normalize_city("city", c)?),
        };
        let fields = EventFields {
            event_id: raw.event_id.as_deref(),
            kind: raw.kind.as_deref(),
            tenant: raw.tenant.as_deref(),
            slot: raw.slot.as_deref(),
            city: city.as_deref(),
            banner: raw.banner.as_deref(),
            ts,
            customer_id: raw.customer_id.as_deref(),
            referrer: raw.referrer.as_deref(),
            request_id: raw.request_id.as_deref(),
        };
        Ok(use_event(fields.check()?))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an Event always serializes")
    }

    pub fn arm(&self) -> ArmKey {
        ArmKey::new(&self.tenant, &self.slot, &self.city, &self.banner)
    }

    pub fn fields(&self) -> EventFields<'_> {
        EventFields {
            event_id: Some(&self.event_id),
            kind: Some(self.kind.as_str()),
            tenant: Some(&self.tenant),
            slot: Some(&self.slot),
            city: Some(&self.city),
            banner: Some(&self.banner),
            ts: Some(self.ts),
            customer_id: self.customer_id.as_deref(),
            referrer: self.referrer.as_deref(),
            request_id: self.request_id.as_deref(),
        }
    }
}

/// serde's typed errors do not always name the field; look at the document again to say which
/// field broke which rule.
fn explain_json_error(bytes: &[u8], err: serde_json::Error) -> EventError {
    let value: serde_json::Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(_) => return EventError::Json(err.to_string()),
    };
    let Some(map) = value.as_object() else {
        return EventError::NotAnObject;
    };
    for (key, v) in map {
        if !FIELDS.contains(&key.as_str()) {
            return FieldError::new(
                key.as_str(),
                format!("is not a field of an event (fields: {})", FIELDS.join(", ")),
            )
            .into();
        }
        if !(v.is_string() || v.is_null()) {
            return FieldError::new(key.as_str(), "must be a string").into();
        }
    }
    EventError::Json(err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"event_id":"0b6f7c1e-2d4b-4c57-9d7e-3f1f8f3c2a10","kind":"click","tenant":"ajio","slot":"hero","city":"pune","banner":"b03","ts":"2026-11-28T21:05:00+05:30","customer_id":"c-42","referrer":"ads","request_id":"r1"}"#;

    fn err_field(json: &str) -> String {
        Event::from_json(json.as_bytes())
            .unwrap_err()
            .field()
            .unwrap_or("<none>")
            .to_string()
    }

    #[test]
    fn decodes_the_contract() {
        let e = Event::from_json(GOOD.as_bytes()).unwrap();
        assert_eq!(e.kind, EventKind::Click);
        assert_eq!(e.arm(), ArmKey::new("ajio", "hero", "pune", "b03"));
        assert_eq!(time::format_utc(e.ts), "2026-11-28T15:35:00Z");
        let again = Event::from_json(e.to_json().as_bytes()).unwrap();
        assert_eq!(again, e);
    }

    #[test]
    fn names_the_broken_field() {
        assert_eq!(err_field(&GOOD.replace("\"pune\"", "\"\"")), "city");
        assert_eq!(err_field(&GOOD.replace("\"click\"", "\"view\"")), "kind");
        assert_eq!(err_field(&GOOD.replace("\"ajio\"", "\"AJIO\"")), "tenant");
        assert_eq!(err_field(&GOOD.replace("\"hero\"", "7")), "slot");
        assert_eq!(
            err_field(&GOOD.replace("2026-11-28T21:05:00+05:30", "28/11/2026")),
            "ts"
        );
        assert_eq!(
            err_field(&GOOD.replace("\"referrer\"", "\"referer\"")),
            "referer"
        );
        assert_eq!(err_field(&GOOD.replace(r#""banner":"b03","#, "")), "banner");
    }

    #[test]
    fn rejects_what_is_not_an_object() {
        assert!(matches!(
            Event::from_json(b"[1,2]"),
            Err(EventError::NotAnObject)
        ));
        assert!(matches!(
            Event::from_json(b"{\"kind\":"),
            Err(EventError::Json(_))
        ));
        let huge = format!("{{\"customer_id\":\"{}\"}}", "x".repeat(EVENT_JSON_MAX));
        assert!(matches!(
            Event::from_json(huge.as_bytes()),
            Err(EventError::TooLarge(_))
        ));
    }

    #[test]
    fn null_and_empty_optionals_are_absent() {
        let j = GOOD.replace("\"c-42\"", "null").replace("\"ads\"", "\"\"");
        let e = Event::from_json(j.as_bytes()).unwrap();
        assert_eq!(e.customer_id, None);
        assert_eq!(e.referrer, None);
    }
}
