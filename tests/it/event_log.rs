//! The `EventLog` contract, checked the same way on every backend: each `suite_*` check takes
//! the URL of a fresh log with [`PARTITIONS`] partitions, and `conformance!` runs it on a file log
//! in a temporary folder (`event_log::file::*`) and on a new Kafka topic (`event_log::kafka::*`,
//! skipped without `SLOTBANDIT_KAFKA` unless `SLOTBANDIT_REQUIRE_SERVICES=1`). A new backend
//! proves itself by passing the suite: add a module for it to `conformance!`. What only one
//! backend promises (torn tails, retention, locking, Java clients, broker restarts) is tested in
//! tests/it/filelog.rs and tests/it/kafka.rs, which share the helpers below.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use slotbandit::model::{Event, EventKind, Offset, Partition};
use slotbandit::source::{
    dead_letters, event_key, open_log, partition_for_key, EventLog, LogError, LogRecord,
};

use crate::common::unique_name;

/// The partitions of every log the suite opens.
const PARTITIONS: i32 = 3;

const CITIES: [&str; 9] = [
    "pune", "delhi", "mumbai", "chennai", "kolkata", "indore", "goa", "surat", "agra",
];

/// Event `i` of a run tagged `tag` (its id is `TAG-I`): valid, and spread over 9 keys.
pub fn event(tag: &str, i: usize) -> Event {
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
            + chrono::Duration::milliseconds(i as i64),
        customer_id: None,
        referrer: Some("ads".into()),
        request_id: None,
        decision: Default::default(),
    }
}

/// The URL of a new topic on `broker`, created with `partitions` partitions when first opened.
pub fn kafka_url(broker: &str, prefix: &str, partitions: i32) -> String {
    // Topic names allow [A-Za-z0-9._-]; unique_name joins with underscores.
    format!(
        "kafka://{broker}/{}?partitions={partitions}",
        unique_name(prefix)
    )
}

/// Offset 0 of every partition.
pub fn from_zero(log: &dyn EventLog) -> BTreeMap<Partition, Offset> {
    log.partitions()
        .unwrap()
        .into_iter()
        .map(|p| (p, Offset(0)))
        .collect()
}

/// Reads from `start` until `n` records arrived, then checks that no more come.
pub fn read_n(log: &dyn EventLog, start: &BTreeMap<Partition, Offset>, n: usize) -> Vec<LogRecord> {
    let mut reader = log.reader(start).unwrap();
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
    let more = reader.poll(10_000, Duration::from_millis(300)).unwrap();
    assert!(
        more.is_empty(),
        "{} records more than the {n} expected",
        more.len()
    );
    out
}

/// Checks records read from offset 0 in order: offsets dense from 0 in every partition, and
/// every keyed record in its key's partition.
pub fn check_layout(records: &[LogRecord], partitions: i32) {
    let mut next: HashMap<Partition, Offset> = HashMap::new();
    for r in records {
        let expected = next.entry(r.partition).or_insert(Offset(0));
        assert_eq!(r.offset, *expected, "partition {}", r.partition);
        *expected += 1;
        if let Some(key) = &r.key {
            assert_eq!(r.partition, partition_for_key(key, partitions));
        }
    }
}

fn total(offsets: &BTreeMap<Partition, Offset>) -> i64 {
    offsets.values().map(|o| o.0).sum()
}

/// The events of a run, appended in batches.
fn append_events(log: &dyn EventLog, tag: &str, n: usize, batch: usize) -> Vec<Event> {
    let events: Vec<Event> = (0..n).map(|i| event(tag, i)).collect();
    for chunk in events.chunks(batch) {
        log.append(chunk).unwrap();
    }
    events
}

fn suite_lists_its_partitions_and_starts_empty(url: &str) {
    let log = open_log(url).unwrap();
    let partitions: Vec<Partition> = (0..PARTITIONS).map(Partition).collect();
    assert_eq!(log.partitions().unwrap(), partitions);
    let zeros = from_zero(log.as_ref());
    assert_eq!(log.end_offsets().unwrap(), zeros);
    assert_eq!(log.offsets_for_time(Utc::now()).unwrap(), zeros);
    assert!(dead_letters(url).unwrap().is_empty());
}

fn suite_reads_back_every_event_in_order(url: &str) {
    let log = open_log(url).unwrap();
    let events = append_events(log.as_ref(), "order", 600, 150);
    let records = read_n(log.as_ref(), &from_zero(log.as_ref()), events.len());
    check_layout(&records, PARTITIONS);
    let mut last: HashMap<Partition, usize> = HashMap::new();
    let mut read = Vec::new();
    for r in &records {
        let e = Event::from_json(&r.payload).unwrap();
        assert_eq!(r.key.as_deref(), Some(event_key(&e).as_bytes()));
        let i: usize = e.event_id["order-".len()..].parse().unwrap();
        if let Some(before) = last.insert(r.partition, i) {
            assert!(before < i, "partition {}: {before} before {i}", r.partition);
        }
        read.push(e);
    }
    read.sort_by_key(|e| e.event_id["order-".len()..].parse::<usize>().unwrap());
    assert_eq!(read, events);
}

fn suite_puts_keyed_messages_in_partition_for_key(url: &str) {
    let log = open_log(url).unwrap();
    let keys: Vec<Vec<u8>> = (0..40u8)
        .map(|i| format!("tenant{i}|city{}", i % 7).into_bytes())
        .chain([b"\x00\xff binary".to_vec(), b"ajio|pune".to_vec()])
        .collect();
    let messages: Vec<(Option<&[u8]>, &[u8])> = keys
        .iter()
        .map(|k| (Some(k.as_slice()), &b"m"[..]))
        .collect();
    log.append_raw(&messages).unwrap();
    let records = read_n(log.as_ref(), &from_zero(log.as_ref()), keys.len());
    for r in &records {
        let key = r.key.as_deref().expect("every message was keyed");
        assert_eq!(r.partition, partition_for_key(key, PARTITIONS), "{key:?}");
    }
    let mut read: Vec<Vec<u8>> = records.into_iter().filter_map(|r| r.key).collect();
    let mut sent = keys;
    read.sort();
    sent.sort();
    assert_eq!(read, sent);
}

fn suite_reads_from_a_start_offset(url: &str) {
    let log = open_log(url).unwrap();
    let events = append_events(log.as_ref(), "start", 90, 30);
    let all = read_n(log.as_ref(), &from_zero(log.as_ref()), events.len());
    let ends = log.end_offsets().unwrap();
    let (&p, &end) = ends.iter().max_by_key(|(_, &o)| o).unwrap();
    assert!(end >= Offset(2), "{ends:?}");
    let from = Offset(end.0 / 2);
    let mut reader = log.reader(&BTreeMap::from([(p, from)])).unwrap();
    // Asking for no records hands over none and takes none away.
    assert!(reader
        .poll(0, Duration::from_millis(100))
        .unwrap()
        .is_empty());
    let mut got = Vec::new();
    let give_up = Instant::now() + Duration::from_secs(60);
    while got.len() < (end.0 - from.0) as usize {
        assert!(Instant::now() < give_up, "read {} records", got.len());
        got.extend(reader.poll(1000, Duration::from_millis(300)).unwrap());
    }
    let want: Vec<&LogRecord> = all
        .iter()
        .filter(|r| r.partition == p && r.offset >= from)
        .collect();
    assert_eq!(got.iter().collect::<Vec<_>>(), want);
    // A reader at the end waits for the next record.
    let mut at_end = log.reader(&BTreeMap::from([(p, end)])).unwrap();
    assert!(at_end
        .poll(10, Duration::from_millis(200))
        .unwrap()
        .is_empty());
    let key = want[0].key.clone().unwrap();
    log.append_raw(&[(Some(&key), b"next")]).unwrap();
    let mut next = Vec::new();
    while next.is_empty() {
        assert!(Instant::now() < give_up, "the next record never came");
        next = at_end.poll(10, Duration::from_millis(300)).unwrap();
    }
    assert_eq!((next[0].partition, next[0].offset), (p, end));
    assert_eq!(next[0].payload, b"next");
}

fn suite_end_offsets_count_the_appends(url: &str) {
    let log = open_log(url).unwrap();
    let events = append_events(log.as_ref(), "end", 250, 100);
    let ends = log.end_offsets().unwrap();
    assert_eq!(total(&ends), events.len() as i64);
    let records = read_n(log.as_ref(), &from_zero(log.as_ref()), events.len());
    let mut per_partition: BTreeMap<Partition, Offset> = from_zero(log.as_ref());
    for r in &records {
        per_partition.insert(r.partition, r.offset + 1);
    }
    assert_eq!(ends, per_partition);
}

fn suite_offsets_for_time_split_before_and_after(url: &str) {
    let log = open_log(url).unwrap();
    let before = Utc::now() - chrono::Duration::seconds(1);
    append_events(log.as_ref(), "early", 1000, 200);
    let ends_early = log.end_offsets().unwrap();
    std::thread::sleep(Duration::from_millis(10));
    let middle = Utc::now();
    std::thread::sleep(Duration::from_millis(10));
    let late = append_events(log.as_ref(), "late", 500, 250);
    assert_eq!(
        log.offsets_for_time(before).unwrap(),
        from_zero(log.as_ref())
    );
    assert_eq!(log.offsets_for_time(middle).unwrap(), ends_early);
    let after = Utc::now() + chrono::Duration::hours(1);
    assert_eq!(
        log.offsets_for_time(after).unwrap(),
        log.end_offsets().unwrap()
    );
    // The records from the offsets of `middle` on are exactly the late ones.
    let records = read_n(log.as_ref(), &ends_early, late.len());
    for r in &records {
        assert!(r.payload.starts_with(b"{\"event_id\":\"late-"));
        assert!(r.timestamp_ms >= middle.timestamp_millis());
    }
}

/// The error a reader from `start` meets: at once, or at its first polls.
fn reader_error(log: &dyn EventLog, start: BTreeMap<Partition, Offset>) -> LogError {
    let mut reader = match log.reader(&start) {
        Ok(reader) => reader,
        Err(e) => return e,
    };
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < give_up, "no error reading from {start:?}");
        match reader.poll(10, Duration::from_millis(500)) {
            Ok(batch) => assert!(batch.is_empty(), "read {batch:?}"),
            Err(e) => return e,
        }
    }
}

fn suite_refuses_a_start_past_the_end_or_an_unknown_partition(url: &str) {
    let log = open_log(url).unwrap();
    append_events(log.as_ref(), "range", 30, 30);
    let ends = log.end_offsets().unwrap();
    let (&p, &end) = ends.iter().max_by_key(|(_, &o)| o).unwrap();
    let err = reader_error(log.as_ref(), BTreeMap::from([(p, end + 1)]));
    assert!(
        matches!(
            err,
            LogError::OffsetOutOfRange { partition, offset, earliest: Offset(0), end: e, .. }
                if partition == p && offset == end + 1 && e == end
        ),
        "{err}"
    );
    let unknown = Partition(PARTITIONS);
    let err = log
        .reader(&BTreeMap::from([(unknown, Offset(0))]))
        .err()
        .unwrap();
    assert!(matches!(err, LogError::Url { .. }), "{err}");
    assert!(err.to_string().contains(&format!("not {unknown}")), "{err}");
}

fn suite_reads_raw_messages_back_verbatim(url: &str) {
    let log = open_log(url).unwrap();
    let sent: Vec<(Option<&[u8]>, &[u8])> = vec![
        (Some(b"ajio|pune"), b"{not json"),
        (None, b"\xff\xfe\x00 not UTF-8"),
        (Some(b"\x00\xff"), b"[1,2]"),
        (None, b""),
        (Some(b"tira|goa"), b"{\"kind\":\"view\"}"),
    ];
    log.append_raw(&sent).unwrap();
    let records = read_n(log.as_ref(), &from_zero(log.as_ref()), sent.len());
    check_layout(&records, PARTITIONS);
    let mut read: Vec<(Option<Vec<u8>>, Vec<u8>)> =
        records.into_iter().map(|r| (r.key, r.payload)).collect();
    let mut want: Vec<(Option<Vec<u8>>, Vec<u8>)> = sent
        .iter()
        .map(|(k, v)| (k.map(<[u8]>::to_vec), v.to_vec()))
        .collect();
    read.sort();
    want.sort();
    assert_eq!(read, want);
}

fn suite_keeps_dead_letters_with_their_place_and_reason(url: &str) {
    let log = open_log(url).unwrap();
    log.append_raw(&[(Some(b"ajio|pune"), b"{bad"), (None, b"\xff")])
        .unwrap();
    let records = read_n(log.as_ref(), &from_zero(log.as_ref()), 2);
    let mut letters: Vec<(LogRecord, String)> = records
        .iter()
        .map(|r| (r.clone(), format!("bad message at {}", r.offset)))
        .collect();
    log.dead_letter(&letters).unwrap();
    let mut kept = dead_letters(url).unwrap();
    kept.sort_by_key(|l| (l.partition, l.offset));
    letters.sort_by_key(|(r, _)| (r.partition, r.offset));
    assert_eq!(kept.len(), letters.len());
    for ((record, reason), letter) in letters.iter().zip(&kept) {
        assert_eq!(&letter.reason, reason);
        assert_eq!(
            (letter.partition, letter.offset, letter.timestamp_ms),
            (record.partition, record.offset, record.timestamp_ms)
        );
        assert_eq!(letter.key, record.key);
        assert_eq!(letter.payload, record.payload);
    }
}

fn suite_appends_are_durable_on_return(url: &str) {
    let writer = open_log(url).unwrap();
    let events = append_events(writer.as_ref(), "durable", 300, 300);
    writer.append_raw(&[(None, b"raw")]).unwrap();
    // A handle opened afterwards sees everything at once, without waiting.
    let reader = open_log(url).unwrap();
    assert_eq!(
        total(&reader.end_offsets().unwrap()),
        events.len() as i64 + 1
    );
    assert_eq!(reader.end_offsets().unwrap(), writer.end_offsets().unwrap());
    let records = read_n(
        reader.as_ref(),
        &from_zero(reader.as_ref()),
        events.len() + 1,
    );
    assert_eq!(records.iter().filter(|r| r.payload == b"raw").count(), 1);
    writer.append(&events[..10]).unwrap();
    assert_eq!(
        total(&reader.end_offsets().unwrap()),
        events.len() as i64 + 11
    );
}

/// Runs each check on every backend, a fresh log per test.
macro_rules! conformance {
    ($($check:ident),+ $(,)?) => {
        /// On a file log in a new temporary folder.
        mod file {
            $(
                #[test]
                fn $check() {
                    let tmp = tempfile::tempdir().unwrap();
                    let url = format!(
                        "file:{}?partitions={}",
                        tmp.path().join("log").display(),
                        super::PARTITIONS
                    );
                    super::$check(&url);
                }
            )+
        }

        /// On a new Kafka topic.
        mod kafka {
            $(
                #[test]
                fn $check() {
                    let Some(broker) = crate::common::service("SLOTBANDIT_KAFKA") else {
                        return;
                    };
                    super::$check(&super::kafka_url(
                        &broker,
                        stringify!($check),
                        super::PARTITIONS,
                    ));
                }
            )+
        }
    };
}

conformance!(
    suite_lists_its_partitions_and_starts_empty,
    suite_reads_back_every_event_in_order,
    suite_puts_keyed_messages_in_partition_for_key,
    suite_reads_from_a_start_offset,
    suite_end_offsets_count_the_appends,
    suite_offsets_for_time_split_before_and_after,
    suite_refuses_a_start_past_the_end_or_an_unknown_partition,
    suite_reads_raw_messages_back_verbatim,
    suite_keeps_dead_letters_with_their_place_and_reason,
    suite_appends_are_durable_on_return,
);
