//! Repeated clicks: a click counts at most once per (request_id, banner) within a window of event
//! time. Each reader remembers the clicks of its partitions; events are keyed `tenant|city`, so a
//! request's clicks share a partition and so a reader.

use std::collections::VecDeque;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rustc_hash::FxHashMap;

use crate::model::EventRef;

/// The clicks seen in the last `window` of event time, by `request_id 0 banner`.
pub(super) struct RecentClicks {
    window: chrono::Duration,
    seen: FxHashMap<String, DateTime<Utc>>,
    order: VecDeque<(DateTime<Utc>, String)>,
    newest: Option<DateTime<Utc>>,
    scratch: String,
}

impl RecentClicks {
    pub(super) fn new(window: Duration) -> Self {
        Self {
            window: chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX),
            seen: FxHashMap::default(),
            order: VecDeque::new(),
            newest: None,
            scratch: String::new(),
        }
    }

    /// Whether this is the first click of its (request_id, banner); clicks without a
    /// request_id are always first.
    pub(super) fn first(&mut self, click: &EventRef<'_>) -> bool {
        let Some(request) = click.request_id else {
            return true;
        };
        self.scratch.clear();
        self.scratch.push_str(request);
        self.scratch.push('\0');
        self.scratch.push_str(click.banner);
        if self.seen.contains_key(self.scratch.as_str()) {
            return false;
        }
        self.seen.insert(self.scratch.clone(), click.ts);
        self.order.push_back((click.ts, self.scratch.clone()));
        let newest = *self.newest.get_or_insert(click.ts);
        self.newest = Some(newest.max(click.ts));
        self.forget_old();
        true
    }

    fn forget_old(&mut self) {
        let Some(horizon) = self.newest.and_then(|n| n.checked_sub_signed(self.window)) else {
            return;
        };
        while let Some((ts, _)) = self.order.front() {
            if *ts >= horizon {
                break;
            }
            let (_, key) = self.order.pop_front().expect("front exists");
            self.seen.remove(&key);
        }
    }
}
