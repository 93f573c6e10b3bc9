//! The file event log as processes use it: `slotbandit produce` processes appending at once
//! while a reader tails, a producer killed mid-run, torn tails, damaged frames, reopening, and
//! the dead-letter log as a file log of its own. The `EventLog` contract itself is checked in
//! tests/it/event_log.rs.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{gen, ok, slotbandit};
use crate::event_log::{check_layout, event, from_zero};

use slotbandit::model::parquet::{list_parquet_files, read_events};
use slotbandit::model::{Event, Offset, Partition};
use slotbandit::source::{event_key, open_log, EventLog, LogError, LogRecord};

/// A JSON-lines file of `n` events of one producer.
fn jsonl(dir: &Path, producer: &str, n: usize) -> PathBuf {
    let path = dir.join(format!("{producer}.jsonl"));
    let text: String = (0..n)
        .map(|i| event(producer, i).to_json() + "\n")
        .collect();
    fs::write(&path, text).unwrap();
    path
}

fn produce(url: &str, from: &Path, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_slotbandit"))
        .args(["produce", "--log", url, "--from", from.to_str().unwrap()])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs")
}

/// Everything the log holds from the start, read until a poll comes back empty.
fn read_everything(log: &dyn EventLog) -> Vec<LogRecord> {
    let mut reader = log.reader(&from_zero(log)).unwrap();
    let mut out = Vec::new();
    loop {
        let batch = reader.poll(5000, Duration::from_millis(50)).unwrap();
        if batch.is_empty() {
            return out;
        }
        out.extend(batch);
    }
}

fn segment_count(dir: &Path) -> usize {
    fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("partition-"))
        .map(|p| fs::read_dir(p.path()).unwrap().count())
        .sum()
}

#[test]
fn two_producer_processes_and_a_tailing_reader_see_every_event_once_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let url = format!("file:{}?partitions=3&segment_mb=1", dir.display());
    let n = 25_000;
    let a = jsonl(tmp.path(), "a", n);
    let b = jsonl(tmp.path(), "b", n);
    let log = open_log(&url).unwrap();
    let mut children = vec![
        produce(&url, &a, &["--batch", "300"]),
        produce(&url, &b, &["--batch", "700"]),
    ];
    let mut reader = log.reader(&from_zero(log.as_ref())).unwrap();
    let mut records = Vec::new();
    let give_up = Instant::now() + Duration::from_secs(600);
    while records.len() < 2 * n {
        assert!(
            Instant::now() < give_up,
            "read {} of {} records",
            records.len(),
            2 * n
        );
        records.extend(reader.poll(1000, Duration::from_millis(100)).unwrap());
    }
    for child in children.drain(..) {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(reader
        .poll(1000, Duration::from_millis(100))
        .unwrap()
        .is_empty());
    check_layout(&records, 3);
    // Each event exactly once, with its own key, and each producer's events in its order within
    // a partition.
    let mut seen = HashMap::new();
    let mut last_seq: HashMap<(Partition, String), usize> = HashMap::new();
    for r in &records {
        let e = Event::from_json(&r.payload).unwrap();
        assert_eq!(r.key.as_deref(), Some(event_key(&e).as_bytes()));
        let (producer, seq) = e.event_id.split_once('-').unwrap();
        let seq: usize = seq.parse().unwrap();
        assert_eq!(e, event(producer, seq));
        assert!(seen.insert(e.event_id.clone(), r.offset).is_none());
        if let Some(prev) = last_seq.insert((r.partition, producer.to_string()), seq) {
            assert!(prev < seq, "{producer}: {prev} before {seq}");
        }
    }
    assert_eq!(seen.len(), 2 * n);
    let ends = log.end_offsets().unwrap();
    assert_eq!(ends.values().map(|o| o.0).sum::<i64>(), 2 * n as i64);
    assert!(segment_count(&dir) > 3, "segments rolled");
    // A reader in a fresh process view sees the same log.
    let again = open_log(&format!("file:{}", dir.display())).unwrap();
    let mut reread = read_everything(again.as_ref());
    let mut first = records.clone();
    for v in [&mut reread, &mut first] {
        v.sort_by_key(|r| (r.partition, r.offset));
    }
    assert_eq!(reread, first);
}

#[test]
fn a_producer_killed_mid_run_leaves_a_log_the_next_writer_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let url = format!("file:{}?partitions=2", dir.display());
    let big = jsonl(tmp.path(), "k", 300_000);
    let log = open_log(&url).unwrap();
    let mut child = produce(&url, &big, &["--batch", "2000"]);
    let give_up = Instant::now() + Duration::from_secs(300);
    while log
        .end_offsets()
        .unwrap()
        .values()
        .map(|o| o.0)
        .sum::<i64>()
        < 10_000
    {
        assert!(Instant::now() < give_up, "the producer appended nothing");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = read_everything(log.as_ref());
    check_layout(&before, 2);
    let extra: Vec<Event> = (0..100).map(|i| event("after", i)).collect();
    let next_writer = open_log(&url).unwrap();
    next_writer.append(&extra).unwrap();
    let after = read_everything(log.as_ref());
    check_layout(&after, 2);
    assert_eq!(after.len(), before.len() + extra.len());
    let tail: Vec<Event> = after
        .iter()
        .filter(|r| r.payload.starts_with(b"{\"event_id\":\"after-"))
        .map(|r| Event::from_json(&r.payload).unwrap())
        .collect();
    assert_eq!(tail.len(), extra.len());
}

fn only_segment(dir: &Path) -> PathBuf {
    let seg = dir.join("partition-0");
    let mut files: Vec<PathBuf> = fs::read_dir(&seg)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1);
    files.remove(0)
}

fn payloads(records: &[LogRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8(r.payload.clone()).unwrap())
        .collect()
}

fn raw(log: &dyn EventLog, texts: &[&str]) {
    let messages: Vec<(Option<&[u8]>, &[u8])> =
        texts.iter().map(|t| (None, t.as_bytes())).collect();
    log.append_raw(&messages).unwrap();
}

#[test]
fn a_torn_tail_is_never_read_and_the_next_writer_truncates_it() {
    for tear in ["cut", "zeros"] {
        let tmp = tempfile::tempdir().unwrap();
        let url = format!("file:{}?partitions=1", tmp.path().display());
        let log = open_log(&url).unwrap();
        raw(log.as_ref(), &["one", "two"]);
        let mut tailing = log
            .reader(&BTreeMap::from([(Partition(0), Offset(0))]))
            .unwrap();
        raw(log.as_ref(), &["three", "four"]);
        let segment = only_segment(tmp.path());
        let len = fs::metadata(&segment).unwrap().len();
        let file = fs::OpenOptions::new().write(true).open(&segment).unwrap();
        match tear {
            // The second append was cut short by a crash ...
            "cut" => file.set_len(len - 3).unwrap(),
            // ... or its bytes never reached the disk but the file grew.
            _ => {
                let mut bytes = fs::read(&segment).unwrap();
                let keep = bytes.len() - 12;
                bytes[keep..].fill(0);
                fs::write(&segment, &bytes).unwrap();
            }
        }
        drop(file);
        let read = tailing.poll(100, Duration::from_millis(50)).unwrap();
        assert_eq!(payloads(&read), ["one", "two"], "{tear}");
        assert!(tailing
            .poll(100, Duration::from_millis(50))
            .unwrap()
            .is_empty());
        assert_eq!(log.end_offsets().unwrap()[&Partition(0)], Offset(2));
        // The next writer (another process) repairs the tail and continues at offset 2.
        let next_writer = open_log(&url).unwrap();
        raw(next_writer.as_ref(), &["five"]);
        let read = tailing.poll(100, Duration::from_millis(500)).unwrap();
        assert_eq!(payloads(&read), ["five"], "{tear}");
        assert_eq!(read[0].offset, Offset(2));
        assert_eq!(next_writer.end_offsets().unwrap()[&Partition(0)], Offset(3));
    }
}

#[test]
fn a_damaged_committed_frame_is_an_error_not_a_silent_truncation() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("file:{}?partitions=1", tmp.path().display());
    let log = open_log(&url).unwrap();
    raw(log.as_ref(), &["one", "two"]);
    raw(log.as_ref(), &["three"]);
    let segment = only_segment(tmp.path());
    let mut bytes = fs::read(&segment).unwrap();
    let at = bytes.windows(3).position(|w| w == b"one").unwrap();
    bytes[at] = b'O';
    fs::write(&segment, &bytes).unwrap();
    let mut reader = log
        .reader(&BTreeMap::from([(Partition(0), Offset(0))]))
        .unwrap();
    let err = reader.poll(10, Duration::ZERO).unwrap_err();
    assert!(matches!(err, LogError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("committed frames follow"), "{err}");
    let writer = open_log(&url).unwrap();
    let err = writer.append_raw(&[(None, b"four")]).unwrap_err();
    assert!(matches!(err, LogError::Corrupt { .. }), "{err}");
    assert_eq!(fs::read(&segment).unwrap(), bytes, "nothing was truncated");
}

#[test]
fn reopening_keeps_the_options_the_log_was_created_with() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().display();
    let log = open_log(&format!("file:{dir}?partitions=2&retention_hours=24")).unwrap();
    assert_eq!(log.partitions().unwrap(), [Partition(0), Partition(1)]);
    let err = open_log(&format!("file:{dir}?partitions=3"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("partitions=3, but the log in"), "{err}");
    assert!(err.contains("was created with partitions=2"), "{err}");
    let err = open_log(&format!("file:{dir}?retention_hours=1"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("created with retention_hours=24"), "{err}");
    let reopened = open_log(&format!("file:{dir}")).unwrap();
    assert_eq!(reopened.partitions().unwrap(), [Partition(0), Partition(1)]);

    let other = tempfile::tempdir().unwrap();
    fs::write(other.path().join("notes.txt"), "mine").unwrap();
    let err = open_log(&format!("file:{}", other.path().display()))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("is not a file log"), "{err}");
    assert!(err.contains("notes.txt"), "{err}");
}

#[test]
fn the_dead_letter_log_is_a_file_log_of_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("file:{}?partitions=2", tmp.path().display());
    let log = open_log(&url).unwrap();
    log.append_raw(&[(Some(b"ajio|pune"), b"{not json"), (None, b"\xff\xfe")])
        .unwrap();
    let letters: Vec<(LogRecord, String)> = read_everything(log.as_ref())
        .into_iter()
        .map(|r| (r, "bad message".to_string()))
        .collect();
    log.dead_letter(&letters).unwrap();
    let dlq = open_log(&format!("file:{}/dlq", tmp.path().display())).unwrap();
    assert_eq!(
        dlq.end_offsets().unwrap(),
        BTreeMap::from([(Partition(0), Offset(2))])
    );
}

#[test]
fn produce_replays_parquet_history_as_keyed_events() {
    let tmp = tempfile::tempdir().unwrap();
    let history = tmp.path().join("history");
    ok(gen(&history, "--events 3000 --days 2 --seed 5"));
    let url = format!("file:{}", tmp.path().join("log").display());
    let out = ok(slotbandit(&[
        "produce",
        "--log",
        &url,
        "--from",
        history.to_str().unwrap(),
        "--batch",
        "700",
    ]));
    let events: Vec<Event> = list_parquet_files(&history)
        .unwrap()
        .iter()
        .flat_map(|f| read_events(f).unwrap())
        .collect();
    assert!(
        out.contains(&format!("produced {} messages", events.len())),
        "{out}"
    );
    assert!(out.contains("partitions: 4; end offsets: 0="), "{out}");
    let log = open_log(&url).unwrap();
    let records = read_everything(log.as_ref());
    check_layout(&records, 4);
    let mut got: Vec<Event> = records
        .iter()
        .map(|r| {
            let e = Event::from_json(&r.payload).unwrap();
            assert_eq!(r.key.as_deref(), Some(event_key(&e).as_bytes()));
            e
        })
        .collect();
    let mut want = events;
    got.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    want.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    assert_eq!(got, want);
}

#[test]
fn produce_appends_json_lines_as_they_are_and_stops_at_the_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let good = event("g", 1).to_json();
    let lines = [
        good.as_str(),
        "{\"event_id\":\"x\"",
        "",
        "[1,2]",
        &good.replace("\"delhi\"", "\"दिल्ली\""),
        good.as_str(),
    ];
    let input = tmp.path().join("in.jsonl");
    fs::write(&input, lines.join("\r\n")).unwrap();
    let url = format!("file:{}?partitions=2", tmp.path().join("log").display());
    let out = ok(slotbandit(&[
        "produce",
        "--log",
        &url,
        "--from",
        input.to_str().unwrap(),
        "--limit",
        "4",
        "--rate",
        "1000",
    ]));
    assert!(out.contains("produced 4 messages"), "{out}");
    let log = open_log(&url).unwrap();
    let mut records = read_everything(log.as_ref());
    check_layout(&records, 2);
    records.sort_by_key(|r| r.payload.clone());
    let got: Vec<(Option<String>, String)> = records
        .iter()
        .map(|r| {
            (
                r.key.clone().map(|k| String::from_utf8(k).unwrap()),
                String::from_utf8(r.payload.clone()).unwrap(),
            )
        })
        .collect();
    let mut want = vec![
        (Some("tira|delhi".to_string()), good.clone()),
        (None, "{\"event_id\":\"x\"".to_string()),
        (None, "[1,2]".to_string()),
        (None, good.replace("\"delhi\"", "\"दिल्ली\"")),
    ];
    want.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(got, want);
}

#[test]
fn produce_flags_are_validated() {
    let tmp = tempfile::tempdir().unwrap();
    let input = jsonl(tmp.path(), "v", 3);
    for (args, needle) in [
        (vec!["--log", "redis://x"], "must be kafka://"),
        (vec!["--log", "file:/tmp/x?partitions=0"], "partitions"),
        (vec!["--rate", "0"], "positive"),
        (vec!["--limit", "0"], "--limit"),
    ] {
        let mut all = vec!["produce", "--from", input.to_str().unwrap()];
        if !args.contains(&"--log") {
            all.extend(["--log", "file:/nonexistent-dir-for-flags"]);
        }
        all.extend(args);
        let out = slotbandit(&all);
        assert_eq!(out.status.code(), Some(2), "{all:?}");
        let err = crate::common::stderr(&out);
        assert!(err.contains(needle), "{all:?}: {err}");
    }
    let out = slotbandit(&[
        "produce",
        "--log",
        &format!("file:{}", tmp.path().join("l").display()),
        "--from",
        tmp.path().join("missing.jsonl").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(crate::common::stderr(&out).contains("missing.jsonl"));
}
