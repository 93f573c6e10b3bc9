//! Repeats: a click counts at most once per (request_id, banner) within a window of event time,
//! and so does an impression. A click is repeated when a site replays it; an impression when a
//! service re-sends what the log may already hold (an append that timed out and was spooled,
//! then written by the log after all). Each reader remembers the events of its partitions;
//! events are keyed `tenant|city`, so a request's events share a partition and so a reader.

use std::collections::VecDeque;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rustc_hash::FxHashSet;

use crate::model::{EventRef, PairDigest};

/// The (request_id, banner) pairs of one kind of event seen in the last `window` of event time,
/// each held as its 128-bit digest.
pub(super) struct RecentRequests {
    window: chrono::Duration,
    seen: FxHashSet<u128>,
    order: VecDeque<(DateTime<Utc>, u128)>,
    newest: Option<DateTime<Utc>>,
    digest: PairDigest,
}

impl RecentRequests {
    pub(super) fn new(window: Duration) -> Self {
        Self {
            window: chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX),
            seen: FxHashSet::default(),
            order: VecDeque::new(),
            newest: None,
            digest: PairDigest::default(),
        }
    }

    /// Whether this is the first event of its (request_id, banner); events without a
    /// request_id are always first.
    pub(super) fn first(&mut self, event: &EventRef<'_>) -> bool {
        let Some(request) = event.request_id else {
            return true;
        };
        let key = self.digest.of(request, event.banner);
        if !self.seen.insert(key) {
            return false;
        }
        self.order.push_back((event.ts, key));
        let newest = *self.newest.get_or_insert(event.ts);
        self.newest = Some(newest.max(event.ts));
        self.forget_old();
        true
    }

    fn forget_old(&mut self) {
        let Some(horizon) = self.newest.and_then(|n| n.checked_sub_signed(self.window)) else {
            return;
        };
        while let Some(&(ts, key)) = self.order.front() {
            if ts >= horizon {
                break;
            }
            self.order.pop_front();
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
        let mut clicks = RecentRequests::new(HOUR);
        assert!(clicks.first(&click(Some("r1"), "b1", 0)));
        assert!(!clicks.first(&click(Some("r1"), "b1", 0)));
        assert!(!clicks.first(&click(Some("r1"), "b1", 59)));
        // Another banner of the same request, or another request, is a click of its own.
        assert!(clicks.first(&click(Some("r1"), "b2", 1)));
        assert!(clicks.first(&click(Some("r2"), "b1", 1)));
    }

    #[test]
    fn an_impression_and_a_click_are_remembered_apart_by_whoever_holds_them() {
        let mut impressions = RecentRequests::new(HOUR);
        let shown = event(EventKind::Impression, "pune", "b1", Some("r1"), 0);
        assert!(impressions.first(&shown));
        assert!(!impressions.first(&shown));
        // The pair is the key: the banner and the request_id are not run together.
        assert!(impressions.first(&event(EventKind::Impression, "pune", "1", Some("r1b"), 0)));
        assert!(impressions.first(&event(EventKind::Impression, "pune", "b1", Some("r"), 0)));
    }

    #[test]
    fn clicks_without_a_request_id_always_count() {
        let mut clicks = RecentRequests::new(HOUR);
        for _ in 0..3 {
            assert!(clicks.first(&click(None, "b1", 0)));
        }
    }

    #[test]
    fn a_click_older_than_the_window_is_forgotten_once_a_newer_click_arrives() {
        let mut clicks = RecentRequests::new(HOUR);
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
        let mut clicks = RecentRequests::new(HOUR);
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
