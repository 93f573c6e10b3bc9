//! The integration tests, in one crate so that the heavy stack (timely, differential, arrow,
//! rdkafka, scylla, axum) links once. Tests that need Kafka or Cassandra read `SLOTBANDIT_KAFKA`
//! and `SLOTBANDIT_CASSANDRA` (set by scripts/test.sh) and skip without them unless
//! `SLOTBANDIT_REQUIRE_SERVICES=1`.

mod common;

mod backfill;
mod cassandra;
mod cities;
mod cli;
mod evaluate;
mod event_log;
mod faults;
mod filelog;
mod import_prototype;
mod kafka;
mod lab;
mod lab_replay;
mod layers;
mod posterior_store;
mod priors;
mod properties;
mod report;
mod serve_api;
mod serve_e2e;
mod stream;
