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

/// The field names of the contract, in their documented order: the required seven, the
/// optional strings, then the optional [`DecisionLog`] fields.
pub const FIELDS: [&str; 16] = [
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
    "policy",
    "policy_version",
    "holdout",
    "propensity",
    "propensity_error",
    "rank",
];
/// The last rank a decision shows (a carousel of at most this many banners).
pub const RANK_MAX: u8 = 10;

/// The policy that made a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Thompson sampling over the posteriors.
    Thompson,
    /// Uniformly at random among the valid banners (the holdout).
    Uniform,
}

impl Policy {
    pub fn as_str(&self) -> &'static str {
        match self {
            Policy::Thompson => "thompson",
            Policy::Uniform => "uniform",
        }
    }

    pub fn parse(field: &str, s: &str) -> Result<Self, FieldError> {
        match s {
            "thompson" => Ok(Policy::Thompson),
            "uniform" => Ok(Policy::Uniform),
            other => Err(FieldError::new(
                field,
                format!(
                    "must be \"thompson\" or \"uniform\" (got {})",
                    super::validate::shown(other)
                ),
            )),
        }
    }
}

/// How the decision behind an event was made, for the uplift report and off-policy evaluation:
/// the policy and its version, whether the decision was a holdout one, the probability that the
/// logging policy shows this banner at this rank (with the bound of its error) and the rank.
/// Every field is optional, so events written before (or by other tools) stay valid.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct DecisionLog {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holdout: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub propensity: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub propensity_error: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rank: Option<u8>,
}

/// The checks keep NaN out, so equality is reflexive.
impl Eq for DecisionLog {}

/// [`DecisionLog`] fields before validation, as codecs read them.
#[derive(Debug, Default, Clone, Copy)]
pub struct DecisionLogFields<'a> {
    pub policy: Option<&'a str>,
    pub policy_version: Option<i64>,
    pub holdout: Option<bool>,
    pub propensity: Option<f64>,
    pub propensity_error: Option<f64>,
    pub rank: Option<i64>,
}

impl DecisionLogFields<'_> {
    /// The rules: a known policy; a version that fits 32 bits; a propensity in (0, 1]; an error
    /// bound in [0, 1], given only with a propensity; a rank from 1 to [`RANK_MAX`]; a holdout
    /// decision made by the uniform policy.
    pub fn check(&self) -> Result<DecisionLog, FieldError> {
        let policy = self
            .policy
            .filter(|p| !p.is_empty())
            .map(|p| Policy::parse("policy", p))
            .transpose()?;
        let policy_version = self
            .policy_version
            .map(|v| {
                u32::try_from(v).map_err(|_| {
                    FieldError::new(
                        "policy_version",
                        format!("must be 0 to {} (got {v})", u32::MAX),
                    )
                })
            })
            .transpose()?;
        let probability = |field: &str, v: Option<f64>, zero_allowed: bool| {
            v.map(|p| {
                let low_ok = if zero_allowed { p >= 0.0 } else { p > 0.0 };
                if p.is_finite() && low_ok && p <= 1.0 {
                    Ok(p)
                } else {
                    let range = if zero_allowed { "[0, 1]" } else { "(0, 1]" };
                    Err(FieldError::new(
                        field,
                        format!("must be a probability in {range} (got {p})"),
                    ))
                }
            })
            .transpose()
        };
        let propensity = probability("propensity", self.propensity, false)?;
        let propensity_error = probability("propensity_error", self.propensity_error, true)?;
        if propensity_error.is_some() && propensity.is_none() {
            return Err(FieldError::new(
                "propensity_error",
                "is given without a propensity",
            ));
        }
        let rank = self
            .rank
            .map(|r| {
                u8::try_from(r)
                    .ok()
                    .filter(|r| (1..=RANK_MAX).contains(r))
                    .ok_or_else(|| {
                        FieldError::new("rank", format!("must be 1 to {RANK_MAX} (got {r})"))
                    })
            })
            .transpose()?;
        if self.holdout == Some(true) && policy == Some(Policy::Thompson) {
            return Err(FieldError::new(
                "holdout",
                "a holdout decision is made by the uniform policy, not thompson",
            ));
        }
        Ok(DecisionLog {
            policy,
            policy_version,
            holdout: self.holdout,
            propensity,
            propensity_error,
            rank,
        })
    }
}

impl DecisionLog {
    /// This log with the decision's group: held out (the uniform policy) or Thompson sampling.
    pub fn with_group(self, holdout: bool) -> Self {
        let policy = if holdout {
            Policy::Uniform
        } else {
            Policy::Thompson
        };
        Self {
            policy: Some(policy),
            holdout: Some(holdout),
            ..self
        }
    }

    pub fn fields(&self) -> DecisionLogFields<'static> {
        DecisionLogFields {
            policy: self.policy.map(|p| p.as_str()),
            policy_version: self.policy_version.map(i64::from),
            holdout: self.holdout,
            propensity: self.propensity,
            propensity_error: self.propensity_error,
            rank: self.rank.map(i64::from),
        }
    }
}

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
    #[serde(flatten)]
    pub decision: DecisionLog,
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
    #[serde(borrow)]
    policy: Option<Cow<'a, str>>,
    policy_version: Option<i64>,
    holdout: Option<bool>,
    propensity: Option<f64>,
    propensity_error: Option<f64>,
    rank: Option<i64>,
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
    pub decision: DecisionLogFields<'a>,
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
    pub decision: DecisionLog,
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
            decision: e.decision,
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
            decision: self.decision,
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
            decision: self.decision.check()?,
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
            decision: DecisionLogFields {
                policy: raw.policy.as_deref(),
                policy_version: raw.policy_version,
                holdout: raw.holdout,
                propensity: raw.propensity,
                propensity_error: raw.propensity_error,
                rank: raw.rank,
            },
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
            decision: self.decision.fields(),
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
        let rule = match key.as_str() {
            "holdout" => (!(v.is_boolean() || v.is_null())).then_some("must be true or false"),
            "propensity" | "propensity_error" => {
                (!(v.is_number() || v.is_null())).then_some("must be a number")
            }
            "policy_version" | "rank" => {
                (!(v.is_i64() || v.is_u64() || v.is_null())).then_some("must be a whole number")
            }
            _ => (!(v.is_string() || v.is_null())).then_some("must be a string"),
        };
        if let Some(rule) = rule {
            return FieldError::new(key.as_str(), rule).into();
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
    fn the_decision_log_round_trips_and_is_checked() {
        let logged = GOOD.replace(
            r#""kind":"click""#,
            r#""kind":"impression","policy":"uniform","policy_version":2,"holdout":true,"propensity":0.25,"propensity_error":0,"rank":2"#,
        );
        let e = Event::from_json(logged.as_bytes()).unwrap();
        assert_eq!(
            e.decision,
            DecisionLog {
                policy: Some(Policy::Uniform),
                policy_version: Some(2),
                holdout: Some(true),
                propensity: Some(0.25),
                propensity_error: Some(0.0),
                rank: Some(2),
            }
        );
        assert_eq!(Event::from_json(e.to_json().as_bytes()).unwrap(), e);
        assert_eq!(
            Event::from_json(GOOD.as_bytes()).unwrap().decision,
            DecisionLog::default()
        );
        for (from, to, field) in [
            (r#""propensity":0.25"#, r#""propensity":0"#, "propensity"),
            (r#""propensity":0.25"#, r#""propensity":1.5"#, "propensity"),
            (
                r#""propensity":0.25"#,
                r#""propensity":"high""#,
                "propensity",
            ),
            (
                r#""propensity_error":0"#,
                r#""propensity_error":-0.1"#,
                "propensity_error",
            ),
            (r#""propensity":0.25,"#, "", "propensity_error"),
            (r#""rank":2"#, r#""rank":11"#, "rank"),
            (r#""rank":2"#, r#""rank":0"#, "rank"),
            (r#""rank":2"#, r#""rank":1.5"#, "rank"),
            (r#""policy":"uniform""#, r#""policy":"greedy""#, "policy"),
            (r#""policy":"uniform""#, r#""policy":"thompson""#, "holdout"),
            (r#""holdout":true"#, r#""holdout":"yes""#, "holdout"),
            (
                r#""policy_version":2"#,
                r#""policy_version":-1"#,
                "policy_version",
            ),
        ] {
            assert!(logged.contains(from), "{from}");
            assert_eq!(err_field(&logged.replace(from, to)), field, "{to}");
        }
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
