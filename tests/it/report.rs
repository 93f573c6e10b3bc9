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

use crate::common::{hosts_file, ok, slotbandit};

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

    let hosts = hosts_file(dir.path(), 2);
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

/// A row as another tool might write it: every column nullable, any string.
#[derive(Debug, Clone)]
struct RawRow {
    strings: [Option<String>; 10],
    ts: Option<i64>,
    policy_version: Option<i64>,
    holdout: Option<bool>,
    propensity: Option<f64>,
    propensity_error: Option<f64>,
    rank: Option<i64>,
}

/// The string columns of [`RawRow::strings`], in the event schema's order.
const RAW_STRINGS: [&str; 10] = [
    "event_id",
    "kind",
    "tenant",
    "slot",
    "city",
    "banner",
    "customer_id",
    "referrer",
    "request_id",
    "policy",
];

impl RawRow {
    fn of(e: &Event) -> Self {
        let d = e.decision.fields();
        Self {
            strings: [
                Some(e.event_id.clone()),
                Some(e.kind.as_str().into()),
                Some(e.tenant.clone()),
                Some(e.slot.clone()),
                Some(e.city.clone()),
                Some(e.banner.clone()),
                e.customer_id.clone(),
                e.referrer.clone(),
                e.request_id.clone(),
                d.policy.map(String::from),
            ],
            ts: Some(e.ts.timestamp_micros()),
            policy_version: d.policy_version,
            holdout: d.holdout,
            propensity: d.propensity,
            propensity_error: d.propensity_error,
            rank: d.rank,
        }
    }

    fn set(&mut self, column: &str, value: Option<&str>) {
        let i = RAW_STRINGS.iter().position(|c| *c == column).unwrap();
        self.strings[i] = value.map(String::from);
    }

    /// Breaks (or bends, within the contract) the row the `n`th way.
    fn mutate(&mut self, n: usize) {
        match n {
            0 => self.set("tenant", Some("Bad Tenant")),
            1 => self.set("tenant", None),
            2 => self.set("kind", Some("view")),
            3 => self.set("kind", None),
            4 => self.set("request_id", None),
            5 => self.set("request_id", Some("")),
            6 => self.holdout = None,
            7 => self.set("event_id", Some("")),
            8 => self.set("event_id", Some("has space")),
            9 => self.set("city", Some("Straße")),
            10 => self.set("city", Some(" New  Delhi ")),
            11 => self.ts = None,
            12 => self.set("policy", Some("greedy")),
            13 => {
                self.set("policy", Some("thompson"));
                self.holdout = Some(true);
            }
            14 => {
                self.set("policy", Some("uniform"));
                self.holdout = Some(true);
            }
            15 => self.rank = Some(0),
            16 => self.rank = Some(3),
            17 => self.propensity = Some(2.0),
            18 => self.propensity_error = Some(0.1),
            19 => {
                self.propensity = Some(0.5);
                self.propensity_error = Some(0.1);
            }
            20 => self.set("customer_id", Some("tab\there")),
            21 => self.set("referrer", Some(&"r".repeat(65))),
            22 => self.policy_version = Some(-1),
            23 => self.set("slot", Some("")),
            24 => self.set("banner", Some("B1")),
            25 => self.set("request_id", Some("r\u{e9}")),
            _ => {}
        }
    }
}

/// Writes `rows` as one Parquet file of small row groups, with every column nullable, its
/// strings dictionary-encoded or plain.
fn write_raw(path: &Path, rows: &[RawRow], row_group_rows: usize, dictionary: bool) {
    use arrow::array::{
        ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
        TimestampMicrosecondArray,
    };
    use arrow::datatypes::{Field, Schema};
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;

    let schema = slotbandit::model::parquet::event_schema();
    let nullable: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    let schema = Arc::new(Schema::new(nullable));
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| -> ArrayRef {
            let name = f.name().as_str();
            if let Some(i) = RAW_STRINGS.iter().position(|c| *c == name) {
                return Arc::new(StringArray::from_iter(
                    rows.iter().map(|r| r.strings[i].as_deref()),
                ));
            }
            match name {
                "ts" => Arc::new(
                    TimestampMicrosecondArray::from_iter(rows.iter().map(|r| r.ts))
                        .with_timezone("UTC"),
                ),
                "policy_version" => {
                    Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.policy_version)))
                }
                "rank" => Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.rank))),
                "holdout" => Arc::new(BooleanArray::from_iter(rows.iter().map(|r| r.holdout))),
                "propensity" => {
                    Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.propensity)))
                }
                "propensity_error" => Arc::new(Float64Array::from_iter(
                    rows.iter().map(|r| r.propensity_error),
                )),
                other => panic!("no column {other}"),
            }
        })
        .collect();
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(row_group_rows.max(1)))
        .set_dictionary_enabled(dictionary)
        .build();
    let mut writer = ArrowWriter::try_new(
        std::fs::File::create(path).unwrap(),
        schema.clone(),
        Some(props),
    )
    .unwrap();
    if !rows.is_empty() {
        writer
            .write(&RecordBatch::try_new(schema, columns).unwrap())
            .unwrap();
    }
    writer.close().unwrap();
}

/// The events of the files under `dir` as the `Event` path reads them (every row decoded and
/// validated into an `Event`), and the number of rows it refuses.
fn read_as_events(dir: &Path) -> (Vec<Event>, u64) {
    use slotbandit::model::parquet::{list_parquet_files, EventFileReader};
    let (mut events, mut invalid) = (Vec::new(), 0);
    for path in list_parquet_files(dir).unwrap() {
        let mut reader = EventFileReader::open(&path).unwrap();
        while let Some(batch) = reader.next_batch() {
            for row in batch.unwrap() {
                match row {
                    Ok(event) => events.push(event),
                    Err(_) => invalid += 1,
                }
            }
        }
    }
    (events, invalid)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The report reads Parquet as checked columns, never making an `Event`: it refuses exactly
    /// the rows the `Event` path refuses, whichever column breaks the contract, and counts the
    /// rest as the recount of those events does.
    #[test]
    fn the_column_reader_refuses_what_the_event_path_refuses_and_counts_the_same(
        rows in prop::collection::vec(
            (event(), proptest::option::weighted(0.4, 0..30usize)),
            0..300,
        ),
        row_group_rows in 1usize..60,
        dictionary in any::<bool>(),
    ) {
        let range = ReportRange::new(at(0), at(60)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let raw: Vec<RawRow> = rows
            .iter()
            .map(|(e, mutation)| {
                let mut row = RawRow::of(e);
                if let Some(n) = mutation {
                    row.mutate(*n);
                }
                row
            })
            .collect();
        let (first, second) = raw.split_at(raw.len() / 2);
        write_raw(&dir.path().join("a.parquet"), first, row_group_rows, dictionary);
        write_raw(&dir.path().join("b.parquet"), second, row_group_rows, !dictionary);
        let (events, invalid) = read_as_events(dir.path());
        let expected = recount(&events, range);
        for workers in [1, 3] {
            let run = dataflow_report(dir.path(), range, workers);
            prop_assert_eq!(run.invalid_rows, invalid, "{} workers", workers);
            prop_assert_eq!(&run.report, &expected, "{} workers", workers);
        }
    }
}

#[test]
fn a_corrupt_or_truncated_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let events = many_events(3_000);
    let rows: Vec<RawRow> = events.iter().map(RawRow::of).collect();
    let path = dir.path().join("corrupt.parquet");
    write_raw(&path, &rows, 1_000, true);
    let range = ReportRange::new(at(0), at(120)).unwrap();
    assert_eq!(dataflow_report(dir.path(), range, 2).invalid_rows, 0);

    // The footer stands, a page of the second row group's `event_id` does not.
    let plan = ParquetPlan::new(dir.path(), false).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let meta = parquet::file::reader::SerializedFileReader::new(file).unwrap();
    let chunk = parquet::file::reader::FileReader::metadata(&meta)
        .row_group(1)
        .column(0)
        .byte_range();
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = (chunk.0 + chunk.1 / 2) as usize;
    bytes[middle..middle + 64].fill(0xa5);
    std::fs::write(&path, &bytes).unwrap();
    for workers in [1, 3] {
        let job = ReportJob {
            history: History::Parquet(plan.clone()),
            range,
            progress: Arc::new(|_| {}),
        };
        let err = run_report(job, &Cluster::single(workers))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("corrupt.parquet") && err.contains("row group 1"),
            "{err}"
        );
    }

    // Cut short, the file has no footer: planning refuses it by name.
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = ParquetPlan::new(dir.path(), false).unwrap_err().to_string();
    assert!(err.contains("corrupt.parquet"), "{err}");
}
