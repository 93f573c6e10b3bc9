//! What Thompson sampling earned over the holdout, per (tenant, slot) and overall, over the
//! impressions of a time range: each impression counts in its group (TS or holdout, from its
//! decision log), and each click counts once for the impression it names by (request_id, banner)
//! — whenever the click came, so a range's clicks are those of its impressions. Rows that cannot
//! take part are counted, never dropped silently: impressions without a holdout flag (older data,
//! the prototype's), clicks repeated for the same impression, clicks whose impression is not in
//! the range or not in the data. A (request_id, banner) logged for more than one impression
//! counts every one of them, and its click once, for the least (tenant, slot, group).
//!
//! The dataflow job computes the counts (`dataflow::run_report`); this module holds the range,
//! the report's shape and the rows with their uplift.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{uplift, Uplift};
use crate::model::Counts;

/// The range of impression times, from inclusive to exclusive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReportRange {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReportError {
    #[error("--from ({from}) must be before --to ({to})")]
    EmptyRange { from: String, to: String },
}

impl ReportRange {
    pub fn new(from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Self, ReportError> {
        if from >= to {
            return Err(ReportError::EmptyRange {
                from: crate::time::format_ist_rfc3339(from),
                to: crate::time::format_ist_rfc3339(to),
            });
        }
        Ok(Self { from, to })
    }

    pub fn contains(&self, ts: DateTime<Utc>) -> bool {
        self.from <= ts && ts < self.to
    }
}

/// One row of the report: a (tenant, slot), or every slot (`tenant` and `slot` "*").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportRow {
    pub tenant: String,
    pub slot: String,
    /// TS's and the holdout's impressions and clicks, and the uplift with its 95% interval
    /// (`None` until both groups have impressions).
    #[serde(flatten)]
    pub groups: Groups,
    pub uplift: Option<Uplift>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Groups {
    pub ts: Counts,
    pub holdout: Counts,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    pub rows: Vec<ReportRow>,
    /// Impressions in the range whose decision log says nothing of a holdout: in no group.
    pub unflagged_impressions: u64,
    /// Clicks beyond the first for the same (request_id, banner): counted once.
    pub repeated_clicks: u64,
    /// Clicks whose impression is not among the range's flagged impressions.
    pub unmatched_clicks: u64,
    /// Events read, of every kind and time.
    pub events: u64,
}

impl Groups {
    pub fn add(&mut self, holdout: bool, counts: Counts) {
        if holdout {
            self.holdout += counts;
        } else {
            self.ts += counts;
        }
    }
}

/// The report's rows from each (tenant, slot)'s groups: one per (tenant, slot) in order, then
/// the overall row.
pub fn report_rows(slots: BTreeMap<(String, String), Groups>) -> Vec<ReportRow> {
    let mut overall = Groups::default();
    let mut rows = Vec::with_capacity(slots.len() + 1);
    for ((tenant, slot), groups) in slots {
        overall.ts += groups.ts;
        overall.holdout += groups.holdout;
        rows.push(row(tenant, slot, groups));
    }
    rows.push(row("*".into(), "*".into(), overall));
    rows
}

fn row(tenant: String, slot: String, groups: Groups) -> ReportRow {
    // A click is only counted for an impression of its group, so the counts are valid.
    let uplift = uplift(groups.ts, groups.holdout, 0.95).ok().flatten();
    ReportRow {
        tenant,
        slot,
        groups,
        uplift,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_come_in_slot_order_then_overall_with_an_uplift_once_both_groups_were_shown() {
        let mut hero = Groups::default();
        hero.add(false, Counts::new(2, 1));
        hero.add(true, Counts::new(1, 1));
        let mut side = Groups::default();
        side.add(true, Counts::new(1, 0));
        let slots = BTreeMap::from([
            (("ajio".to_string(), "side".to_string()), side),
            (("ajio".to_string(), "hero".to_string()), hero),
        ]);
        let rows = report_rows(slots);
        let names: Vec<_> = rows
            .iter()
            .map(|r| (r.tenant.as_str(), r.slot.as_str()))
            .collect();
        assert_eq!(names, [("ajio", "hero"), ("ajio", "side"), ("*", "*")]);
        assert!(rows[0].uplift.is_some());
        assert!(rows[1].uplift.is_none());
        let overall = &rows[2];
        assert_eq!(overall.groups.ts, Counts::new(2, 1));
        assert_eq!(overall.groups.holdout, Counts::new(2, 1));
        let u = overall.uplift.as_ref().unwrap();
        assert_eq!(u.ctr_ts, 0.5);
        assert_eq!(u.ctr_holdout, 0.5);
    }

    #[test]
    fn without_impressions_there_is_only_the_overall_row_without_an_uplift() {
        let rows = report_rows(BTreeMap::new());
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].groups, Groups::default());
        assert!(rows[0].uplift.is_none());
    }

    #[test]
    fn a_range_must_not_be_empty() {
        let t = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let e = ReportRange::new(t, t).unwrap_err();
        assert!(e.to_string().contains("--from"), "{e}");
        assert!(ReportRange::new(t + chrono::Duration::hours(1), t).is_err());
    }
}
