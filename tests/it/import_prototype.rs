//! `import-prototype` against a real Cassandra (`SLOTBANDIT_CASSANDRA`): a keyspace made the way
//! the prototype made it (its tables, times shifted by +19,800 s, timeuuids of the shifted time,
//! `-1` customers, mixed-case cities), imported, backfilled and counted against what the test
//! inserted; a second import gives the same bytes; and each kind of bad input is one error line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use chrono::{DateTime, Duration, Utc};
use slotbandit::model::parquet::list_parquet_files;
use slotbandit::model::SlotConfig;

use crate::cassandra::cql;
use crate::common::{events_of, ok, posteriors, service, slotbandit, stderr, unique_name, Counts};

/// What the prototype added to every time it stored.
const SHIFT_SECS: i64 = 19_800;

/// A version-1 timeuuid of a Unix time in µs (RFC 9562's layout, made here independently of the
/// importer), with a node id per row as drivers make them.
fn timeuuid(unix_micros: i64, node: u16) -> String {
    let ticks = (unix_micros * 10 + 0x01B2_1DD2_1381_4000) as u64;
    format!(
        "{:08x}-{:04x}-{:04x}-8{:03x}-{:012x}",
        ticks as u32,
        (ticks >> 32) as u16,
        ((ticks >> 48) as u16 & 0x0fff) | 0x1000,
        node & 0x0fff,
        0x0242_ac11_0000_u64 + u64::from(node)
    )
}

/// The prototype's tables, from its facts.
fn prototype_schema(keyspace: &str) -> [String; 3] {
    [
        format!(
            "CREATE KEYSPACE {keyspace} WITH replication = \
             {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
        ),
        format!(
            "CREATE TABLE {keyspace}.bannerclickstream (platform text, slotname text, \
             operationdate timeuuid, location text, bannerid text, clicked boolean, \
             createddate float, customerid text, adreferrer text, \
             PRIMARY KEY ((platform, slotname), operationdate, location)) \
             WITH CLUSTERING ORDER BY (operationdate DESC, location ASC)"
        ),
        format!(
            "CREATE TABLE {keyspace}.slotconfiguration (platform text, slotname text, \
             validto bigint, imagekey text, imagename text, validfrom bigint, \
             datemodified timeuuid, PRIMARY KEY ((platform, slotname), validto, imagekey)) \
             WITH CLUSTERING ORDER BY (validto DESC, imagekey ASC)"
        ),
    ]
}

/// A keyspace of this test, dropped at the end.
struct Keyspace {
    node: String,
    name: String,
}

impl Keyspace {
    fn new(node: &str, prefix: &str) -> Self {
        Self {
            node: node.to_string(),
            name: unique_name(prefix),
        }
    }

    fn run(&self, statement: &str) {
        cql(&self.node, statement).unwrap_or_else(|e| panic!("{e}"));
    }

    fn url(&self) -> String {
        format!("cassandra://{}/{}", self.node, self.name)
    }
}

impl Drop for Keyspace {
    fn drop(&mut self) {
        let _ = cql(
            &self.node,
            &format!("DROP KEYSPACE IF EXISTS {}", self.name),
        );
    }
}

/// One clickstream row as the test inserts it: true UTC time, stored names, and the reason the
/// importer must refuse it (None: imported).
struct Inserted {
    platform: &'static str,
    slot: &'static str,
    ts: DateTime<Utc>,
    location: &'static str,
    banner: Option<&'static str>,
    clicked: bool,
    customer: &'static str,
    referrer: &'static str,
    refused: Option<&'static str>,
}

fn utc(s: &str) -> DateTime<Utc> {
    slotbandit::time::parse_rfc3339(s).unwrap()
}

fn clickstream() -> Vec<Inserted> {
    let t0 = utc("2026-11-20T10:00:00Z");
    let cities = ["Pune", "pune", "mumbai", "Mumbai ", "delhi"];
    let banners = ["b01", "b02", "B03"];
    let mut rows: Vec<Inserted> = (0..60)
        .map(|i| {
            let clicked = i % 4 == 3;
            Inserted {
                platform: if i % 7 == 0 { "AJIO" } else { "ajio" },
                slot: if i % 3 == 0 { "home" } else { "hero" },
                ts: t0 + Duration::minutes(37 * i) + Duration::microseconds(i * 1_001),
                location: cities[i as usize % cities.len()],
                banner: Some(banners[i as usize % banners.len()]),
                clicked,
                customer: if clicked { "c-42" } else { "-1" },
                referrer: if clicked { "ads" } else { "" },
                refused: None,
            }
        })
        .collect();
    let t1 = t0 + Duration::hours(3) + Duration::seconds(11);
    let special = |minutes: i64,
                   location: &'static str,
                   banner: Option<&'static str>,
                   clicked: bool,
                   customer: &'static str,
                   refused: Option<&'static str>| Inserted {
        platform: "ajio",
        slot: "hero",
        ts: t1 + Duration::minutes(minutes),
        location,
        banner,
        clicked,
        customer,
        referrer: if clicked { "thirdparty" } else { "" },
        refused,
    };
    rows.extend([
        // A click posted by the page without the GET's impression row, with an empty customer.
        special(1, "nagpur", Some("b09"), true, "", None),
        special(2, "pune", Some(""), false, "-1", Some("empty_banner")),
        special(3, "pune", None, false, "-1", Some("empty_banner")),
        special(4, "Straße", Some("b01"), false, "-1", Some("invalid_city")),
        special(
            5,
            "pune",
            Some("b01"),
            true,
            "c 42",
            Some("invalid_customer_id"),
        ),
    ]);
    rows
}

fn insert_clickstream(ks: &Keyspace, rows: &[Inserted]) {
    for (i, r) in rows.iter().enumerate() {
        let shifted = r.ts.timestamp_micros() + SHIFT_SECS * 1_000_000;
        let createddate = (shifted as f64 / 1e6) as f32;
        let (banner_col, banner_val) = match r.banner {
            Some(b) => (", bannerid", format!(", '{b}'")),
            None => ("", String::new()),
        };
        ks.run(&format!(
            "INSERT INTO {}.bannerclickstream (platform, slotname, operationdate, location, \
             clicked, createddate, customerid, adreferrer{banner_col}) VALUES ('{}', '{}', {}, \
             '{}', {}, {createddate}, '{}', '{}'{banner_val})",
            ks.name,
            r.platform,
            r.slot,
            timeuuid(shifted, i as u16),
            r.location,
            r.clicked,
            r.customer,
            r.referrer,
        ));
    }
}

/// Slot rows: (platform, slot, imagekey, imagename, true valid from, true valid to, refused).
type SlotRowSpec = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
);

const SLOT_ROWS: [SlotRowSpec; 6] = [
    (
        "ajio",
        "hero",
        "b01",
        "b01.png",
        "2026-11-01T00:00:00Z",
        "2027-01-01T00:00:00Z",
        None,
    ),
    // An earlier window of b01, replaced by the one above.
    (
        "ajio",
        "hero",
        "b01",
        "b01-old.png",
        "2026-10-01T00:00:00Z",
        "2026-11-01T00:00:00Z",
        Some("superseded_window"),
    ),
    (
        "ajio",
        "hero",
        "B02",
        "b02.png",
        "2026-11-15T06:30:00Z",
        "2026-12-15T18:30:00Z",
        None,
    ),
    (
        "Ajio",
        "home",
        "b03",
        "b03.jpg",
        "2026-11-01T00:00:00Z",
        "2027-01-01T00:00:00Z",
        None,
    ),
    (
        "ajio",
        "home",
        "",
        "none.png",
        "2026-11-01T00:00:00Z",
        "2027-01-01T00:00:00Z",
        Some("empty_banner"),
    ),
    (
        "ajio",
        "home",
        "b04",
        "b04.png",
        "2026-12-01T00:00:00Z",
        "2026-11-01T00:00:00Z",
        Some("invalid_validto"),
    ),
];

fn insert_slots(ks: &Keyspace) {
    for (i, (platform, slot, key, image, from, to, _)) in SLOT_ROWS.iter().enumerate() {
        ks.run(&format!(
            "INSERT INTO {}.slotconfiguration (platform, slotname, validto, imagekey, imagename, \
             validfrom, datemodified) VALUES ('{platform}', '{slot}', {}, '{key}', '{image}', {}, {})",
            ks.name,
            utc(to).timestamp() + SHIFT_SECS,
            utc(from).timestamp() + SHIFT_SECS,
            timeuuid(Utc::now().timestamp_micros(), i as u16),
        ));
    }
}

fn import(url: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "import-prototype",
        "--from",
        url,
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    slotbandit(&args)
}

/// Every file under `dir`, by relative path, with its bytes.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                out.insert(path.strip_prefix(dir).unwrap().to_path_buf(), bytes);
            }
        }
    }
    out
}

/// The test's own reading of the contract: trim and lowercase.
fn name(s: &str) -> String {
    s.trim().to_lowercase()
}

#[test]
fn import_prototype_history_and_slots_backfill_to_the_inserted_counts_and_import_twice_the_same() {
    let Some(node) = service("SLOTBANDIT_CASSANDRA") else {
        return;
    };
    let ks = Keyspace::new(&node, "sbt_proto");
    for statement in prototype_schema(&ks.name) {
        ks.run(&statement);
    }
    let rows = clickstream();
    insert_clickstream(&ks, &rows);
    insert_slots(&ks);

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("import");
    let stdout = ok(import(&ks.url(), &out, &[]));

    // Independent counts of the inserted rows.
    let mut expected = Counts::new();
    let mut expected_rejects: BTreeMap<&str, u64> = BTreeMap::new();
    let mut expected_ts = Vec::new();
    for r in &rows {
        if let Some(reason) = r.refused {
            *expected_rejects.entry(reason).or_default() += 1;
            continue;
        }
        let v = expected
            .entry((
                name(r.platform),
                name(r.slot),
                name(r.location),
                name(r.banner.unwrap()),
            ))
            .or_default();
        if r.clicked {
            v.1 += 1;
        } else {
            v.0 += 1;
        }
        expected_ts.push(r.ts);
    }
    for (.., refused) in SLOT_ROWS {
        if let Some(reason) = refused {
            *expected_rejects.entry(reason).or_default() += 1;
        }
    }
    let (imps, clicks) = expected
        .values()
        .fold((0, 0), |(i, c), v| (i + v.0, c + v.1));
    assert!(
        stdout.contains(&format!("wrote {imps} impressions and {clicks} clicks")),
        "{stdout}"
    );
    let refused: u64 = expected_rejects.values().sum();
    assert!(
        stdout.contains(&format!("refused {refused} rows")),
        "{stdout}"
    );
    for (reason, n) in &expected_rejects {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains(reason) && l.contains(&format!(" {n} "))),
            "{reason}: {n} in\n{stdout}"
        );
    }
    let rejects = std::fs::read_to_string(out.join("_rejects.csv")).unwrap();
    let mut reject_lines = rejects.lines();
    assert_eq!(
        reject_lines.next().unwrap(),
        "table,platform,slotname,operationdate,location,validto,imagekey,reason,detail"
    );
    assert_eq!(reject_lines.count() as u64, refused, "{rejects}");
    assert!(rejects.contains("Straße"), "the key as stored: {rejects}");

    // Times come out in true UTC, each in the dt= partition of its IST date.
    let parquet = list_parquet_files(&out).unwrap();
    let events = events_of(&parquet);
    let mut got_ts: Vec<_> = events.iter().map(|e| e.ts).collect();
    got_ts.sort();
    expected_ts.sort();
    assert_eq!(got_ts, expected_ts);
    for f in &parquet {
        let dt = f.parent().unwrap().file_name().unwrap().to_str().unwrap();
        for e in events_of(std::slice::from_ref(f)) {
            let ist = (e.ts + Duration::seconds(SHIFT_SECS)).date_naive();
            assert_eq!(dt, format!("dt={ist}"), "{e:?}");
        }
    }
    assert!(events.iter().all(|e| e.request_id.is_none()));
    assert_eq!(
        events.iter().filter(|e| e.customer_id.is_some()).count() as u64,
        rows.iter()
            .filter(|r| r.refused.is_none() && r.customer != "-1" && !r.customer.is_empty())
            .count() as u64,
        "-1 and empty customers are none"
    );

    // The backfill counts exactly the inserted rows per arm.
    let store = format!("embedded:{}", dir.path().join("s.redb").display());
    ok(slotbandit(&[
        "backfill",
        "--input",
        out.to_str().unwrap(),
        "--store",
        &store,
    ]));
    assert_eq!(posteriors(&store, &[]), expected);

    // The slots, in true UTC, import into the store.
    let slots = SlotConfig::read_csv(std::fs::File::open(out.join("_slots.csv")).unwrap()).unwrap();
    let mut got: Vec<_> = slots
        .iter()
        .flat_map(|s| {
            s.banners.iter().map(|b| {
                (
                    s.tenant.clone(),
                    s.slot.clone(),
                    b.id.clone(),
                    b.image.clone(),
                    b.valid_from,
                    b.valid_to,
                )
            })
        })
        .collect();
    got.sort();
    let mut want: Vec<_> = SLOT_ROWS
        .iter()
        .filter(|r| r.6.is_none())
        .map(|(p, s, k, i, from, to, _)| {
            (name(p), name(s), name(k), i.to_string(), utc(from), utc(to))
        })
        .collect();
    want.sort();
    assert_eq!(got, want);
    let stored = ok(slotbandit(&[
        "slots",
        "import",
        out.join("_slots.csv").to_str().unwrap(),
        "--store",
        &store,
    ]));
    assert!(stored.contains("stored 2 slots, 3 banners"), "{stored}");

    // A second import writes the same bytes.
    let again = dir.path().join("again");
    ok(import(&ks.url(), &again, &[]));
    let (first, second) = (files(&out), files(&again));
    assert!(first
        .keys()
        .any(|p| p.extension().is_some_and(|e| e == "parquet")));
    assert_eq!(
        first.keys().collect::<Vec<_>>(),
        second.keys().collect::<Vec<_>>()
    );
    for (path, bytes) in &first {
        assert!(bytes == &second[path], "{} differs", path.display());
    }

    // --since/--until keep since <= ts < until, in true UTC.
    let (since, until) = (expected_ts[10], expected_ts[30]);
    let windowed = dir.path().join("windowed");
    let stdout = ok(import(
        &ks.url(),
        &windowed,
        &[
            "--since",
            &slotbandit::time::format_utc(since),
            "--until",
            &slotbandit::time::format_utc(until),
        ],
    ));
    let inside = events_of(&list_parquet_files(&windowed).unwrap());
    assert_eq!(inside.len(), 20, "{stdout}");
    assert!(inside.iter().all(|e| since <= e.ts && e.ts < until));
    // Rows outside the window are left out before they are judged: the refused ones lie before
    // --since.
    assert!(
        stdout.contains(&format!("left out {} events", rows.len() - 20)),
        "{stdout}"
    );
    let slot_rejects = SLOT_ROWS.iter().filter(|r| r.6.is_some()).count();
    assert!(
        stdout.contains(&format!("refused {slot_rejects} rows")),
        "slots are not windowed: {stdout}"
    );
}

/// The one `error:` line of a failed run, which must be its last line.
fn error_line(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(1), "{}", stderr(o));
    let err = stderr(o);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert_eq!(err.lines().last(), Some(errors[0]), "{err}");
    errors[0].to_string()
}

#[test]
fn import_prototype_names_a_keyspace_without_the_tables_and_a_missing_column() {
    let Some(node) = service("SLOTBANDIT_CASSANDRA") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let empty = Keyspace::new(&node, "sbt_proto_empty");
    let [create_keyspace, ..] = prototype_schema(&empty.name);
    empty.run(&create_keyspace);
    let line = error_line(&import(&empty.url(), &dir.path().join("a"), &[]));
    assert!(
        line.contains(&format!(
            "keyspace {} has no table bannerclickstream",
            empty.name
        )),
        "{line}"
    );

    let partial = Keyspace::new(&node, "sbt_proto_col");
    let [create_keyspace, clickstream, slots] = prototype_schema(&partial.name);
    partial.run(&create_keyspace);
    partial.run(&clickstream.replace("clicked boolean, ", ""));
    partial.run(&slots);
    let line = error_line(&import(&partial.url(), &dir.path().join("b"), &[]));
    assert!(
        line.contains(&format!(
            "table {}.bannerclickstream has no column clicked",
            partial.name
        )),
        "{line}"
    );
    assert!(!dir.path().join("a").exists() && !dir.path().join("b").exists());
}

#[test]
fn import_prototype_names_an_unreachable_node_and_refuses_since_after_until() {
    let dir = tempfile::tempdir().unwrap();
    let line = error_line(&import(
        "cassandra://127.0.0.1:1/cognitivebanners",
        &dir.path().join("a"),
        &[],
    ));
    assert!(
        line.contains("cannot connect to the prototype's Cassandra at 127.0.0.1:1"),
        "{line}"
    );

    let o = import(
        "cassandra://127.0.0.1:1/cognitivebanners",
        &dir.path().join("b"),
        &[
            "--since",
            "2026-11-02T00:00:00Z",
            "--until",
            "01-Nov-26 00:00:00",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--since"), "{}", stderr(&o));
}
