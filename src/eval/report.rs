//! What Thompson sampling earned over the holdout, per (tenant, slot) and overall, over the
//! impressions of a time range: each impression counts in its group (TS or holdout, from its
//! decision log), and each click counts once for the impression it names by (request_id, banner)
//! — whenever the click came, so a range's clicks are those of its impressions. Rows that cannot
//! take part are counted, never dropped silently: impressions without a holdout flag (older data,
//! the prototype's), clicks repeated for the same impression, clicks whose impression is not in
//! the range or not in the data.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{uplift, Uplift};
use crate::model::{Counts, Event, EventKind};

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

/// Gathers events in any order, then [`finish`](ReportTally::finish)es into a [`Report`].
pub struct ReportTally {
    range: ReportRange,
    slots: BTreeMap<(String, String), Groups>,
    /// (request_id, banner) of every flagged impression in the range → its slot and group.
    impressions: HashMap<(String, String), ((String, String), bool)>,
    clicks: HashSet<(String, String)>,
    report: Report,
}

impl ReportTally {
    pub fn new(range: ReportRange) -> Self {
        Self {
            range,
            slots: BTreeMap::new(),
            impressions: HashMap::new(),
            clicks: HashSet::new(),
            report: Report::default(),
        }
    }

    pub fn add(&mut self, e: &Event) {
        self.report.events += 1;
        match e.kind {
            EventKind::Impression => {
                if !self.range.contains(e.ts) {
                    return;
                }
                let Some(holdout) = e.decision.holdout else {
                    self.report.unflagged_impressions += 1;
                    return;
                };
                let slot = (e.tenant.clone(), e.slot.clone());
                let groups = self.slots.entry(slot.clone()).or_default();
                *group(groups, holdout) += Counts::new(1, 0);
                if let Some(request_id) = &e.request_id {
                    self.impressions
                        .insert((request_id.clone(), e.banner.clone()), (slot, holdout));
                }
            }
            EventKind::Click => match &e.request_id {
                Some(request_id) => {
                    if !self.clicks.insert((request_id.clone(), e.banner.clone())) {
                        self.report.repeated_clicks += 1;
                    }
                }
                None => self.report.unmatched_clicks += 1,
            },
        }
    }

    pub fn finish(mut self) -> Report {
        for key in &self.clicks {
            match self.impressions.get(key) {
                Some((slot, holdout)) => {
                    let groups = self.slots.get_mut(slot).expect("an impression's slot");
                    *group(groups, *holdout) += Counts::new(0, 1);
                }
                None => self.report.unmatched_clicks += 1,
            }
        }
        let mut overall = Groups::default();
        for ((tenant, slot), groups) in self.slots {
            overall.ts += groups.ts;
            overall.holdout += groups.holdout;
            self.report.rows.push(row(tenant, slot, groups));
        }
        self.report.rows.push(row("*".into(), "*".into(), overall));
        self.report
    }
}

fn group(groups: &mut Groups, holdout: bool) -> &mut Counts {
    if holdout {
        &mut groups.holdout
    } else {
        &mut groups.ts
    }
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
    use crate::model::DecisionLog;

    fn event(kind: EventKind, slot: &str, request: &str, banner: &str, minute: i64) -> Event {
        Event {
            event_id: format!("{request}-{banner}-{minute}-{kind:?}"),
            kind,
            tenant: "ajio".into(),
            slot: slot.into(),
            city: "pune".into(),
            banner: banner.into(),
            ts: DateTime::from_timestamp(1_800_000_000 + minute * 60, 0).unwrap(),
            customer_id: None,
            referrer: None,
            request_id: Some(request.into()),
            decision: DecisionLog::default(),
        }
    }

    fn shown(slot: &str, request: &str, banner: &str, minute: i64, holdout: Option<bool>) -> Event {
        let mut e = event(EventKind::Impression, slot, request, banner, minute);
        e.decision.holdout = holdout;
        e
    }

    #[test]
    fn clicks_count_once_for_their_impressions_group_and_the_rest_is_counted() {
        let t = |m: i64| DateTime::from_timestamp(1_800_000_000 + m * 60, 0).unwrap();
        let range = ReportRange::new(t(0), t(60)).unwrap();
        let mut tally = ReportTally::new(range);
        let events = [
            // A click read before its impression still counts.
            event(EventKind::Click, "hero", "r1", "b1", 2),
            shown("hero", "r1", "b1", 1, Some(false)),
            shown("hero", "r2", "b2", 3, Some(true)),
            event(EventKind::Click, "hero", "r2", "b2", 4),
            event(EventKind::Click, "hero", "r2", "b2", 5),
            shown("hero", "r3", "b1", 6, Some(false)),
            // After the range: its click is not the range's.
            shown("hero", "r4", "b1", 61, Some(false)),
            event(EventKind::Click, "hero", "r4", "b1", 62),
            // In the range, without a flag.
            shown("side", "r5", "b1", 7, None),
            shown("side", "r6", "b1", 8, Some(true)),
        ];
        for e in &events {
            tally.add(e);
        }
        let report = tally.finish();
        assert_eq!(report.events, 10);
        assert_eq!(report.repeated_clicks, 1);
        assert_eq!(report.unmatched_clicks, 1);
        assert_eq!(report.unflagged_impressions, 1);
        let hero = &report.rows[0];
        assert_eq!((hero.tenant.as_str(), hero.slot.as_str()), ("ajio", "hero"));
        assert_eq!(hero.groups.ts, Counts::new(2, 1));
        assert_eq!(hero.groups.holdout, Counts::new(1, 1));
        let side = &report.rows[1];
        assert_eq!(side.groups.ts, Counts::ZERO);
        assert_eq!(side.groups.holdout, Counts::new(1, 0));
        assert!(side.uplift.is_none());
        let overall = report.rows.last().unwrap();
        assert_eq!(overall.slot, "*");
        assert_eq!(overall.groups.ts, Counts::new(2, 1));
        assert_eq!(overall.groups.holdout, Counts::new(2, 1));
        let u = overall.uplift.as_ref().unwrap();
        assert_eq!(u.ctr_ts, 0.5);
        assert_eq!(u.ctr_holdout, 0.5);
    }

    #[test]
    fn a_range_must_not_be_empty() {
        let t = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let e = ReportRange::new(t, t).unwrap_err();
        assert!(e.to_string().contains("--from"), "{e}");
        assert!(ReportRange::new(t + chrono::Duration::hours(1), t).is_err());
    }
}
