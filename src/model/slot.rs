//! Slot configurations: which banners a (tenant, slot) may show, and when. Import and export of
//! the prototype's CSV format `platform,slotname,imageid,imagename,validfrom,validto` with IST
//! times `%d-%b-%y %H:%M:%S`, with two optional columns of our own: `recency_minutes` and
//! `holdout` (a slot's [`SlotRules`]).

use std::collections::BTreeMap;
use std::io::{Read, Write};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::validate::{shown, validate_name, FieldError};
use crate::time;

pub const SLOT_CSV_HEADER: [&str; 6] = [
    "platform",
    "slotname",
    "imageid",
    "imagename",
    "validfrom",
    "validto",
];
/// The optional columns of a slot's rules, after the prototype's six.
pub const SLOT_CSV_RULE_COLUMNS: [&str; 2] = ["recency_minutes", "holdout"];
const IMAGE_MAX: usize = 512;
/// Recency windows, in minutes: at least a bucket, at most 30 days.
pub const RECENCY_MINUTES: std::ops::RangeInclusive<u32> = 60..=43_200;
/// The largest holdout share, in basis points (50%).
pub const HOLDOUT_MAX_BP: u16 = 5_000;

/// How a slot decides when a request says nothing more: its recency rule and its holdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SlotRules {
    /// Decide from the counts of the last this many minutes when the request names no window;
    /// `Some(Recency::AllTime)` from all-time counts; `None` follows the service's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recency: Option<Recency>,
    /// The share of decisions made uniformly at random among the valid banners and flagged
    /// as holdout, in basis points (0 to [`HOLDOUT_MAX_BP`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub holdout_bp: u16,
}

fn is_zero(bp: &u16) -> bool {
    *bp == 0
}

/// Which counts a decision uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Recency {
    AllTime,
    /// The last this many minutes (whole buckets).
    Window(u32),
}

impl Recency {
    /// `0` is all time; anything else a window in [`RECENCY_MINUTES`].
    pub fn from_minutes(field: &str, minutes: u32) -> Result<Self, FieldError> {
        if minutes == 0 {
            return Ok(Recency::AllTime);
        }
        if !RECENCY_MINUTES.contains(&minutes) {
            return Err(FieldError::new(
                field,
                format!(
                    "must be 0 (all time) or a window of {} to {} minutes (got {minutes})",
                    RECENCY_MINUTES.start(),
                    RECENCY_MINUTES.end()
                ),
            ));
        }
        Ok(Recency::Window(minutes))
    }

    /// The window in minutes, `None` for all time.
    pub fn window(self) -> Option<u32> {
        match self {
            Recency::AllTime => None,
            Recency::Window(m) => Some(m),
        }
    }

    pub fn minutes(self) -> u32 {
        self.window().unwrap_or(0)
    }
}

impl SlotRules {
    /// A holdout share (0 to 0.5) in basis points.
    pub fn holdout_from_share(field: &str, share: f64) -> Result<u16, FieldError> {
        let max = f64::from(HOLDOUT_MAX_BP) / 10_000.0;
        if !(0.0..=max).contains(&share) {
            return Err(FieldError::new(
                field,
                format!("must be a share from 0 to {max} (got {share})"),
            ));
        }
        Ok((share * 10_000.0).round() as u16)
    }

    pub fn holdout_share(&self) -> f64 {
        f64::from(self.holdout_bp) / 10_000.0
    }

    /// Reads the CSV cells: `recency_minutes` (empty: the service's default) and `holdout`
    /// (empty: none; a share such as `0.1` or a percentage such as `10%`).
    fn from_cells(recency: &str, holdout: &str) -> Result<Self, FieldError> {
        let recency = match recency {
            "" => None,
            text => {
                let minutes = text.parse::<u32>().map_err(|_| {
                    FieldError::new(
                        "recency_minutes",
                        format!("must be a whole number of minutes (got {})", shown(text)),
                    )
                })?;
                Some(Recency::from_minutes("recency_minutes", minutes)?)
            }
        };
        let holdout_bp = match holdout {
            "" => 0,
            text => {
                let (number, scale) = match text.strip_suffix('%') {
                    Some(percent) => (percent.trim(), 100.0),
                    None => (text, 1.0),
                };
                let share = number.parse::<f64>().ok().filter(|s| s.is_finite());
                let share = share.ok_or_else(|| {
                    FieldError::new(
                        "holdout",
                        format!("must be a share such as 0.1 or 10% (got {})", shown(text)),
                    )
                })?;
                Self::holdout_from_share("holdout", share / scale)?
            }
        };
        Ok(Self {
            recency,
            holdout_bp,
        })
    }

    fn cells(&self) -> [String; 2] {
        let recency = self
            .recency
            .map_or(String::new(), |r| r.minutes().to_string());
        let holdout = match self.holdout_bp {
            0 => String::new(),
            _ => self.holdout_share().to_string(),
        };
        [recency, holdout]
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Banner {
    pub id: String,
    /// Image file name or URL shown for the banner.
    pub image: String,
    pub valid_from: DateTime<Utc>,
    pub valid_to: DateTime<Utc>,
}

impl Banner {
    /// Valid on `[valid_from, valid_to)`.
    pub fn is_valid_at(&self, t: DateTime<Utc>) -> bool {
        self.valid_from <= t && t < self.valid_to
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotConfig {
    pub tenant: String,
    pub slot: String,
    pub banners: Vec<Banner>,
    #[serde(default)]
    pub rules: SlotRules,
}

/// A slot CSV that cannot be read, with the line and column at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotConfigError {
    #[error("slot CSV: {0}")]
    Csv(String),
    #[error("slot CSV: header must name the columns {expected} (missing `{missing}`)")]
    Header { expected: String, missing: String },
    #[error("slot CSV line {line}: {error}")]
    Row { line: u64, error: FieldError },
    #[error("slot CSV: no banners")]
    Empty,
}

impl SlotConfig {
    /// Each banner's position in `banners`, by ID.
    pub fn banner_index(&self) -> std::collections::HashMap<&str, usize> {
        self.banners
            .iter()
            .enumerate()
            .map(|(i, b)| (b.id.as_str(), i))
            .collect()
    }

    /// A slot whose banners share one validity window, each shown as `<id>.svg`.
    pub fn with_banners<I: Into<String>>(
        tenant: &str,
        slot: &str,
        ids: impl IntoIterator<Item = I>,
        valid_from: DateTime<Utc>,
        valid_to: DateTime<Utc>,
    ) -> Self {
        Self {
            tenant: tenant.to_string(),
            slot: slot.to_string(),
            banners: ids
                .into_iter()
                .map(|id| {
                    let id = id.into();
                    Banner {
                        image: format!("{id}.svg"),
                        id,
                        valid_from,
                        valid_to,
                    }
                })
                .collect(),
            rules: SlotRules::default(),
        }
    }

    /// Checks names, image, window order and banner uniqueness.
    pub fn validate(&self) -> Result<(), FieldError> {
        validate_name("tenant", &self.tenant)?;
        validate_name("slot", &self.slot)?;
        if self.banners.is_empty() {
            return Err(FieldError::new("banners", "must list at least one banner"));
        }
        let mut seen = std::collections::HashSet::new();
        for b in &self.banners {
            validate_banner(b)?;
            if !seen.insert(b.id.as_str()) {
                return Err(FieldError::new(
                    "imageid",
                    format!(
                        "banner {} is listed twice in slot {}",
                        shown(&b.id),
                        self.slot
                    ),
                ));
            }
        }
        Ok(())
    }

    pub fn valid_banners_at(&self, t: DateTime<Utc>) -> impl Iterator<Item = &Banner> {
        self.banners.iter().filter(move |b| b.is_valid_at(t))
    }

    /// Reads a CSV with any number of (platform, slot) groups, in order of first appearance.
    pub fn read_csv<R: Read>(reader: R) -> Result<Vec<SlotConfig>, SlotConfigError> {
        let mut csv = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .flexible(false)
            .from_reader(reader);
        let headers = csv
            .headers()
            .map_err(|e| SlotConfigError::Csv(e.to_string()))?
            .clone();
        let column = |name: &str| {
            headers
                .iter()
                .position(|h| h.eq_ignore_ascii_case(name))
                .ok_or_else(|| SlotConfigError::Header {
                    expected: SLOT_CSV_HEADER.join(","),
                    missing: name.to_string(),
                })
        };
        let idx: Vec<usize> = SLOT_CSV_HEADER
            .iter()
            .map(|n| column(n))
            .collect::<Result<_, _>>()?;
        let optional: Vec<Option<usize>> = SLOT_CSV_RULE_COLUMNS
            .iter()
            .map(|n| headers.iter().position(|h| h.eq_ignore_ascii_case(n)))
            .collect();

        let mut order: Vec<(String, String)> = Vec::new();
        let mut slots: BTreeMap<(String, String), SlotConfig> = BTreeMap::new();
        for record in csv.records() {
            let record = record.map_err(|e| match e.position() {
                Some(p) => SlotConfigError::Row {
                    line: p.line(),
                    error: FieldError::new("row", e.to_string()),
                },
                None => SlotConfigError::Csv(e.to_string()),
            })?;
            let line = record.position().map_or(0, |p| p.line());
            let row_err = |error| SlotConfigError::Row { line, error };
            let get = |i: usize| record.get(idx[i]).unwrap_or("");
            let (tenant, slot) = (get(0), get(1));
            validate_name("platform", tenant).map_err(row_err)?;
            validate_name("slotname", slot).map_err(row_err)?;
            let banner = Banner {
                id: get(2).to_string(),
                image: get(3).to_string(),
                valid_from: time::parse_any(get(4))
                    .map_err(|e| row_err(FieldError::new("validfrom", e.to_string())))?,
                valid_to: time::parse_any(get(5))
                    .map_err(|e| row_err(FieldError::new("validto", e.to_string())))?,
            };
            validate_banner(&banner).map_err(row_err)?;
            let cell = |i: usize| optional[i].and_then(|c| record.get(c)).unwrap_or("");
            let rules = SlotRules::from_cells(cell(0), cell(1)).map_err(row_err)?;
            let key = (tenant.to_string(), slot.to_string());
            let config = slots.entry(key.clone()).or_insert_with(|| {
                order.push(key);
                SlotConfig {
                    tenant: tenant.to_string(),
                    slot: slot.to_string(),
                    banners: Vec::new(),
                    rules,
                }
            });
            if config.rules != rules {
                return Err(row_err(FieldError::new(
                    "recency_minutes",
                    format!(
                        "every row of {tenant}/{slot} must give the same recency_minutes and \
                         holdout (this row differs from the slot's first row)"
                    ),
                )));
            }
            if config.banners.iter().any(|b| b.id == banner.id) {
                return Err(row_err(FieldError::new(
                    "imageid",
                    format!(
                        "banner {} is listed twice for {}/{}",
                        shown(&banner.id),
                        tenant,
                        slot
                    ),
                )));
            }
            config.banners.push(banner);
        }
        if order.is_empty() {
            return Err(SlotConfigError::Empty);
        }
        Ok(order
            .into_iter()
            .map(|k| slots.remove(&k).expect("every key was inserted"))
            .collect())
    }

    /// Writes slots in the prototype's CSV format, times in IST; the rule columns only when
    /// some slot sets a rule, so that slots without one stay in the prototype's format.
    pub fn write_csv<W: Write>(configs: &[SlotConfig], writer: W) -> Result<(), SlotConfigError> {
        let mut csv = csv::Writer::from_writer(writer);
        let io = |e: csv::Error| SlotConfigError::Csv(e.to_string());
        let with_rules = configs.iter().any(|c| c.rules != SlotRules::default());
        let rule_columns = if with_rules {
            &SLOT_CSV_RULE_COLUMNS[..]
        } else {
            &[]
        };
        csv.write_record(SLOT_CSV_HEADER.iter().chain(rule_columns))
            .map_err(io)?;
        for c in configs {
            let rules = c.rules.cells();
            let rules = if with_rules { &rules[..] } else { &[] };
            for b in &c.banners {
                let cells = [
                    c.tenant.clone(),
                    c.slot.clone(),
                    b.id.clone(),
                    b.image.clone(),
                    time::format_seed_ist(b.valid_from),
                    time::format_seed_ist(b.valid_to),
                ];
                csv.write_record(cells.iter().chain(rules)).map_err(io)?;
            }
        }
        csv.flush()
            .map_err(|e| SlotConfigError::Csv(e.to_string()))?;
        Ok(())
    }
}

fn validate_banner(b: &Banner) -> Result<(), FieldError> {
    validate_name("imageid", &b.id)?;
    if b.image.is_empty() || b.image.len() > IMAGE_MAX {
        return Err(FieldError::new(
            "imagename",
            format!(
                "must be 1 to {IMAGE_MAX} bytes (got {} bytes)",
                b.image.len()
            ),
        ));
    }
    if b.image
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '"' || c == '<' || c == '>')
    {
        return Err(FieldError::new(
            "imagename",
            format!(
                "must be a file name or URL without spaces, quotes or angle brackets (got {})",
                shown(&b.image)
            ),
        ));
    }
    if b.valid_from >= b.valid_to {
        return Err(FieldError::new(
            "validto",
            format!(
                "must be after validfrom ({} is not after {})",
                time::format_seed_ist(b.valid_to),
                time::format_seed_ist(b.valid_from)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str = "platform,slotname,imageid,imagename,validfrom,validto\n\
        ajio,hero,b01,b01.svg,01-Nov-26 00:00:00,01-Jan-27 00:00:00\n\
        ajio,hero,b02,b02.svg,28-Nov-26 10:00:00,28-Nov-26 22:00:00\n";

    fn parse(s: &str) -> Result<Vec<SlotConfig>, SlotConfigError> {
        SlotConfig::read_csv(s.as_bytes())
    }

    #[test]
    fn round_trips_the_seed_format() {
        let slots = parse(CSV).unwrap();
        assert_eq!(slots.len(), 1);
        assert_eq!(slots[0].banners.len(), 2);
        let mut out = Vec::new();
        SlotConfig::write_csv(&slots, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), CSV);
    }

    #[test]
    fn rule_columns_are_optional_and_round_trip() {
        let with_rules = CSV
            .replace("validto\n", "validto,recency_minutes,holdout\n")
            .replace(":00:00\n", ":00:00,1440,10%\n");
        let slots = parse(&with_rules).unwrap();
        assert_eq!(slots[0].rules.recency, Some(Recency::Window(1440)));
        assert_eq!(slots[0].rules.holdout_bp, 1000);
        let mut out = Vec::new();
        SlotConfig::write_csv(&slots, &mut out).unwrap();
        assert_eq!(parse(std::str::from_utf8(&out).unwrap()).unwrap(), slots);
        assert!(String::from_utf8(out).unwrap().contains(",1440,0.1\n"));

        let all_time = with_rules.replace(",1440,10%", ",0,");
        let slots = parse(&all_time).unwrap();
        assert_eq!(slots[0].rules.recency, Some(Recency::AllTime));
        assert_eq!(slots[0].rules.holdout_bp, 0);
    }

    #[test]
    fn rule_cells_out_of_range_name_their_column() {
        let csv = |recency: &str, holdout: &str| {
            CSV.replace("validto\n", "validto,recency_minutes,holdout\n")
                .replace(":00:00\n", &format!(":00:00,{recency},{holdout}\n"))
        };
        for (recency, holdout, field) in [
            ("30", "", "recency_minutes"),
            ("50000", "", "recency_minutes"),
            ("-5", "", "recency_minutes"),
            ("", "0.6", "holdout"),
            ("", "51%", "holdout"),
            ("", "-0.1", "holdout"),
            ("", "NaN", "holdout"),
        ] {
            let err = parse(&csv(recency, holdout)).unwrap_err();
            let SlotConfigError::Row { line: 2, error } = &err else {
                panic!("{recency}/{holdout}: {err}");
            };
            assert_eq!(error.field, field, "{err}");
        }
        let differing = csv("60", "").replacen(":00:00,60,\n", ":00:00,120,\n", 1);
        assert!(parse(&differing)
            .unwrap_err()
            .to_string()
            .contains("same recency_minutes"));
    }

    #[test]
    fn validity_windows_are_ist_and_half_open() {
        let slots = parse(CSV).unwrap();
        let b02 = &slots[0].banners[1];
        assert!(b02.is_valid_at(time::parse_rfc3339("2026-11-28T10:00:00+05:30").unwrap()));
        assert!(!b02.is_valid_at(time::parse_rfc3339("2026-11-28T22:00:00+05:30").unwrap()));
        assert!(!b02.is_valid_at(time::parse_rfc3339("2026-11-28T09:59:59+05:30").unwrap()));
    }

    #[test]
    fn errors_name_line_and_column() {
        let bad_time = CSV.replace("28-Nov-26 22:00:00", "tomorrow");
        let err = parse(&bad_time).unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("validto"), "{err}");

        let backwards = CSV.replace("28-Nov-26 22:00:00", "27-Nov-26 22:00:00");
        let err = parse(&backwards).unwrap_err().to_string();
        assert!(err.contains("must be after validfrom"), "{err}");

        let dup = CSV.replace("b02,b02.svg", "b01,b02.svg");
        assert!(parse(&dup)
            .unwrap_err()
            .to_string()
            .contains("listed twice"));

        let missing = CSV.replace("imagename", "picture");
        assert!(matches!(
            parse(&missing),
            Err(SlotConfigError::Header { .. })
        ));

        let ragged = format!("{CSV}ajio,hero,b03\n");
        let err = parse(&ragged).unwrap_err().to_string();
        assert!(err.contains("line 4"), "{err}");

        assert!(matches!(
            parse("platform,slotname,imageid,imagename,validfrom,validto\n"),
            Err(SlotConfigError::Empty)
        ));
        let upper = CSV.replace("ajio,hero,b01", "Ajio,hero,b01");
        assert!(parse(&upper).unwrap_err().to_string().contains("platform"));
    }
}
