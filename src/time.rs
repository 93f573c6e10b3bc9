//! Time: store UTC, present IST (Asia/Kolkata). Parsing of RFC 3339 and of the prototype's IST
//! format, IST formatting, IST hour buckets and the IST `dt=` partition of a timestamp.

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, TimeZone, Utc};
use chrono_tz::Tz;

pub const IST: Tz = chrono_tz::Asia::Kolkata;

/// The prototype's IST format, e.g. `28-Nov-26 21:05:00`.
pub const SEED_FORMAT: &str = "%d-%b-%y %H:%M:%S";

/// IST is UTC+05:30 with no daylight saving, so buckets can be computed with a fixed offset.
const IST_OFFSET_SECS: i64 = 5 * 3600 + 30 * 60;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("must be RFC 3339 with an offset, e.g. 2026-11-28T21:05:00+05:30 (got {0:?})")]
    Rfc3339(String),
    #[error("must be IST in the form DD-Mon-YY HH:MM:SS, e.g. 28-Nov-26 21:05:00 (got {0:?})")]
    Seed(String),
    #[error("must be RFC 3339 with an offset or IST DD-Mon-YY HH:MM:SS (got {0:?})")]
    Any(String),
    #[error("must be an IST date YYYY-MM-DD (got {0:?})")]
    Date(String),
    #[error("is out of the supported range (years 1970 to 9999)")]
    Range,
}

/// Parses RFC 3339 with any offset; the result is UTC, truncated to microseconds (the Parquet
/// resolution) so that JSON and Parquet round-trip to the same instant.
pub fn parse_rfc3339(s: &str) -> Result<DateTime<Utc>, TimeError> {
    let t = DateTime::parse_from_rfc3339(s.trim())
        .map_err(|_| TimeError::Rfc3339(s.to_string()))?
        .with_timezone(&Utc);
    in_range(truncate_to_micros(t))
}

/// Parses the prototype's IST format `%d-%b-%y %H:%M:%S`; two-digit years are 20YY.
pub fn parse_seed_ist(s: &str) -> Result<DateTime<Utc>, TimeError> {
    let naive = NaiveDateTime::parse_from_str(s.trim(), SEED_FORMAT)
        .map_err(|_| TimeError::Seed(s.to_string()))?;
    Ok(ist_local(naive))
}

/// Either of the two accepted forms.
pub fn parse_any(s: &str) -> Result<DateTime<Utc>, TimeError> {
    parse_rfc3339(s)
        .or_else(|_| parse_seed_ist(s))
        .map_err(|_| TimeError::Any(s.to_string()))
}

/// An IST calendar date `YYYY-MM-DD`.
pub fn parse_ist_date(s: &str) -> Result<NaiveDate, TimeError> {
    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").map_err(|_| TimeError::Date(s.to_string()))
}

/// The UTC instant of an IST wall-clock time (IST has no gaps or folds).
pub fn ist_local(naive: NaiveDateTime) -> DateTime<Utc> {
    IST.from_local_datetime(&naive)
        .single()
        .expect("IST has no daylight saving, so every local time is unique")
        .with_timezone(&Utc)
}

/// The UTC instant of IST midnight starting `date`.
pub fn ist_midnight(date: NaiveDate) -> DateTime<Utc> {
    ist_local(date.and_hms_opt(0, 0, 0).expect("midnight exists"))
}

/// RFC 3339 in UTC with microseconds where needed (the storage form).
pub fn format_utc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// RFC 3339 in IST, e.g. `2026-11-28T21:05:00+05:30` (the API's presentation form).
pub fn format_ist_rfc3339(t: DateTime<Utc>) -> String {
    t.with_timezone(&IST)
        .to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

/// Human form for tables and logs, e.g. `2026-11-28 21:05:00 IST`.
pub fn format_ist(t: DateTime<Utc>) -> String {
    t.with_timezone(&IST)
        .format("%Y-%m-%d %H:%M:%S IST")
        .to_string()
}

/// The prototype's IST format.
pub fn format_seed_ist(t: DateTime<Utc>) -> String {
    t.with_timezone(&IST).format(SEED_FORMAT).to_string()
}

/// The IST calendar date of `t`: the Parquet `dt=` partition value.
pub fn ist_date(t: DateTime<Utc>) -> NaiveDate {
    t.with_timezone(&IST).date_naive()
}

/// `dt=YYYY-MM-DD` for the IST date of `t`.
pub fn dt_partition(t: DateTime<Utc>) -> String {
    format!("dt={}", ist_date(t).format("%Y-%m-%d"))
}

/// Fixed-width time buckets aligned to IST midnight (for widths that divide a day).
/// Bucket `b` covers `[start(b), start(b) + width)`. With the default width of 60 minutes the
/// index is the IST hour counted from 1970-01-01 00:00 IST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buckets {
    width_secs: i64,
}

impl Default for Buckets {
    fn default() -> Self {
        Self::hourly()
    }
}

impl Buckets {
    pub const fn hourly() -> Self {
        Self { width_secs: 3600 }
    }

    /// `minutes` must divide a day (1440) so that buckets never straddle IST midnight.
    pub fn of_minutes(minutes: u32) -> Result<Self, String> {
        if minutes == 0 || 1440 % minutes != 0 {
            return Err(format!(
                "bucket_minutes must divide 1440 (a day), got {minutes}"
            ));
        }
        Ok(Self {
            width_secs: i64::from(minutes) * 60,
        })
    }

    pub fn minutes(&self) -> u32 {
        (self.width_secs / 60) as u32
    }

    pub fn index(&self, t: DateTime<Utc>) -> i64 {
        (t.timestamp() + IST_OFFSET_SECS).div_euclid(self.width_secs)
    }

    pub fn index_of_micros(&self, micros: i64) -> i64 {
        (micros.div_euclid(1_000_000) + IST_OFFSET_SECS).div_euclid(self.width_secs)
    }

    pub fn start(&self, index: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(index * self.width_secs - IST_OFFSET_SECS, 0)
            .expect("bucket start in range")
    }

    /// The first bucket wholly inside a window of `window_minutes` ending at `now`: the window
    /// holds the whole buckets that start at or after `now - window`.
    pub fn first_in_window(&self, now: DateTime<Utc>, window_minutes: u32) -> i64 {
        let from = now.timestamp() - i64::from(window_minutes) * 60 + IST_OFFSET_SECS;
        from.div_euclid(self.width_secs) + i64::from(from.rem_euclid(self.width_secs) != 0)
    }
}

/// How long the hourly (per-bucket) counts are kept: bucket rows that end before the horizon are
/// not kept, as the all-time rows already hold them (docs/architecture.md, "Store layouts").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    hours: u32,
}

impl Retention {
    /// The largest window the service keeps warm (720 minutes) plus a day, at least two days.
    pub const DEFAULT_HOURS: u32 = 48;
    /// Ten years.
    pub const MAX_HOURS: u32 = 24 * 366 * 10;

    /// `hours` from 1 to [`Retention::MAX_HOURS`].
    pub fn of_hours(hours: u32) -> Result<Self, String> {
        if !(1..=Self::MAX_HOURS).contains(&hours) {
            return Err(format!(
                "retention_hours must be from 1 to {} (ten years), got {hours}",
                Self::MAX_HOURS
            ));
        }
        Ok(Self { hours })
    }

    pub fn hours(&self) -> u32 {
        self.hours
    }

    /// The first bucket kept when "now" falls in bucket `newest`: the retention in whole
    /// buckets (rounded up) before it, so that every window up to the retention, which starts
    /// at most that many buckets before now's, is whole.
    pub fn horizon(&self, buckets: Buckets, newest: i64) -> i64 {
        let width_secs = buckets.width_secs;
        let kept = (i64::from(self.hours) * 3600 + width_secs - 1) / width_secs;
        newest.saturating_sub(kept)
    }
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            hours: Self::DEFAULT_HOURS,
        }
    }
}

fn truncate_to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    let micros = t.timestamp_micros();
    DateTime::from_timestamp_micros(micros).unwrap_or(t)
}

fn in_range(t: DateTime<Utc>) -> Result<DateTime<Utc>, TimeError> {
    if (1970..=9999).contains(&chrono::Datelike::year(&t)) {
        Ok(t)
    } else {
        Err(TimeError::Range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        parse_rfc3339(s).unwrap()
    }

    #[test]
    fn retention_keeps_whole_buckets_covering_its_hours_and_refuses_zero_or_over_ten_years() {
        let hourly = Buckets::hourly();
        assert_eq!(Retention::of_hours(48).unwrap().horizon(hourly, 1000), 952);
        assert_eq!(Retention::of_hours(1).unwrap().horizon(hourly, 1000), 999);
        let ninety = Buckets::of_minutes(90).unwrap();
        // 2 hours need two 90-minute buckets.
        assert_eq!(Retention::of_hours(2).unwrap().horizon(ninety, 10), 8);
        let quarter = Buckets::of_minutes(15).unwrap();
        assert_eq!(Retention::of_hours(1).unwrap().horizon(quarter, 10), 6);
        // A window of the whole retention, ending exactly at a bucket's start, is kept whole.
        let now = hourly.start(1000);
        assert_eq!(hourly.first_in_window(now, 48 * 60), 952);
        assert_eq!(Retention::default().hours(), 48);
        assert_eq!(
            Retention::of_hours(0).unwrap_err(),
            "retention_hours must be from 1 to 87840 (ten years), got 0"
        );
        assert!(Retention::of_hours(Retention::MAX_HOURS).is_ok());
        assert!(Retention::of_hours(Retention::MAX_HOURS + 1).is_err());
    }

    #[test]
    fn rfc3339_with_any_offset_is_the_same_instant() {
        let a = utc("2026-11-28T21:05:00+05:30");
        let b = utc("2026-11-28T15:35:00Z");
        let c = utc("2026-11-28T10:35:00-05:00");
        assert_eq!(a, b);
        assert_eq!(b, c);
        assert!(
            parse_rfc3339("2026-11-28T21:05:00").is_err(),
            "offset required"
        );
        assert!(parse_rfc3339("yesterday").is_err());
    }

    #[test]
    fn seed_format_is_ist() {
        let t = parse_seed_ist("28-Nov-26 21:05:00").unwrap();
        assert_eq!(t, utc("2026-11-28T15:35:00Z"));
        assert_eq!(format_seed_ist(t), "28-Nov-26 21:05:00");
        assert!(parse_seed_ist("2026-11-28 21:05:00").is_err());
        assert_eq!(parse_any("28-Nov-26 21:05:00").unwrap(), t);
        assert_eq!(parse_any("2026-11-28T15:35:00Z").unwrap(), t);
    }

    #[test]
    fn ist_day_boundary_is_18_30_utc() {
        let before = utc("2026-11-28T18:29:59.999999Z");
        let at = utc("2026-11-28T18:30:00Z");
        assert_eq!(dt_partition(before), "dt=2026-11-28");
        assert_eq!(dt_partition(at), "dt=2026-11-29");
        assert_eq!(format_ist(at), "2026-11-29 00:00:00 IST");
        let hours = Buckets::hourly();
        assert_eq!(hours.index(at) - hours.index(before), 1);
        assert_eq!(hours.start(hours.index(at)), at);
        assert_eq!(ist_midnight(ist_date(at)), at);
    }

    #[test]
    fn utc_midnight_is_mid_ist_day_and_mid_ist_hour() {
        let before = utc("2026-11-28T23:59:59Z");
        let after = utc("2026-11-29T00:00:00Z");
        // 05:29:59 and 05:30:00 IST on the same IST date, both in the 05:00 IST hour.
        assert_eq!(dt_partition(before), "dt=2026-11-29");
        assert_eq!(dt_partition(after), "dt=2026-11-29");
        let hours = Buckets::hourly();
        assert_eq!(hours.index(before), hours.index(after));
        assert_eq!(
            format_ist(hours.start(hours.index(after))),
            "2026-11-29 05:00:00 IST"
        );
        assert_eq!(format_ist_rfc3339(after), "2026-11-29T05:30:00+05:30");
    }

    #[test]
    fn bucket_widths_must_divide_a_day() {
        assert!(Buckets::of_minutes(0).is_err());
        assert!(Buckets::of_minutes(7).is_err());
        let quarter = Buckets::of_minutes(15).unwrap();
        let t = utc("2026-11-28T18:44:59Z");
        assert_eq!(
            format_ist(quarter.start(quarter.index(t))),
            "2026-11-29 00:00:00 IST"
        );
        assert_eq!(
            quarter.index_of_micros(t.timestamp_micros()),
            quarter.index(t)
        );
    }

    #[test]
    fn window_holds_whole_buckets_after_now_minus_window() {
        let hours = Buckets::hourly();
        let now = utc("2026-11-28T15:35:00Z"); // 21:05 IST
        let first = hours.first_in_window(now, 120); // from 19:05 IST: buckets 20:00 and 21:00
        assert_eq!(format_ist(hours.start(first)), "2026-11-28 20:00:00 IST");
        let aligned = utc("2026-11-28T15:30:00Z"); // 21:00 IST exactly
        let first = hours.first_in_window(aligned, 60); // from 20:00 IST, which counts
        assert_eq!(format_ist(hours.start(first)), "2026-11-28 20:00:00 IST");
    }

    #[test]
    fn microseconds_are_kept_and_nanoseconds_cut() {
        let t = utc("2026-11-28T15:35:00.123456789Z");
        assert_eq!(format_utc(t), "2026-11-28T15:35:00.123456Z");
    }
}
