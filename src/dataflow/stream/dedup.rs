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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataflow::stream::test_events::event;
    use crate::model::EventKind;

    fn click(
        request_id: Option<&'static str>,
        banner: &'static str,
        minute: i64,
    ) -> EventRef<'static> {
        event(EventKind::Click, "pune", banner, request_id, minute)
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_repeated_request_and_banner_within_the_window_is_dropped() {
        let mut clicks = RecentClicks::new(HOUR);
        assert!(clicks.first(&click(Some("r1"), "b1", 0)));
        assert!(!clicks.first(&click(Some("r1"), "b1", 0)));
        assert!(!clicks.first(&click(Some("r1"), "b1", 59)));
        // Another banner of the same request, or another request, is a click of its own.
        assert!(clicks.first(&click(Some("r1"), "b2", 1)));
        assert!(clicks.first(&click(Some("r2"), "b1", 1)));
    }

    #[test]
    fn clicks_without_a_request_id_always_count() {
        let mut clicks = RecentClicks::new(HOUR);
        for _ in 0..3 {
            assert!(clicks.first(&click(None, "b1", 0)));
        }
    }

    #[test]
    fn a_click_older_than_the_window_is_forgotten_once_a_newer_click_arrives() {
        let mut clicks = RecentClicks::new(HOUR);
        assert!(clicks.first(&click(Some("r1"), "b1", 0)));
        assert!(clicks.first(&click(Some("r2"), "b1", 30)));
        // 61 minutes after the first: the window (by event time) no longer holds it.
        assert!(clicks.first(&click(Some("r3"), "b1", 61)));
        assert!(clicks.first(&click(Some("r1"), "b1", 62)));
        // The click of minute 30 is still within the window of the newest (minute 62).
        assert!(!clicks.first(&click(Some("r2"), "b1", 62)));
    }

    #[test]
    fn the_window_follows_the_newest_event_time_not_the_arrival_order() {
        let mut clicks = RecentClicks::new(HOUR);
        assert!(clicks.first(&click(Some("late"), "b1", 100)));
        // An older click arriving later is remembered while within the window of the newest…
        assert!(clicks.first(&click(Some("early"), "b1", 50)));
        assert!(!clicks.first(&click(Some("early"), "b1", 50)));
        // …and forgotten, with everything older, once the newest moves an hour past it.
        assert!(clicks.first(&click(Some("r"), "b1", 161)));
        assert!(clicks.first(&click(Some("late"), "b1", 161)));
        assert!(clicks.first(&click(Some("early"), "b1", 161)));
    }
}
