//! A customer's event as stored in its history, one codec for both backends: the row keeps what
//! the (tenant, customer) partition does not, and is validated again when read back.

use chrono::DateTime;

use crate::model::{Event, EventFields};

/// The stored fields of an event with a customer ID, besides its tenant and customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CustomerEventRow<'a> {
    pub event_id: &'a str,
    /// The event time in microseconds since the epoch (the history's order).
    pub ts_us: i64,
    pub kind: &'a str,
    pub slot: &'a str,
    pub city: &'a str,
    pub banner: &'a str,
    pub referrer: Option<&'a str>,
    pub request_id: Option<&'a str>,
}

impl<'a> CustomerEventRow<'a> {
    /// The customer and the row of an event with a customer ID; `None` for an event without one
    /// (which no history keeps).
    pub fn of(e: &'a Event) -> Option<(&'a str, Self)> {
        let customer = e.customer_id.as_deref()?;
        Some((
            customer,
            CustomerEventRow {
                event_id: &e.event_id,
                ts_us: e.ts.timestamp_micros(),
                kind: e.kind.as_str(),
                slot: &e.slot,
                city: &e.city,
                banner: &e.banner,
                referrer: e.referrer.as_deref(),
                request_id: e.request_id.as_deref(),
            },
        ))
    }

    /// The event again, validated as any event read from outside.
    pub fn into_event(self, tenant: &str, customer_id: &str) -> Result<Event, String> {
        let event_id = self.event_id;
        let ts = DateTime::from_timestamp_micros(self.ts_us).ok_or_else(|| {
            format!(
                "customer event {event_id}: ts_us {} is out of range",
                self.ts_us
            )
        })?;
        EventFields {
            event_id: Some(event_id),
            kind: Some(self.kind),
            tenant: Some(tenant),
            slot: Some(self.slot),
            city: Some(self.city),
            banner: Some(self.banner),
            ts: Some(ts),
            customer_id: Some(customer_id),
            referrer: self.referrer,
            request_id: self.request_id,
            decision: Default::default(),
        }
        .validate()
        .map_err(|e| format!("customer event {event_id}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_round_trips_through_its_row_and_a_bad_row_is_named() {
        let event = EventFields {
            event_id: Some("e1"),
            kind: Some("click"),
            tenant: Some("ajio"),
            slot: Some("hero"),
            city: Some("pune"),
            banner: Some("b2"),
            ts: DateTime::from_timestamp_micros(1_764_700_199_000_001),
            customer_id: Some("cust-1"),
            referrer: Some("ads"),
            request_id: None,
            decision: Default::default(),
        }
        .validate()
        .unwrap();
        let (customer, row) = CustomerEventRow::of(&event).unwrap();
        assert_eq!(customer, "cust-1");
        assert_eq!(row.into_event("ajio", customer).unwrap(), event);

        let anonymous = Event {
            customer_id: None,
            ..event.clone()
        };
        assert_eq!(CustomerEventRow::of(&anonymous), None);

        let out_of_range = CustomerEventRow {
            ts_us: i64::MAX,
            ..row
        };
        assert!(out_of_range
            .into_event("ajio", customer)
            .unwrap_err()
            .starts_with("customer event e1: ts_us"));
        let bad_kind = CustomerEventRow {
            kind: "view",
            ..row
        };
        assert!(bad_kind
            .into_event("ajio", customer)
            .unwrap_err()
            .starts_with("customer event e1: "));
    }
}
