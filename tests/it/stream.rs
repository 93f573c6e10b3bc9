//! The streaming job as a user runs it, on the embedded file log and store: exact counts against
//! an independent recount of what was produced, restarts that change nothing, repeated clicks,
//! dead letters and the backfill→stream handoff.

use std::path::{Path, PathBuf};

use crate::common::{events_of, gen, ok, posteriors, recount, slotbandit, stderr, Counts};

use slotbandit::model::parquet::list_parquet_files;
use slotbandit::model::{Event, EventKind};

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
        crate::common::stream_to_end(&self.log, &self.store, 50, extra)
    }

    fn counts(&self) -> Counts {
        posteriors(&self.store, &[])
    }
}

/// The number just before `label` in the job's summary.
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
    assert_eq!(
        reported(&first, "records in"),
        events.len() as u64,
        "{first}"
    );
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
fn repeated_clicks_and_impressions_count_once_and_malformed_messages_become_dead_letters() {
    let f = Fixture::new("--events 5000 --days 1 --tenants 1 --cities 3 --banners 3 --seed 13");
    let events = f.events();
    // The newest of each kind, so that it is within the job's memory of repeats (60 minutes of
    // event time) when it arrives again at the end of the log.
    let newest = |kind| {
        events
            .iter()
            .filter(|e| e.kind == kind && e.request_id.is_some())
            .max_by_key(|e| e.ts)
            .expect("an event of the kind with a request_id")
            .clone()
    };
    let click = newest(slotbandit::model::EventKind::Click);
    let repeat = Event {
        event_id: format!("{}-again", click.event_id),
        ..click
    };
    // An impression sent twice, as a service re-sends one whose append timed out but landed.
    let impression = newest(slotbandit::model::EventKind::Impression);
    let malformed = [
        "not json".to_string(),
        r#"{"event_id":"x1","kind":"view","tenant":"ajio","slot":"hero","city":"pune","banner":"b1","ts":"2026-01-01T00:00:00Z"}"#.to_string(),
        r#"{"event_id":"x2","kind":"click","tenant":"Ajio!","slot":"hero","city":"pune","banner":"b1","ts":"2026-01-01T00:00:00Z"}"#.to_string(),
        r#"{"event_id":"x3","kind":"click","slot":"hero","city":"pune","banner":"b1","ts":"2026-01-01T00:00:00Z"}"#.to_string(),
        format!(r#"{{"event_id":"x4","kind":"click","tenant":"ajio","slot":"hero","city":"pune","banner":"b1","ts":"2026-01-01T00:00:00Z","referrer":"{}"}}"#, "a".repeat(20_000)),
    ];
    let mut lines: Vec<String> = events.iter().map(Event::to_json).collect();
    lines.push(repeat.to_json());
    lines.push(impression.to_json());
    lines.extend(malformed.iter().cloned());
    let jsonl = f.dir.path().join("events.jsonl");
    write_jsonl(&jsonl, &lines);
    f.produce_from(&jsonl);

    let summary = f.stream(&[]);
    assert_eq!(reported(&summary, "repeated clicks"), 1, "{summary}");
    assert_eq!(reported(&summary, "repeated impressions"), 1, "{summary}");
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

/// Every bucket row (not all-time) kept in the store: its IST hour.
fn bucket_hours(store: &str) -> Vec<i64> {
    use slotbandit::store::{open_store, PosteriorStore};
    let store: Box<dyn PosteriorStore> = open_store(store, false).unwrap();
    store
        .shards(&|_, _| true)
        .unwrap()
        .into_iter()
        .flat_map(|s| s.rows)
        .map(|(k, _)| k.bucket)
        .filter(|&b| b != slotbandit::model::ALL_TIME)
        .collect()
}

#[test]
fn a_short_retention_folds_as_time_moves_and_kill_9_loses_and_doubles_nothing() {
    use crate::common::ist_hour;
    use rand::{RngExt, SeedableRng};
    use std::process::{Command, Stdio};
    use std::time::Duration;

    let f = Fixture::new("--events 60000 --days 3 --tenants 2 --cities 5 --banners 4 --seed 15");
    let files = list_parquet_files(&f.data).unwrap();
    let first_day: Vec<PathBuf> = files
        .iter()
        .filter(|p| p.to_string_lossy().contains("dt=2026-11-01"))
        .cloned()
        .collect();
    assert!(!first_day.is_empty() && first_day.len() < files.len());
    for file in &first_day {
        f.produce_from(file);
    }
    let report = f.stream(&["--retention-hours", "6", "-w", "2"]);
    // A day of hours went through a job that keeps six: the older ones left its memory.
    assert!(
        report.contains("expired bucket rows released from memory"),
        "{report}"
    );
    assert!(
        reported(&report, "expired bucket rows released") > 0,
        "{report}"
    );
    let early = events_of(&first_day);
    assert_eq!(f.counts(), recount(&early));
    let early_hour = early.iter().map(ist_hour).max().unwrap();
    let kept = bucket_hours(&f.store);
    assert!(kept.iter().all(|&h| h >= early_hour - 6 - 1), "{kept:?}");

    // The rest of the history arrives; the job is killed at random moments while it counts.
    for file in files.iter().filter(|p| !first_day.contains(p)) {
        f.produce_from(file);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(15);
    for _ in 0..4 {
        let mut job = Command::new(env!("CARGO_BIN_EXE_slotbandit"))
            .args(["stream", "--log", &f.log, "--store", &f.store])
            .args(["--epoch-ms", "20", "-w", "2", "--retention-hours", "6"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(200..1500)));
        job.kill().unwrap(); // SIGKILL
        job.wait().unwrap();
    }
    f.stream(&["--retention-hours", "6", "-w", "2"]);
    let events = f.events();
    assert_eq!(f.counts(), recount(&events), "all-time after the kills");
    let now = events.iter().map(|e| e.ts).max().unwrap();
    let now_arg = slotbandit::time::format_utc(now);
    for minutes in [60i64, 180, 360] {
        let from = now.timestamp() - minutes * 60 + 19_800;
        let first_hour = from.div_euclid(3600) + i64::from(from.rem_euclid(3600) != 0);
        assert_eq!(
            posteriors(
                &f.store,
                &["--window-minutes", &minutes.to_string(), "--now", &now_arg]
            ),
            recount(events.iter().filter(|e| ist_hour(e) >= first_hour)),
            "{minutes} minutes"
        );
    }
    // The hours of the first day were folded into the all-time rows as time moved on; a shard
    // expires its old hours when it is next written, so one written a little before the end
    // may keep an hour or two more than the horizon.
    let now_hour = (now.timestamp() + 19_800).div_euclid(3600);
    let kept = bucket_hours(&f.store);
    assert!(kept.iter().all(|&h| h >= now_hour - 6 - 2), "{kept:?}");
    assert!(kept.contains(&now_hour));
    let store = slotbandit::store::open_store(&f.store, false).unwrap();
    assert_eq!(store.retention().unwrap().unwrap().hours(), 6);
}

/// A Kafka topic (created with `partitions`) and an embedded store in a temp folder.
fn kafka_fixture(broker: &str, prefix: &str, gen_flags: &str) -> Fixture {
    let mut f = Fixture::new(gen_flags);
    f.log = format!(
        "kafka://{broker}/{}?partitions=4",
        crate::common::unique_name(prefix).replace('_', "-")
    );
    f
}

#[test]
fn events_from_kafkas_own_console_producer_are_counted() {
    let Some(broker) = crate::common::service("SLOTBANDIT_KAFKA") else {
        return;
    };
    let f = kafka_fixture(
        &broker,
        "console",
        "--events 3000 --days 1 --tenants 2 --cities 3 --banners 3 --seed 15",
    );
    // Creates the topic with its partitions before the console producer writes to it.
    let empty = f.dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    f.produce_from(&empty);
    let topic = f.log.rsplit_once('/').unwrap().1.split('?').next().unwrap();
    let events = f.events();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services/kafka.sh");
    let mut console = std::process::Command::new(script)
        .args(["run-class", "org.apache.kafka.tools.ConsoleProducer"])
        .args(["--bootstrap-server", &broker, "--topic", topic])
        .args(["--reader-property", "parse.key=true"])
        .args(["--reader-property", "key.separator=\t"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = std::io::BufWriter::new(console.stdin.take().unwrap());
        for e in &events {
            writeln!(
                stdin,
                "{}\t{}",
                slotbandit::source::event_key(e),
                e.to_json()
            )
            .unwrap();
        }
    }
    let out = console.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let summary = f.stream(&[]);
    assert_eq!(
        reported(&summary, "counted"),
        events.len() as u64,
        "{summary}"
    );
    assert_eq!(f.counts(), recount(&events));
}

#[test]
fn ten_thousand_malformed_among_a_million_good_all_reach_the_dead_letter_topic() {
    let Some(broker) = crate::common::service("SLOTBANDIT_KAFKA") else {
        return;
    };
    let f = kafka_fixture(
        &broker,
        "dlq",
        "--events 980000 --days 3 --tenants 2 --cities 8 --banners 5 --seed 16",
    );
    let events = f.events();
    assert!(events.len() >= 1_000_000, "{} events", events.len());
    let kinds = [
        |i: usize| format!("{{\"event_id\":\"bad{i}\""),
        |i: usize| {
            format!(
                r#"{{"event_id":"bad{i}","kind":"view","tenant":"ajio","slot":"hero","city":"pune","banner":"b1","ts":"2026-01-01T00:00:00Z"}}"#
            )
        },
        |i: usize| {
            format!(
                r#"{{"event_id":"bad{i}","kind":"click","tenant":"ajio","slot":"hero","banner":"b1","ts":"2026-01-01T00:00:00Z"}}"#
            )
        },
        |i: usize| {
            format!(
                r#"{{"event_id":"bad{i}","kind":"click","tenant":"ajio","slot":"hero","city":"पुणे","banner":"b1","ts":"2026-01-01T00:00:00Z"}}"#
            )
        },
        |i: usize| {
            format!(
                r#"{{"event_id":"bad{i}","kind":"click","tenant":"ajio","slot":"hero","city":"pune","banner":"b1","ts":"yesterday"}}"#
            )
        },
        |i: usize| {
            format!(
                r#"{{"event_id":"bad{i}","kind":"click","tenant":"ajio","slot":"hero","city":"pune","banner":"b1","ts":"2026-01-01T00:00:00Z","referrer":"{}"}}"#,
                "r".repeat(17_000)
            )
        },
    ];
    let mut lines = Vec::with_capacity(events.len() + 10_000);
    let every = events.len() / 10_000;
    let mut bad = 0;
    for (i, e) in events.iter().enumerate() {
        lines.push(e.to_json());
        if i % every == every - 1 && bad < 10_000 {
            lines.push(kinds[bad % kinds.len()](bad));
            bad += 1;
        }
    }
    assert_eq!(bad, 10_000);
    let jsonl = f.dir.path().join("mixed.jsonl");
    write_jsonl(&jsonl, &lines);
    f.produce_from(&jsonl);

    let summary = f.stream(&["-w", "2"]);
    assert_eq!(reported(&summary, "dead letters"), 10_000, "{summary}");
    assert_eq!(
        reported(&summary, "counted"),
        events.len() as u64,
        "{summary}"
    );
    assert_eq!(f.counts(), recount(&events));
    let letters = slotbandit::source::dead_letters(&f.log).unwrap();
    assert_eq!(letters.len(), 10_000);
    let mut ids: Vec<String> = letters
        .iter()
        .map(|l| {
            assert!(!l.reason.is_empty());
            let payload = String::from_utf8_lossy(&l.payload);
            let id = payload.split('"').nth(3).unwrap_or_default().to_string();
            match id.trim_start_matches("bad").parse::<usize>().unwrap() % kinds.len() {
                0 => assert!(
                    l.reason.contains("JSON") || l.reason.contains("json"),
                    "{}",
                    l.reason
                ),
                1 => assert!(l.reason.contains("kind"), "{}", l.reason),
                2 | 3 => assert!(l.reason.contains("city"), "{}", l.reason),
                4 => assert!(l.reason.contains("ts"), "{}", l.reason),
                _ => assert!(l.reason.contains("16"), "{}", l.reason),
            }
            id
        })
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 10_000, "every malformed message once");
}

/// The value of a Prometheus sample in the text format.
fn sample<T: std::str::FromStr>(text: &str, name: &str) -> Option<T> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn the_running_job_reports_its_counts_as_prometheus_metrics() {
    let f = Fixture::new("--events 3000 --days 1 --tenants 1 --cities 3 --banners 3 --seed 17");
    let events = f.events();
    let mut lines: Vec<String> = events.iter().map(Event::to_json).collect();
    lines.extend([
        "{".to_string(),
        "[]".to_string(),
        "{\"kind\":1}".to_string(),
    ]);
    let jsonl = f.dir.path().join("events.jsonl");
    write_jsonl(&jsonl, &lines);
    let clicks = events.iter().filter(|e| e.kind == EventKind::Click).count() as u64;
    assert!(clicks > 0, "the fixture has clicks");
    let produced = std::time::Instant::now();
    f.produce_from(&jsonl);
    let addr = format!("127.0.0.1:{}", crate::common::free_port());
    let mut job = std::process::Command::new(env!("CARGO_BIN_EXE_slotbandit"))
        .args(["stream", "--log", &f.log, "--store", &f.store])
        .args(["--epoch-ms", "50", "--metrics-listen", &addr])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://{addr}/metrics");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut last = String::new();
    let seen = loop {
        if let Ok(text) = reqwest::blocking::get(&url).and_then(|r| r.text()) {
            let counted = sample(&text, "slotbandit_stream_events_counted_total");
            let dead = sample(&text, "slotbandit_stream_dead_letters_total");
            let timed = sample(&text, "slotbandit_stream_click_to_store_seconds_count");
            if counted == Some(events.len() as u64) && dead == Some(3) && timed == Some(clicks) {
                // Every click was appended after `produced`, so none can have waited longer.
                let total = sample::<f64>(&text, "slotbandit_stream_click_to_store_seconds_sum")
                    .expect("the latency sum is exported");
                let waited = produced.elapsed().as_secs_f64();
                assert!(
                    (0.0..=waited * clicks as f64).contains(&total),
                    "{clicks} clicks waited {total} s in all, but only {waited} s have passed"
                );
                break true;
            }
            last = text;
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(seen, "metrics never showed every event counted:\n{last}");
    // Once everything is counted the job reports itself caught up on every partition it reads.
    let caught_up = loop {
        let text = reqwest::blocking::get(&url).unwrap().text().unwrap();
        let lags: Vec<i64> = text
            .lines()
            .filter(|l| l.starts_with("slotbandit_stream_partition_lag_records{partition="))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        let age = sample::<f64>(
            &text,
            "slotbandit_stream_oldest_uncounted_event_age_seconds",
        );
        let stored_at = sample::<f64>(
            &text,
            "slotbandit_stream_last_epoch_stored_timestamp_seconds",
        );
        let now = chrono::Utc::now().timestamp() as f64;
        if !lags.is_empty() && lags.iter().all(|&l| l == 0) && age == Some(0.0) {
            let stored_at = stored_at.expect("the last stored epoch's time is exported");
            assert!(
                (now - 60.0..=now + 1.0).contains(&stored_at),
                "{stored_at} vs {now}"
            );
            break true;
        }
        last = text;
        if std::time::Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let ready = reqwest::blocking::get(format!("http://{addr}/readyz")).unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.text().unwrap(), "ready");
    job.kill().unwrap();
    job.wait().unwrap();
    assert!(
        caught_up,
        "the lag never came to 0 on every partition:\n{last}"
    );
}

#[test]
fn a_job_further_behind_than_its_bound_is_not_ready() {
    let f = Fixture::new("--events 400 --days 1 --tenants 1 --cities 3 --banners 3 --seed 19");
    f.produce_from(&f.data);
    let addr = format!("127.0.0.1:{}", crate::common::free_port());
    // The first epoch reads for a minute before anything is stored: the job stays behind.
    let mut job = std::process::Command::new(env!("CARGO_BIN_EXE_slotbandit"))
        .args(["stream", "--log", &f.log, "--store", &f.store])
        .args(["--epoch-ms", "60000", "--metrics-listen", &addr])
        .args(["--ready-max-lag", "10"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://{addr}/readyz");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut last = None;
    let behind = loop {
        if let Ok(r) = reqwest::blocking::get(&url) {
            let status = r.status();
            let body = r.text().unwrap();
            assert_eq!(status, 503, "ready while nothing is stored: {body}");
            if body.starts_with("behind: partition") {
                break true;
            }
            last = Some(body);
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    job.kill().unwrap();
    job.wait().unwrap();
    assert!(behind, "never reported behind; last answer {last:?}");
}

#[test]
fn two_processes_on_kafka_and_cassandra_count_what_one_process_counts() {
    let (Some(broker), Some(cassandra)) = (
        crate::common::service("SLOTBANDIT_KAFKA"),
        crate::common::service("SLOTBANDIT_CASSANDRA"),
    ) else {
        return;
    };
    let f = kafka_fixture(
        &broker,
        "cluster",
        "--events 60000 --days 2 --tenants 2 --cities 7 --banners 4 --seed 18",
    );
    f.produce_from(&f.data);
    let events = f.events();
    let store_of = |name: &str| {
        let store = format!(
            "cassandra://{cassandra}/{}",
            crate::common::unique_name(name)
        );
        ok(slotbandit(&["schema", "apply", "--store", &store]));
        store
    };

    let one = store_of("one");
    ok(slotbandit(&[
        "stream",
        "--log",
        &f.log,
        "--store",
        &one,
        "--stop-at-end",
        "-w",
        "2",
    ]));

    let two = store_of("two");
    let hosts = crate::common::hosts_file(f.dir.path(), 2);
    let processes: Vec<_> = (0..2)
        .map(|p| {
            std::process::Command::new(env!("CARGO_BIN_EXE_slotbandit"))
                .args(["stream", "--log", &f.log, "--store", &two, "--stop-at-end"])
                .args(["-w", "2", "-n", "2", "-p", &p.to_string()])
                .arg("-h")
                .arg(&hosts)
                .env("RUST_LOG", "warn")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for p in processes {
        let out = p.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let expected = recount(&events);
    assert_eq!(posteriors(&one, &[]), expected);
    assert_eq!(posteriors(&two, &[]), expected);
}

/// A click of request `request` on banner b1 at `minutes` from `now`, appended to the topic with
/// that instant as its Kafka timestamp, as if it had been appended then.
fn append_click_at(
    producer: &rdkafka::producer::BaseProducer,
    topic: &str,
    event_id: &str,
    request: &str,
    at: chrono::DateTime<chrono::Utc>,
) {
    use rdkafka::producer::BaseRecord;
    let click = Event {
        event_id: event_id.to_string(),
        kind: EventKind::Click,
        tenant: "ajio".into(),
        slot: "hero".into(),
        city: "pune".into(),
        banner: "b1".into(),
        ts: at,
        customer_id: None,
        referrer: None,
        request_id: Some(request.to_string()),
        decision: Default::default(),
    };
    let key = slotbandit::source::event_key(&click);
    let payload = click.to_json();
    producer
        .send(
            BaseRecord::to(topic)
                .key(&key)
                .payload(&payload)
                .timestamp(at.timestamp_millis()),
        )
        .map_err(|(e, _)| e)
        .unwrap();
}

#[test]
fn a_click_replayed_two_hours_later_counts_once_with_the_defaults_and_after_a_restart() {
    use rdkafka::producer::{BaseProducer, Producer};
    let Some(broker) = crate::common::service("SLOTBANDIT_KAFKA") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let topic = crate::common::unique_name("replay").replace('_', "-");
    let log = format!("kafka://{broker}/{topic}?partitions=1");
    let store = format!("embedded:{}", dir.path().join("s.redb").display());
    slotbandit::source::open_log(&log).unwrap();
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker)
        .create()
        .unwrap();
    let now = chrono::Utc::now();
    let ago = |minutes: i64| now - chrono::Duration::minutes(minutes);
    // r1 and r6 two hours ago, then clicks that move the newest event time past an hour after
    // them, then r1 again: the same signed request_id, replayed within its token's day.
    for (id, request, at) in [
        ("c1", "r1", ago(120)),
        ("c6", "r6", ago(120)),
        ("c2", "r2", ago(90)),
        ("c3", "r3", ago(60)),
        ("c4", "r4", ago(30)),
        ("c1-again", "r1", now),
    ] {
        append_click_at(&producer, &topic, id, request, at);
    }
    producer.flush(std::time::Duration::from_secs(30)).unwrap();
    let stream = || crate::common::stream_to_end(&log, &store, 50, &[]);
    let clicks = |store: &str| {
        posteriors(store, &[])
            .get(&("ajio".into(), "hero".into(), "pune".into(), "b1".into()))
            .copied()
    };

    let first = stream();
    assert_eq!(reported(&first, "repeated clicks"), 1, "{first}");
    assert_eq!(clicks(&store), Some((0, 5)));

    // After a restart the job knows r6 only by re-reading the log appended two hours ago.
    append_click_at(&producer, &topic, "c6-again", "r6", chrono::Utc::now());
    producer.flush(std::time::Duration::from_secs(30)).unwrap();
    let second = stream();
    assert_eq!(reported(&second, "counted"), 0, "{second}");
    assert_eq!(reported(&second, "repeated clicks"), 1, "{second}");
    assert_eq!(clicks(&store), Some((0, 5)));
}
