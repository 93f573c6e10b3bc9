//! The streaming job as a user runs it, on the embedded file log and store: exact counts against
//! an independent recount of what was produced, restarts that change nothing, repeated clicks,
//! dead letters and the backfill→stream handoff.

use std::path::{Path, PathBuf};

mod common;
use common::{events_of, gen, ok, posteriors, recount, slotbandit, stderr, Counts};

use slotbandit::model::parquet::list_parquet_files;
use slotbandit::model::Event;

/// Generated history, a file log and an embedded store in one temp folder.
struct Fixture {
    dir: tempfile::TempDir,
    data: PathBuf,
    log: String,
    store: String,
}

impl Fixture {
    fn new(gen_flags: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        ok(gen(&data, gen_flags));
        let log = format!("file:{}?partitions=4", dir.path().join("log").display());
        let store = format!("embedded:{}", dir.path().join("s.redb").display());
        Self {
            dir,
            data,
            log,
            store,
        }
    }

    fn events(&self) -> Vec<Event> {
        events_of(&list_parquet_files(&self.data).unwrap())
    }

    fn produce_from(&self, from: &Path) {
        ok(slotbandit(&[
            "produce",
            "--log",
            &self.log,
            "--from",
            from.to_str().unwrap(),
        ]));
    }

    fn stream(&self, extra: &[&str]) -> String {
        let mut args = vec![
            "stream",
            "--log",
            &self.log,
            "--store",
            &self.store,
            "--stop-at-end",
            "--epoch-ms",
            "50",
        ];
        args.extend_from_slice(extra);
        ok(slotbandit(&args))
    }

    fn counts(&self) -> Counts {
        posteriors(&self.store, &[])
    }
}

/// The number after `label` in the job's summary line.
fn reported(summary: &str, label: &str) -> u64 {
    let before = summary
        .split(label)
        .next()
        .unwrap_or_else(|| panic!("{label:?} in {summary}"));
    before
        .split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a number before {label:?} in {summary}"))
}

#[test]
fn stream_counts_a_file_log_exactly_and_a_rerun_changes_nothing() {
    let f = Fixture::new("--events 40000 --days 2 --tenants 2 --cities 5 --banners 4 --seed 11");
    f.produce_from(&f.data);
    let events = f.events();
    let first = f.stream(&["-w", "2"]);
    assert_eq!(reported(&first, "counted"), events.len() as u64, "{first}");
    assert_eq!(f.counts(), recount(&events));

    let again = f.stream(&["-w", "3"]);
    assert_eq!(reported(&again, "counted"), 0, "{again}");
    assert_eq!(f.counts(), recount(&events));
}

#[test]
fn more_events_later_continue_the_counts() {
    let f = Fixture::new("--events 20000 --days 2 --tenants 1 --cities 4 --banners 3 --seed 12");
    let files = list_parquet_files(&f.data).unwrap();
    let (early, late) = files.split_at(files.len() / 2);
    assert!(!early.is_empty() && !late.is_empty());
    for file in early {
        f.produce_from(file);
    }
    f.stream(&[]);
    assert_eq!(f.counts(), recount(&events_of(early)));
    for file in late {
        f.produce_from(file);
    }
    f.stream(&["-w", "1"]);
    assert_eq!(f.counts(), recount(&f.events()));
}

/// JSON lines: the produced events, a repeated click and malformed messages.
fn write_jsonl(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn repeated_clicks_count_once_and_malformed_messages_become_dead_letters() {
    let f = Fixture::new("--events 5000 --days 1 --tenants 1 --cities 3 --banners 3 --seed 13");
    let events = f.events();
    // The newest click, so that it is within the job's memory of clicks (60 minutes of event
    // time) when its repeat arrives at the end of the log.
    let click = events
        .iter()
        .filter(|e| e.kind == slotbandit::model::EventKind::Click && e.request_id.is_some())
        .max_by_key(|e| e.ts)
        .expect("a click with a request_id")
        .clone();
    let repeat = Event {
        event_id: format!("{}-again", click.event_id),
        ..click.clone()
    };
    let malformed = [
        "not json".to_string(),
        r#"{"event_id":"x1","kind":"view","tenant":"ajio","slot":"hero","city":"pune","banner":"b1","ts":"2026-01-01T00:00:00Z"}"#.to_string(),
        r#"{"event_id":"x2","kind":"click","tenant":"Ajio!","slot":"hero","city":"pune","banner":"b1","ts":"2026-01-01T00:00:00Z"}"#.to_string(),
        r#"{"event_id":"x3","kind":"click","slot":"hero","city":"pune","banner":"b1","ts":"2026-01-01T00:00:00Z"}"#.to_string(),
        format!(r#"{{"event_id":"x4","kind":"click","tenant":"ajio","slot":"hero","city":"pune","banner":"b1","ts":"2026-01-01T00:00:00Z","referrer":"{}"}}"#, "a".repeat(20_000)),
    ];
    let mut lines: Vec<String> = events.iter().map(Event::to_json).collect();
    lines.push(repeat.to_json());
    lines.extend(malformed.iter().cloned());
    let jsonl = f.dir.path().join("events.jsonl");
    write_jsonl(&jsonl, &lines);
    f.produce_from(&jsonl);

    let summary = f.stream(&[]);
    assert_eq!(reported(&summary, "repeated clicks"), 1, "{summary}");
    assert_eq!(
        reported(&summary, "dead letters"),
        malformed.len() as u64,
        "{summary}"
    );
    assert_eq!(f.counts(), recount(&events));
}

#[test]
fn handoff_counts_history_before_the_cutoff_and_the_log_after_it() {
    let f = Fixture::new("--events 30000 --days 3 --tenants 1 --cities 4 --banners 3 --seed 14");
    let events = f.events();
    let mut times: Vec<_> = events.iter().map(|e| e.ts).collect();
    times.sort();
    let cutoff = times[times.len() / 2];
    // The whole history is in the log too (as when a topic keeps a week): the handoff must drop
    // what the backfill counted. The file log stamps records with the append time, so every
    // record is "after" the cutoff by the log's clock and the ts filter does the work.
    f.produce_from(&f.data);
    let cutoff_arg = slotbandit::time::format_utc(cutoff);
    let out = slotbandit(&[
        "backfill",
        "--input",
        f.data.to_str().unwrap(),
        "--store",
        &f.store,
        "--until",
        &cutoff_arg,
        "--then-stream",
        "--log",
        &f.log,
        "--stop-at-end",
        "--epoch-ms",
        "50",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(f.counts(), recount(&events));
}
