//! The Kafka event log against the real broker (`SLOTBANDIT_KAFKA`, see scripts/services/):
//! Java's console producer and our producer agree on partitions, our reader reads what Java
//! wrote, appends are acknowledged, offsets by time, dead letters, and clear errors.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{ok, service, slotbandit, unique_name};

use chrono::{TimeZone, Utc};
use slotbandit::model::{Event, EventKind, Offset, Partition};
use slotbandit::source::{
    dead_letters, event_key, open_log, partition_for_key, EventLog, LogError, LogRecord,
};

const CITIES: [&str; 9] = [
    "pune", "delhi", "mumbai", "chennai", "kolkata", "indore", "goa", "surat", "agra",
];

fn event(tag: &str, i: usize) -> Event {
    Event {
        event_id: format!("{tag}-{i}"),
        kind: if i.is_multiple_of(4) {
            EventKind::Click
        } else {
            EventKind::Impression
        },
        tenant: ["ajio", "tira", "jiomart"][i % 3].into(),
        slot: "hero".into(),
        city: CITIES[i % CITIES.len()].into(),
        banner: format!("b{}", i % 6),
        ts: Utc.with_ymd_and_hms(2026, 11, 28, 10, 0, 0).unwrap()
            + chrono::Duration::seconds(i as i64),
        customer_id: None,
        referrer: Some("ads".into()),
        request_id: None,
    }
}

fn topic_url(broker: &str, prefix: &str, partitions: i32) -> String {
    // Topic names allow [A-Za-z0-9._-]; unique_name joins with underscores.
    format!(
        "kafka://{broker}/{}?partitions={partitions}",
        unique_name(prefix)
    )
}

/// Reads from offset 0 of every partition until `n` records arrived.
fn read_n(log: &dyn EventLog, n: usize) -> Vec<LogRecord> {
    let start = log
        .partitions()
        .unwrap()
        .into_iter()
        .map(|p| (p, Offset(0)))
        .collect();
    let mut reader = log.reader(&start).unwrap();
    let mut out = Vec::new();
    let give_up = Instant::now() + Duration::from_secs(120);
    while out.len() < n {
        assert!(
            Instant::now() < give_up,
            "read {} of {n} records",
            out.len()
        );
        out.extend(reader.poll(10_000, Duration::from_millis(500)).unwrap());
    }
    assert!(reader
        .poll(10_000, Duration::from_millis(300))
        .unwrap()
        .is_empty());
    out
}

fn check_dense(records: &[LogRecord]) {
    let mut next: HashMap<Partition, Offset> = HashMap::new();
    for r in records {
        let expected = next.entry(r.partition).or_insert(Offset(0));
        assert_eq!(r.offset, *expected, "partition {}", r.partition);
        *expected += 1;
    }
}

#[test]
fn keys_from_kafkas_console_producer_land_where_ours_do_and_we_read_its_events() {
    let Some(broker) = service("SLOTBANDIT_KAFKA") else {
        return;
    };
    let partitions = 6;
    let url = topic_url(&broker, "console", partitions);
    let log = open_log(&url).unwrap();
    let topic = url.rsplit('/').next().unwrap().split('?').next().unwrap();
    let java: Vec<Event> = (0..60).map(|i| event("java", i)).collect();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services/kafka.sh");
    let mut console = Command::new(script)
        .args([
            "run-class",
            "org.apache.kafka.tools.ConsoleProducer",
            "--bootstrap-server",
            &broker,
            "--topic",
            topic,
            "--reader-property",
            "parse.key=true",
            "--reader-property",
            "key.separator=\t",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kafka.sh runs");
    {
        let mut stdin = console.stdin.take().unwrap();
        for e in &java {
            writeln!(stdin, "{}\t{}", event_key(e), e.to_json()).unwrap();
        }
    }
    let out = console.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let ours: Vec<Event> = (0..60).map(|i| event("ours", i)).collect();
    log.append(&ours).unwrap();

    let records = read_n(log.as_ref(), java.len() + ours.len());
    check_dense(&records);
    let mut partitions_of: BTreeMap<String, BTreeSet<(bool, Partition)>> = BTreeMap::new();
    let mut java_read = Vec::new();
    for r in &records {
        let e = Event::from_json(&r.payload).unwrap();
        let key = String::from_utf8(r.key.clone().unwrap()).unwrap();
        assert_eq!(key, event_key(&e));
        assert_eq!(r.partition, partition_for_key(key.as_bytes(), partitions));
        let by_java = e.event_id.starts_with("java-");
        partitions_of
            .entry(key)
            .or_default()
            .insert((by_java, r.partition));
        if by_java {
            java_read.push(e);
        }
    }
    // Every key was produced by both, and each landed in one partition, the same for both.
    for (key, seen) in &partitions_of {
        let parts: BTreeSet<Partition> = seen.iter().map(|(_, p)| *p).collect();
        let producers: BTreeSet<bool> = seen.iter().map(|(j, _)| *j).collect();
        assert_eq!(parts.len(), 1, "{key}: {seen:?}");
        assert_eq!(producers.len(), 2, "{key}: {seen:?}");
    }
    java_read.sort_by_key(|e| e.event_id[5..].parse::<usize>().unwrap());
    assert_eq!(java_read, java);
}

#[test]
fn appends_are_read_back_densely_and_offsets_by_time_split_them() {
    let Some(broker) = service("SLOTBANDIT_KAFKA") else {
        return;
    };
    let url = topic_url(&broker, "append", 3);
    let log = open_log(&url).unwrap();
    assert_eq!(
        log.partitions().unwrap(),
        [Partition(0), Partition(1), Partition(2)]
    );
    let early: Vec<Event> = (0..3000).map(|i| event("early", i)).collect();
    for chunk in early.chunks(1000) {
        log.append(chunk).unwrap();
    }
    let ends_early = log.end_offsets().unwrap();
    assert_eq!(ends_early.values().map(|o| o.0).sum::<i64>(), 3000);
    std::thread::sleep(Duration::from_millis(10));
    let middle = Utc::now();
    std::thread::sleep(Duration::from_millis(10));
    let late: Vec<Event> = (0..500).map(|i| event("late", i)).collect();
    log.append(&late).unwrap();
    log.append_raw(&[(None, b"not an event")]).unwrap();
    assert_eq!(log.offsets_for_time(middle).unwrap(), ends_early);
    let future = Utc::now() + chrono::Duration::hours(1);
    assert_eq!(
        log.offsets_for_time(future).unwrap(),
        log.end_offsets().unwrap()
    );

    let records = read_n(log.as_ref(), 3501);
    check_dense(&records);
    let mut ids: Vec<String> = records
        .iter()
        .filter_map(|r| Event::from_json(&r.payload).ok())
        .map(|e| e.event_id)
        .collect();
    ids.sort();
    let mut want: Vec<String> = early
        .iter()
        .chain(&late)
        .map(|e| e.event_id.clone())
        .collect();
    want.sort();
    assert_eq!(ids, want);

    // A reader from the offsets of `middle` sees only what came after; asking it for no
    // records hands over none and takes none away.
    let mut reader = log.reader(&ends_early).unwrap();
    assert!(reader
        .poll(0, Duration::from_millis(300))
        .unwrap()
        .is_empty());
    let mut after = Vec::new();
    let give_up = Instant::now() + Duration::from_secs(60);
    while after.len() < 501 {
        assert!(Instant::now() < give_up);
        after.extend(reader.poll(1000, Duration::from_millis(300)).unwrap());
    }
    assert!(after
        .iter()
        .all(|r| !r.payload.starts_with(b"{\"event_id\":\"early-")));
}

#[test]
fn dead_letters_go_to_the_dlq_topic_with_the_reason() {
    let Some(broker) = service("SLOTBANDIT_KAFKA") else {
        return;
    };
    let url = topic_url(&broker, "dlq", 2);
    let log = open_log(&url).unwrap();
    log.append_raw(&[(Some(b"ajio|pune"), b"{bad"), (None, b"\xff")])
        .unwrap();
    let records = read_n(log.as_ref(), 2);
    let letters: Vec<(LogRecord, String)> = records
        .iter()
        .map(|r| (r.clone(), format!("not valid JSON at {}", r.offset)))
        .collect();
    log.dead_letter(&letters).unwrap();
    let mut kept = dead_letters(&url).unwrap();
    kept.sort_by_key(|l| (l.partition, l.offset));
    let mut sent = letters.clone();
    sent.sort_by_key(|(r, _)| (r.partition, r.offset));
    assert_eq!(kept.len(), 2);
    for ((record, reason), letter) in sent.iter().zip(&kept) {
        assert_eq!(&letter.reason, reason);
        assert_eq!(
            (letter.partition, letter.offset, letter.timestamp_ms),
            (record.partition, record.offset, record.timestamp_ms)
        );
        assert_eq!(letter.key, record.key);
        assert_eq!(letter.payload, record.payload);
    }
}

#[test]
fn missing_topics_unknown_offsets_and_absent_brokers_are_clear_errors() {
    let Some(broker) = service("SLOTBANDIT_KAFKA") else {
        return;
    };
    let missing = format!("kafka://{broker}/{}", unique_name("missing"));
    let err = open_log(&missing).err().unwrap().to_string();
    assert!(err.contains("does not exist"), "{err}");
    assert!(err.contains("?partitions=N"), "{err}");

    let url = topic_url(&broker, "range", 1);
    let log = open_log(&url).unwrap();
    let err = open_log(&url.replace("partitions=1", "partitions=4"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("has 1 partitions"), "{err}");
    log.append(&[event("r", 0)]).unwrap();
    let mut reader = log
        .reader(&BTreeMap::from([(Partition(0), Offset(5))]))
        .unwrap();
    let give_up = Instant::now() + Duration::from_secs(60);
    let err = loop {
        assert!(Instant::now() < give_up, "no out-of-range error");
        match reader.poll(10, Duration::from_millis(500)) {
            Ok(batch) => assert!(batch.is_empty()),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(
            err,
            LogError::OffsetOutOfRange {
                partition: Partition(0),
                offset: Offset(5),
                earliest: Offset(0),
                end: Offset(1),
                ..
            }
        ),
        "{err}"
    );

    // Nothing listens on port 1: a bounded wait, then an error naming the broker and topic.
    let err = open_log("kafka://127.0.0.1:1/nowhere?timeout_ms=1000")
        .err()
        .unwrap();
    assert!(matches!(err, LogError::Unavailable { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(text.contains("nowhere"), "{text}");
}

#[test]
fn produce_replays_json_lines_into_a_topic() {
    let Some(broker) = service("SLOTBANDIT_KAFKA") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("events.jsonl");
    let events: Vec<Event> = (0..5000).map(|i| event("cli", i)).collect();
    let mut text: String = events.iter().map(|e| e.to_json() + "\n").collect();
    text.push_str("{\"kind\":\"view\"}\n");
    std::fs::write(&input, text).unwrap();
    let url = topic_url(&broker, "produce", 4);
    let out = ok(slotbandit(&[
        "produce",
        "--log",
        &url,
        "--from",
        input.to_str().unwrap(),
        "--batch",
        "1000",
    ]));
    assert!(out.contains("produced 5001 messages"), "{out}");
    assert!(out.contains("partitions: 4"), "{out}");
    let log = open_log(&url).unwrap();
    let records = read_n(log.as_ref(), 5001);
    let unkeyed: Vec<&LogRecord> = records.iter().filter(|r| r.key.is_none()).collect();
    assert_eq!(unkeyed.len(), 1);
    assert_eq!(unkeyed[0].payload, b"{\"kind\":\"view\"}");
}
