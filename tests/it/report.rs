//! `slotbandit report` computed by the dataflow job against a straightforward recount of the
//! same events: with one worker, several, and two processes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use slotbandit::dataflow::{run_report, Cluster, History, ReportJob, ReportRun};
use slotbandit::eval::{report_rows, Groups, Report, ReportRange};
use slotbandit::model::parquet::PartitionedWriter;
use slotbandit::model::{Counts, DecisionLog, Event, EventKind};
use slotbandit::source::parquet::ParquetPlan;

use crate::common::{free_port, ok, slotbandit};

fn at(minute: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + minute * 60, 0).unwrap()
}

/// The report by its definition (src/eval/report.rs), one event at a time.
fn recount(events: &[Event], range: ReportRange) -> Report {
    type Place = (String, String, bool);
    let mut report = Report {
        events: events.len() as u64,
        ..Report::default()
    };
    let mut slots: BTreeMap<(String, String), Groups> = BTreeMap::new();
    let mut places: BTreeMap<(String, String), BTreeSet<Place>> = BTreeMap::new();
    let mut clicks: BTreeMap<(String, String), u64> = BTreeMap::new();
    for e in events {
        match (e.kind, &e.request_id) {
            (EventKind::Impression, _) if !range.contains(e.ts) => {}
            (EventKind::Impression, request_id) => {
                let Some(holdout) = e.decision.holdout else {
                    report.unflagged_impressions += 1;
                    continue;
                };
                slots
                    .entry((e.tenant.clone(), e.slot.clone()))
                    .or_default()
                    .add(holdout, Counts::new(1, 0));
                if let Some(request_id) = request_id {
                    places
                        .entry((request_id.clone(), e.banner.clone()))
                        .or_default()
                        .insert((e.tenant.clone(), e.slot.clone(), holdout));
                }
            }
            (EventKind::Click, Some(request_id)) => {
                *clicks
                    .entry((request_id.clone(), e.banner.clone()))
                    .or_default() += 1;
            }
            (EventKind::Click, None) => report.unmatched_clicks += 1,
        }
    }
    for (key, n) in clicks {
        report.repeated_clicks += n - 1;
        match places.get(&key).and_then(|p| p.first()) {
            Some((tenant, slot, holdout)) => slots
                .get_mut(&(tenant.clone(), slot.clone()))
                .unwrap()
                .add(*holdout, Counts::new(0, 1)),
            None => report.unmatched_clicks += 1,
        }
    }
    report.rows = report_rows(slots);
    report
}

/// Writes `events` as Parquet history of many small files (row groups the workers share).
fn write_history(dir: &Path, events: &[Event], rows_per_file: usize) {
    let mut writer = PartitionedWriter::create(dir, rows_per_file).unwrap();
    for e in events {
        writer.write(&e.into()).unwrap();
    }
    writer.finish().unwrap();
}

fn dataflow_report(dir: &Path, range: ReportRange, workers: usize) -> ReportRun {
    let job = ReportJob {
        history: History::Parquet(ParquetPlan::new(dir, false).unwrap()),
        range,
        progress: Arc::new(|_| {}),
    };
    run_report(job, &Cluster::single(workers)).unwrap().unwrap()
}

/// An event of a small world, so that keys meet: 2 tenants, 3 slots, 12 requests of 3
/// banners; impressions before, in and after the range (minutes 0 to 60), with or without a
/// holdout flag and a request id; clicks any time, repeated, or naming no impression.
fn event() -> impl Strategy<Value = Event> {
    (
        any::<bool>(),
        0..2usize,
        0..3usize,
        proptest::option::weighted(0.9, 0..12u32),
        0..3u32,
        -20..90i64,
        proptest::option::weighted(0.85, any::<bool>()),
    )
        .prop_map(
            |(click, tenant, slot, request, banner, minute, holdout)| Event {
                event_id: format!("e{minute}-{request:?}-{banner}"),
                kind: if click {
                    EventKind::Click
                } else {
                    EventKind::Impression
                },
                tenant: ["ajio", "tira"][tenant].into(),
                slot: ["hero", "side", "footer"][slot].into(),
                city: "pune".into(),
                banner: format!("b{banner}"),
                ts: at(minute),
                customer_id: None,
                referrer: None,
                request_id: request.map(|r| format!("r{r}")),
                decision: DecisionLog {
                    holdout,
                    ..DecisionLog::default()
                },
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn the_dataflow_report_equals_a_recount_with_1_and_3_workers(
        events in prop::collection::vec(event(), 0..300),
        rows_per_file in 1usize..40,
    ) {
        let range = ReportRange::new(at(0), at(60)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        write_history(dir.path(), &events, rows_per_file);
        let expected = recount(&events, range);
        for workers in [1, 3] {
            let run = dataflow_report(dir.path(), range, workers);
            prop_assert_eq!(run.invalid_rows, 0);
            prop_assert_eq!(&run.report, &expected, "{} workers", workers);
        }
    }
}

fn many_events(n: u32) -> Vec<Event> {
    use rand::RngExt;
    let mut rng = slotbandit::bandit::seeded_rng(7);
    (0..n)
        .map(|i| {
            let request = rng.random_range(0..n / 3);
            Event {
                event_id: format!("e{i}"),
                kind: if rng.random_bool(0.2) {
                    EventKind::Click
                } else {
                    EventKind::Impression
                },
                tenant: format!("t{}", rng.random_range(0..3)),
                slot: format!("s{}", rng.random_range(0..4)),
                city: "pune".into(),
                banner: format!("b{}", rng.random_range(0..3)),
                ts: at(rng.random_range(-60..180)),
                customer_id: None,
                referrer: None,
                request_id: Some(format!("r{request}")),
                decision: DecisionLog {
                    holdout: rng.random_bool(0.95).then_some(request % 10 == 0),
                    ..DecisionLog::default()
                },
            }
        })
        .collect()
}

#[test]
fn the_report_command_equals_the_recount_with_1_and_2_workers_and_2_processes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let events = many_events(20_000);
    write_history(&data, &events, 1_000);
    let range = ReportRange::new(at(0), at(120)).unwrap();
    let expected = serde_json::to_value(recount(&events, range)).unwrap();
    let (from, to) = (at(0).to_rfc3339(), at(120).to_rfc3339());
    let report_args = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = [
            "report",
            "--input",
            data.to_str().unwrap(),
            "--from",
            &from,
            "--to",
            &to,
            "--format",
            "json",
        ]
        .map(String::from)
        .into();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    for workers in ["1", "2"] {
        let args = report_args(&["-w", workers]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out: serde_json::Value = serde_json::from_str(&ok(slotbandit(&args))).unwrap();
        assert_eq!(out, expected, "{workers} workers");
    }

    let hosts = dir.path().join("hosts.txt");
    std::fs::write(
        &hosts,
        format!("127.0.0.1:{}\n127.0.0.1:{}\n", free_port(), free_port()),
    )
    .unwrap();
    let spawn = |p: &str| {
        let args = report_args(&["-w", "2", "-n", "2", "-p", p, "-h", hosts.to_str().unwrap()]);
        Command::new(env!("CARGO_BIN_EXE_slotbandit"))
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
    };
    let p1 = std::thread::scope(|s| {
        let p1 = s.spawn(|| spawn("1").unwrap());
        let p0 = spawn("0").unwrap();
        let out: serde_json::Value = serde_json::from_str(&ok(p0)).unwrap();
        assert_eq!(out, expected, "2 processes");
        p1.join().unwrap()
    });
    assert!(ok(p1).is_empty(), "only process 0 prints the report");
}
