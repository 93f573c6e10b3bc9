//! A prototype row into our contract: the rule that undoes the prototype's time shift, the
//! deterministic event ID, and the reasons a row is refused.
//!
//! Times: the prototype stored every time as the server's wall clock (UTC) plus 19,800 s, its
//! "IST fix". `operationdate` is a version-1 timeuuid made from that shifted time, so its
//! timestamp (100 ns resolution) less [`PROTOTYPE_SHIFT_SECS`] is the event's true UTC time.
//! `createddate` holds the same shifted instant as a float32, which at today's epochs resolves
//! only about 2 minutes (2^7 s), so it is not read. `validfrom` and `validto` are shifted epoch
//! seconds and come back the same way.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::model::{
    normalize_city, normalize_name, Banner, Event, EventFields, EventKind, FieldError, SlotConfig,
};

/// What the prototype added to every time it stored.
pub const PROTOTYPE_SHIFT_SECS: i64 = 19_800;
/// 100 ns intervals from the start of the Gregorian calendar (1582-10-15) to the Unix epoch.
const GREGORIAN_TO_UNIX_100NS: i64 = 0x01B2_1DD2_1381_4000;

/// One row of `bannerclickstream`, as stored (names not yet normalized).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClickRow {
    pub platform: String,
    pub slotname: String,
    pub operationdate: Uuid,
    pub location: String,
    pub bannerid: Option<String>,
    pub clicked: Option<bool>,
    pub customerid: Option<String>,
    pub adreferrer: Option<String>,
}

/// One row of `slotconfiguration`, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRow {
    pub platform: String,
    pub slotname: String,
    pub validto: i64,
    pub imagekey: String,
    pub imagename: Option<String>,
    pub validfrom: Option<i64>,
}

/// Why a row is not imported. `code` is stable (counted in the summary, written to the reject
/// file); `detail` says what was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub code: String,
    pub detail: String,
}

impl Reject {
    fn new(code: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            detail: detail.into(),
        }
    }

    /// A contract rule broken by a field: code `invalid_FIELD`.
    fn field(e: FieldError) -> Self {
        Self::new(format!("invalid_{}", e.field), e.to_string())
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

/// The true UTC time of a shifted version-1 timeuuid.
pub fn unshift_timeuuid(u: &Uuid) -> Result<DateTime<Utc>, Reject> {
    if u.get_version_num() != 1 {
        return Err(Reject::new(
            "invalid_operationdate",
            format!("{u} is not a version-1 timeuuid"),
        ));
    }
    let b = u.as_bytes();
    let time_low = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as i64;
    let time_mid = u16::from_be_bytes([b[4], b[5]]) as i64;
    let time_hi = (u16::from_be_bytes([b[6], b[7]]) & 0x0fff) as i64;
    let ticks = (time_hi << 48) | (time_mid << 32) | time_low;
    let unix_100ns = ticks - GREGORIAN_TO_UNIX_100NS;
    DateTime::from_timestamp_micros(unix_100ns.div_euclid(10) - PROTOTYPE_SHIFT_SECS * 1_000_000)
        .ok_or_else(|| Reject::new("invalid_operationdate", format!("{u} is out of range")))
}

/// The true UTC time of shifted epoch seconds.
pub fn unshift_secs(field: &str, secs: i64) -> Result<DateTime<Utc>, Reject> {
    secs.checked_sub(PROTOTYPE_SHIFT_SECS)
        .and_then(|s| DateTime::from_timestamp(s, 0))
        .ok_or_else(|| {
            Reject::new(
                format!("invalid_{field}"),
                format!("{secs} is out of range"),
            )
        })
}

/// The event ID of a row: a UUID (version 8, RFC 9562's custom layout) made of the SHA-256 of the
/// row's primary key as stored, so that importing the same row again gives the same ID and rows
/// that differ only in the case of a name (`Pune`, `pune`) keep different IDs.
pub fn event_id(row: &ClickRow) -> String {
    let mut hash = Sha256::new();
    let operationdate = row.operationdate.to_string();
    for part in [
        row.platform.as_str(),
        row.slotname.as_str(),
        operationdate.as_str(),
        row.location.as_str(),
    ] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// The prototype's "no customer": `-1` (written by its GET route) or empty.
fn customer(raw: Option<&str>) -> Option<&str> {
    raw.map(str::trim).filter(|c| !c.is_empty() && *c != "-1")
}

/// A `bannerclickstream` row as an event of our contract: `clicked = false` is an impression (the
/// GET route's row for the banner it showed), `clicked = true` a click.
pub fn convert_click(row: &ClickRow, ts: DateTime<Utc>) -> Result<Event, Reject> {
    let banner = row.bannerid.as_deref().unwrap_or("");
    if banner.trim().is_empty() {
        return Err(Reject::new("empty_banner", "bannerid is empty"));
    }
    let kind = match row.clicked {
        Some(false) => EventKind::Impression,
        Some(true) => EventKind::Click,
        None => return Err(Reject::new("missing_clicked", "clicked is null")),
    };
    let tenant = normalize_name("tenant", &row.platform).map_err(Reject::field)?;
    let slot = normalize_name("slot", &row.slotname).map_err(Reject::field)?;
    let city = normalize_city("city", &row.location).map_err(Reject::field)?;
    let banner = normalize_name("banner", banner).map_err(Reject::field)?;
    let event_id = event_id(row);
    EventFields {
        event_id: Some(&event_id),
        kind: Some(kind.as_str()),
        tenant: Some(&tenant),
        slot: Some(&slot),
        city: Some(&city),
        banner: Some(&banner),
        ts: Some(ts),
        customer_id: customer(row.customerid.as_deref()),
        referrer: row.adreferrer.as_deref().map(str::trim),
        request_id: None,
        decision: Default::default(),
    }
    .validate()
    .map_err(Reject::field)
}

/// A `slotconfiguration` row as one banner of a slot (a slot of one banner, validated by the
/// contract's slot rules).
pub fn convert_slot_row(row: &SlotRow) -> Result<SlotConfig, Reject> {
    if row.imagekey.trim().is_empty() {
        return Err(Reject::new("empty_banner", "imagekey is empty"));
    }
    let validfrom = row
        .validfrom
        .ok_or_else(|| Reject::new("missing_validfrom", "validfrom is null"))?;
    let config = SlotConfig {
        tenant: normalize_name("tenant", &row.platform).map_err(Reject::field)?,
        slot: normalize_name("slot", &row.slotname).map_err(Reject::field)?,
        banners: vec![Banner {
            id: normalize_name("imageid", &row.imagekey).map_err(Reject::field)?,
            image: row.imagename.as_deref().unwrap_or("").trim().to_string(),
            valid_from: unshift_secs("validfrom", validfrom)?,
            valid_to: unshift_secs("validto", row.validto)?,
        }],
        rules: Default::default(),
    };
    config.validate().map_err(Reject::field)?;
    Ok(config)
}

/// Slot rows grouped into slots, sorted by tenant, slot and banner. The prototype may list a
/// banner more than once in a slot (one row per validity window, or `B01` beside `b01`); our
/// slots hold one window per banner, so the one that ends last (then starts last) is kept and the
/// others are refused as `superseded_window`.
#[allow(clippy::type_complexity)]
pub fn merge_slots(rows: Vec<SlotRow>) -> (Vec<SlotConfig>, Vec<(SlotRow, Reject)>) {
    let mut rejects = Vec::new();
    let mut slots: BTreeMap<(String, String), BTreeMap<String, (Banner, SlotRow)>> =
        BTreeMap::new();
    for row in rows {
        let config = match convert_slot_row(&row) {
            Ok(c) => c,
            Err(reject) => {
                rejects.push((row, reject));
                continue;
            }
        };
        let SlotConfig {
            tenant,
            slot,
            mut banners,
            ..
        } = config;
        let banner = banners.remove(0);
        let banners = slots.entry((tenant, slot)).or_default();
        let rank = |b: &Banner, r: &SlotRow| {
            (
                b.valid_to,
                b.valid_from,
                r.imagekey.clone(),
                r.imagename.clone(),
            )
        };
        let (kept, superseded) = match banners.remove(&banner.id) {
            None => ((banner, row), None),
            Some(old) if rank(&old.0, &old.1) > rank(&banner, &row) => (old, Some(row)),
            Some(old) => ((banner, row), Some(old.1)),
        };
        if let Some(row) = superseded {
            let detail = format!(
                "banner {} is listed again with a window ending later, which is kept",
                kept.0.id
            );
            rejects.push((row, Reject::new("superseded_window", detail)));
        }
        banners.insert(kept.0.id.clone(), kept);
    }
    let configs = slots
        .into_iter()
        .map(|((tenant, slot), banners)| SlotConfig {
            tenant,
            slot,
            banners: banners.into_values().map(|(b, _)| b).collect(),
            rules: Default::default(),
        })
        .collect();
    (configs, rejects)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version-1 UUID for a Unix time in µs, built here from RFC 9562's layout.
    fn v1(unix_micros: i64) -> Uuid {
        let ticks = (unix_micros * 10 + GREGORIAN_TO_UNIX_100NS) as u64;
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&(ticks as u32).to_be_bytes());
        b[4..6].copy_from_slice(&((ticks >> 32) as u16).to_be_bytes());
        b[6..8].copy_from_slice(&((((ticks >> 48) as u16) & 0x0fff) | 0x1000).to_be_bytes());
        b[8] = 0x80;
        b[10..16].copy_from_slice(&[1, 2, 3, 4, 5, 6]);
        Uuid::from_bytes(b)
    }

    fn utc(s: &str) -> DateTime<Utc> {
        crate::time::parse_rfc3339(s).unwrap()
    }

    fn row() -> ClickRow {
        ClickRow {
            platform: "ajio".into(),
            slotname: "hero".into(),
            operationdate: v1(utc("2026-11-28T21:00:00.123456Z").timestamp_micros()),
            location: "Pune".into(),
            bannerid: Some("b01".into()),
            clicked: Some(false),
            customerid: Some("-1".into()),
            adreferrer: Some(String::new()),
        }
    }

    #[test]
    fn the_shift_is_undone_to_the_microsecond() {
        // The prototype stored 2026-11-28T21:00:00.123456 for an event at 15:30:00.123456 UTC.
        assert_eq!(
            unshift_timeuuid(&row().operationdate).unwrap(),
            utc("2026-11-28T15:30:00.123456Z")
        );
        assert_eq!(
            unshift_secs("validto", utc("2026-12-01T05:30:00Z").timestamp()).unwrap(),
            utc("2026-12-01T00:00:00Z")
        );
        let random = Uuid::from_u128(0x1234_5678_9abc_4def_8123_4567_89ab_cdef);
        assert_eq!(
            unshift_timeuuid(&random).unwrap_err().code,
            "invalid_operationdate"
        );
        assert_eq!(
            unshift_secs("validto", i64::MIN).unwrap_err().code,
            "invalid_validto"
        );
    }

    #[test]
    fn rows_become_events_with_normalized_names() {
        let r = row();
        let ts = unshift_timeuuid(&r.operationdate).unwrap();
        let e = convert_click(&r, ts).unwrap();
        assert_eq!(
            (e.kind, e.city.as_str(), e.customer_id, e.referrer, e.ts),
            (EventKind::Impression, "pune", None, None, ts)
        );
        let click = ClickRow {
            clicked: Some(true),
            customerid: Some("c-42".into()),
            adreferrer: Some("ads".into()),
            platform: "AJIO".into(),
            bannerid: Some(" B01 ".into()),
            ..row()
        };
        let e = convert_click(&click, ts).unwrap();
        assert_eq!(
            (
                e.kind,
                e.tenant.as_str(),
                e.banner.as_str(),
                e.customer_id.as_deref(),
                e.referrer.as_deref()
            ),
            (EventKind::Click, "ajio", "b01", Some("c-42"), Some("ads"))
        );
        let empty = ClickRow {
            customerid: Some(String::new()),
            ..row()
        };
        assert_eq!(convert_click(&empty, ts).unwrap().customer_id, None);
    }

    #[test]
    fn event_ids_are_uuids_of_the_stored_key() {
        let a = event_id(&row());
        assert_eq!(a, event_id(&row()));
        assert_eq!(Uuid::parse_str(&a).unwrap().get_version_num(), 8);
        // Fields outside the key do not change the ID; each part of the key does.
        let same_key = ClickRow {
            bannerid: Some("b02".into()),
            clicked: Some(true),
            ..row()
        };
        assert_eq!(event_id(&same_key), a);
        let lower = ClickRow {
            location: "pune".into(),
            ..row()
        };
        let later = ClickRow {
            operationdate: v1(utc("2026-11-28T21:00:00.123457Z").timestamp_micros()),
            ..row()
        };
        // Length prefixes keep ("ab", "c") and ("a", "bc") apart.
        let shifted = ClickRow {
            platform: "ajioh".into(),
            slotname: "ero".into(),
            ..row()
        };
        for other in [lower, later, shifted] {
            assert_ne!(event_id(&other), a, "{other:?}");
        }
    }

    #[test]
    fn refused_rows_name_their_reason() {
        let ts = utc("2026-11-28T15:30:00Z");
        let code = |r: ClickRow| convert_click(&r, ts).unwrap_err().code;
        assert_eq!(
            code(ClickRow {
                bannerid: Some(" ".into()),
                ..row()
            }),
            "empty_banner"
        );
        assert_eq!(
            code(ClickRow {
                bannerid: None,
                ..row()
            }),
            "empty_banner"
        );
        assert_eq!(
            code(ClickRow {
                clicked: None,
                ..row()
            }),
            "missing_clicked"
        );
        assert_eq!(
            code(ClickRow {
                location: "पुणे".into(),
                ..row()
            }),
            "invalid_city"
        );
        assert_eq!(
            code(ClickRow {
                slotname: "hero.1".into(),
                ..row()
            }),
            "invalid_slot"
        );
        assert_eq!(
            code(ClickRow {
                customerid: Some("c 42".into()),
                ..row()
            }),
            "invalid_customer_id"
        );
        assert_eq!(
            code(ClickRow {
                adreferrer: Some("x".repeat(65)),
                ..row()
            }),
            "invalid_referrer"
        );
    }

    #[test]
    fn slot_rows_unshift_and_validate() {
        let shifted = |s: &str| utc(s).timestamp() + PROTOTYPE_SHIFT_SECS;
        let r = SlotRow {
            platform: "Ajio".into(),
            slotname: "hero".into(),
            validto: shifted("2027-01-01T00:00:00Z"),
            imagekey: "B01".into(),
            imagename: Some("b01.png".into()),
            validfrom: Some(shifted("2026-11-01T00:00:00Z")),
        };
        let c = convert_slot_row(&r).unwrap();
        assert_eq!(
            (c.tenant.as_str(), c.banners[0].id.as_str()),
            ("ajio", "b01")
        );
        assert_eq!(c.banners[0].valid_from, utc("2026-11-01T00:00:00Z"));
        assert_eq!(c.banners[0].valid_to, utc("2027-01-01T00:00:00Z"));
        let code = |r: SlotRow| convert_slot_row(&r).unwrap_err().code;
        assert_eq!(
            code(SlotRow {
                imagekey: "".into(),
                ..r.clone()
            }),
            "empty_banner"
        );
        assert_eq!(
            code(SlotRow {
                imagename: None,
                ..r.clone()
            }),
            "invalid_imagename"
        );
        assert_eq!(
            code(SlotRow {
                validfrom: Some(r.validto),
                ..r.clone()
            }),
            "invalid_validto"
        );
        assert_eq!(
            code(SlotRow {
                validfrom: None,
                ..r.clone()
            }),
            "missing_validfrom"
        );

        let earlier = SlotRow {
            validto: shifted("2026-12-01T00:00:00Z"),
            imagekey: "b01".into(),
            ..r.clone()
        };
        let other = SlotRow {
            imagekey: "b00".into(),
            platform: "ajio".into(),
            ..r.clone()
        };
        let (slots, rejects) = merge_slots(vec![earlier.clone(), r.clone(), other]);
        assert_eq!(slots.len(), 1);
        let ids: Vec<&str> = slots[0].banners.iter().map(|b| b.id.as_str()).collect();
        assert_eq!(ids, ["b00", "b01"]);
        assert_eq!(slots[0].banners[1].valid_to, utc("2027-01-01T00:00:00Z"));
        assert_eq!(rejects.len(), 1);
        assert_eq!(
            (&rejects[0].0, rejects[0].1.code.as_str()),
            (&earlier, "superseded_window")
        );
    }
}
