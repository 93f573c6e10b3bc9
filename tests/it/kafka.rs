//! The Kafka event log against the real broker (`SLOTBANDIT_KAFKA`, see scripts/services/):
//! Java's console producer and our producer agree on partitions and our reader reads what Java
//! wrote, dead letters land in topic `TOPIC-dlq`, `slotbandit produce` fills a topic, and clear
//! errors. The `EventLog` contract itself is checked in tests/it/event_log.rs.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};

use crate::common::{ok, service, slotbandit, unique_name};
use crate::event_log::{check_layout, event, from_zero, kafka_url, read_n};

use slotbandit::model::{Event, Partition};
use slotbandit::source::{event_key, open_log, partition_for_key, LogError, LogRecord};

#[test]
fn keys_from_kafkas_console_producer_land_where_ours_do_and_we_read_its_events() {
    let Some(broker) = service("SLOTBANDIT_KAFKA") else {
        return;
    };
    let partitions = 6;
    let url = kafka_url(&broker, "console", partitions);
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

    let records = read_n(
        log.as_ref(),
        &from_zero(log.as_ref()),
        java.len() + ours.len(),
    );
    check_layout(&records, partitions);
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
fn dead_letters_go_to_the_dlq_topic_with_their_key_and_payload() {
    let Some(broker) = service("SLOTBANDIT_KAFKA") else {
        return;
    };
    let url = kafka_url(&broker, "dlq", 2);
    let log = open_log(&url).unwrap();
    log.append_raw(&[(Some(b"ajio|pune"), b"{bad"), (None, b"\xff")])
        .unwrap();
    let records = read_n(log.as_ref(), &from_zero(log.as_ref()), 2);
    let letters: Vec<(LogRecord, String)> = records
        .iter()
        .map(|r| (r.clone(), "not valid JSON".to_string()))
        .collect();
    log.dead_letter(&letters).unwrap();
    let topic = url.rsplit('/').next().unwrap().split('?').next().unwrap();
    let dlq = open_log(&format!("kafka://{broker}/{topic}-dlq")).unwrap();
    assert_eq!(dlq.partitions().unwrap(), [Partition(0)]);
    let mut kept: Vec<(Option<Vec<u8>>, Vec<u8>)> =
        read_n(dlq.as_ref(), &from_zero(dlq.as_ref()), 2)
            .into_iter()
            .map(|r| (r.key, r.payload))
            .collect();
    let mut sent: Vec<(Option<Vec<u8>>, Vec<u8>)> =
        records.into_iter().map(|r| (r.key, r.payload)).collect();
    kept.sort();
    sent.sort();
    assert_eq!(kept, sent);
}

#[test]
fn missing_topics_changed_partition_counts_and_absent_brokers_are_clear_errors() {
    let Some(broker) = service("SLOTBANDIT_KAFKA") else {
        return;
    };
    let missing = format!("kafka://{broker}/{}", unique_name("missing"));
    let err = open_log(&missing).err().unwrap().to_string();
    assert!(err.contains("does not exist"), "{err}");
    assert!(err.contains("?partitions=N"), "{err}");

    let url = kafka_url(&broker, "count", 1);
    open_log(&url).unwrap();
    let err = open_log(&url.replace("partitions=1", "partitions=4"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("has 1 partitions"), "{err}");

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
    let url = kafka_url(&broker, "produce", 4);
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
    let records = read_n(log.as_ref(), &from_zero(log.as_ref()), 5001);
    let unkeyed: Vec<&LogRecord> = records.iter().filter(|r| r.key.is_none()).collect();
    assert_eq!(unkeyed.len(), 1);
    assert_eq!(unkeyed[0].payload, b"{\"kind\":\"view\"}");
}
