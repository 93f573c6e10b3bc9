//! The Cassandra store against a real Cassandra (`SLOTBANDIT_CASSANDRA`), each test in its own
//! keyspace, in what only Cassandra does: the same posteriors as the embedded store from a
//! backfill, idempotent backfills, one process per share of the shards, isolated shard writes,
//! the customer command on its history, the schema's versions, and a Cassandra that stops in the
//! middle of a backfill (a second node of our own, so the shared one is left alone). What every
//! store promises is checked against both backends in `posterior_store.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::common::{gen, hosts_file, ok, service, slotbandit, stderr, unique_name, OwnService};
use crate::posterior_store::customer_history;

use chrono::Utc;
use scylla::value::{CqlValue, Row};
use slotbandit::model::{
    ArmKey, CountKey, Counts, Offset, Partition, Recency, ShardKey, SlotConfig, SlotRules, ALL_TIME,
};
use slotbandit::serve::cache::{KeptWindows, Refresh, Snapshot, TenantScope};
use slotbandit::store::{
    open_store, CountQuery, Part, PosteriorStore, ShardState, ShardWrite, Versions,
};
use slotbandit::time::Buckets;

/// Runs CQL statements on a node, in order, directly with the driver (what the store does not
/// offer: DROP, a keyspace of an earlier schema version, the server's own metrics); returns the
/// rows of the last one.
pub(crate) fn cql_rows(node: &str, statements: &[String]) -> Result<Vec<Row>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let session = scylla::client::session_builder::SessionBuilder::new()
            .known_node(node)
            .build()
            .await
            .map_err(|e| e.to_string())?;
        let mut rows = Vec::new();
        for statement in statements {
            let result = session
                .query_unpaged(statement.as_str(), &[])
                .await
                .map_err(|e| format!("{statement}: {e}"))?;
            rows = match result.into_rows_result() {
                Ok(result) => result
                    .rows::<Row>()
                    .map_err(|e| e.to_string())?
                    .collect::<Result<_, _>>()
                    .map_err(|e| e.to_string())?,
                Err(_) => Vec::new(),
            };
        }
        Ok(rows)
    })
}

/// Runs one CQL statement on a node (see [`cql_rows`]).
pub(crate) fn cql(node: &str, statement: &str) -> Result<(), String> {
    cql_rows(node, &[statement.to_string()]).map(|_| ())
}

/// The statements of schema version 1 for `keyspace`, and the record of it, as `schema apply` of
/// a build that knew only version 1 ran them.
fn version_1_schema(keyspace: &str) -> Vec<String> {
    let cql = include_str!("../../schema/cassandra/001_init.cql")
        .replace("{keyspace}", keyspace)
        .replace(
            "{replication}",
            "{'class': 'SimpleStrategy', 'replication_factor': 1}",
        );
    let code: Vec<&str> = cql
        .lines()
        .map(|l| l.split_once("--").map_or(l, |(code, _)| code))
        .collect();
    let mut statements: Vec<String> = code
        .join("\n")
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    statements.push(format!(
        "INSERT INTO {keyspace}.schema_version (version, name, applied_at) \
         VALUES (1, '001_init', toTimestamp(now()))"
    ));
    statements
}

/// A keyspace of this test with the schema applied; dropped at the end.
pub(crate) struct Keyspace {
    node: String,
    pub(crate) name: String,
    pub(crate) url: String,
}

impl Keyspace {
    pub(crate) fn new(node: &str, prefix: &str) -> Self {
        Self::with_url_suffix(node, prefix, "")
    }

    fn with_url_suffix(node: &str, prefix: &str, suffix: &str) -> Self {
        let name = unique_name(prefix);
        let url = format!("cassandra://{node}/{name}{suffix}");
        let applied = ok(slotbandit(&["schema", "apply", "--store", &url]));
        assert!(
            applied.contains("applied schema version(s) 1, 2, 3, 4, 5; now at 5"),
            "{applied}"
        );
        Self {
            node: node.to_string(),
            name,
            url,
        }
    }

    /// A keyspace at schema version 1, as a build that knew only that version left it.
    fn at_version_1(node: &str, prefix: &str) -> Self {
        let name = unique_name(prefix);
        cql_rows(node, &version_1_schema(&name)).unwrap();
        Self {
            node: node.to_string(),
            url: format!("cassandra://{node}/{name}"),
            name,
        }
    }

    pub(crate) fn store(&self) -> Box<dyn PosteriorStore> {
        open_store(&self.url, true).unwrap()
    }
}

impl Drop for Keyspace {
    fn drop(&mut self) {
        if let Err(e) = cql(
            &self.node,
            &format!("DROP KEYSPACE IF EXISTS {}", self.name),
        ) {
            eprintln!("could not drop keyspace {}: {e}", self.name);
        }
    }
}

fn backfill(data: &Path, store: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "backfill",
        "--input",
        data.to_str().unwrap(),
        "--store",
        store,
    ];
    args.extend_from_slice(extra);
    slotbandit(&args)
}

fn posteriors_csv(store: &str, view: &[&str]) -> String {
    let mut args = vec!["posteriors", "--store", store, "--format", "csv"];
    args.extend_from_slice(view);
    ok(slotbandit(&args))
}

/// The shard batches the `sink:` line of a backfill reports.
fn shard_batches(stdout: &str) -> u64 {
    let sink = stdout
        .lines()
        .find(|l| l.starts_with("sink:"))
        .unwrap_or_else(|| panic!("no sink line in {stdout}"));
    let words: Vec<&str> = sink.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "shard").unwrap();
    words[at - 1].parse().unwrap()
}

/// The posteriors of a store seen several ways: all-time, windowed, one slot, one slot in a
/// city without counts (the all-city fallback), one city windowed.
fn views(store: &str, tenant: &str, slot: &str, city: &str) -> Vec<String> {
    let views: [&[&str]; 5] = [
        &[],
        &["--window-minutes", "720"],
        &["--tenant", tenant, "--slot", slot],
        &["--tenant", tenant, "--slot", slot, "--city", "nowhere"],
        &[
            "--tenant",
            tenant,
            "--city",
            city,
            "--window-minutes",
            "180",
        ],
    ];
    views.iter().map(|v| posteriors_csv(store, v)).collect()
}

/// tenant, slot and city of the first posterior row.
fn first_arm(csv: &str) -> (String, String, String) {
    let f: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
    (f[0].into(), f[1].into(), f[2].into())
}

/// A generated history and the embedded store a backfill of it with `workers` made: what a
/// Cassandra store must match.
struct History {
    dir: tempfile::TempDir,
    data: PathBuf,
    embedded: String,
}

fn history(flags: &str, workers: &str) -> History {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    ok(gen(&data, flags));
    let embedded = format!("embedded:{}", dir.path().join("e.redb").display());
    ok(backfill(&data, &embedded, &["-w", workers]));
    History {
        dir,
        data,
        embedded,
    }
}

/// Asserts that a store's posteriors are the embedded store's, seen every way [`views`] does.
fn assert_same_posteriors(store: &str, embedded: &str) {
    let (t, s, c) = first_arm(&posteriors_csv(embedded, &[]));
    assert_eq!(views(store, &t, &s, &c), views(embedded, &t, &s, &c));
}

#[test]
fn backfill_into_cassandra_gives_the_embedded_posteriors_and_twice_changes_nothing() {
    let Some(node) = service("SLOTBANDIT_CASSANDRA") else {
        return;
    };
    let ks = Keyspace::new(&node, "sbt_backfill");
    let h = history(
        "--events 80000 --days 3 --tenants 2 --cities 5 --banners 4 --seed 21",
        "2",
    );
    let embedded = h.embedded.as_str();
    let first = ok(backfill(&h.data, &ks.url, &["-w", "2"]));
    assert!(shard_batches(&first) > 0, "{first}");

    let (t, s, c) = first_arm(&posteriors_csv(embedded, &[]));
    let want = views(embedded, &t, &s, &c);
    // 2 tenants × 2 slots × 5 cities × 4 banners, and the header.
    assert_eq!(want[0].lines().count(), 81, "{}", want[0]);
    assert!(
        want[3]
            .lines()
            .skip(1)
            .all(|l| l.contains(",nowhere,") && l.contains(",0,0,")),
        "a city without counts shows its prior alone: {}",
        want[3]
    );
    assert_eq!(views(&ks.url, &t, &s, &c), want);

    ok(backfill(&h.data, &ks.url, &["-w", "3"]));
    assert_eq!(
        views(&ks.url, &t, &s, &c),
        want,
        "a second backfill changed the posteriors"
    );

    // `slotbandit priors` fits the store's counts by the rule the backfill kept them with: the
    // same priors. With another strength, other priors, written to and read from Cassandra as
    // from the embedded store.
    for store in [embedded, &ks.url] {
        ok(slotbandit(&["priors", "--store", store]));
    }
    assert_eq!(views(embedded, &t, &s, &c), want);
    assert_eq!(views(&ks.url, &t, &s, &c), want);
    for store in [embedded, &ks.url] {
        ok(slotbandit(&[
            "priors",
            "--store",
            store,
            "--prior-strength",
            "50",
        ]));
    }
    let weaker = views(embedded, &t, &s, &c);
    assert_ne!(weaker, want);
    assert_eq!(views(&ks.url, &t, &s, &c), weaker);
}

#[test]
fn two_processes_each_write_their_own_shards_and_the_counts_are_exact() {
    let Some(node) = service("SLOTBANDIT_CASSANDRA") else {
        return;
    };
    let ks = Keyspace::new(&node, "sbt_twoproc");
    let h = history(
        "--events 60000 --days 4 --tenants 2 --cities 6 --banners 3 --seed 8",
        "1",
    );

    let hosts = hosts_file(h.dir.path(), 2);
    let spawn = |p: &str| {
        Command::new(env!("CARGO_BIN_EXE_slotbandit"))
            .args(["backfill", "--input", h.data.to_str().unwrap()])
            .args(["--store", &ks.url, "-w", "2", "-n", "2", "-p", p])
            .args(["-h", hosts.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Process 1 first: it retries connecting to process 0 until that one listens.
    let p1 = spawn("1");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let p0 = spawn("0");
    let (out0, out1) = (
        ok(p0.wait_with_output().unwrap()),
        ok(p1.wait_with_output().unwrap()),
    );
    // timely's connection messages ("worker 1:\terror connecting…; retrying") go to stderr:
    // stdout is the command's own summary.
    for out in [&out0, &out1] {
        assert!(!out.lines().any(|l| l.starts_with("worker ")), "{out}");
    }
    // Both processes wrote shards: each its own workers' share.
    assert!(shard_batches(&out0) > 0, "{out0}");
    assert!(shard_batches(&out1) > 0, "{out1}");
    assert_same_posteriors(&ks.url, &h.embedded);
}

/// A key not seen before, in 16 requests at once, against a store whose read takes a network
/// round trip: they all wait for the one read of the key, none is refused as unavailable.
#[test]
fn requests_arriving_together_with_a_new_key_share_its_read() {
    let Some(node) = service("SLOTBANDIT_CASSANDRA") else {
        return;
    };
    let ks = Keyspace::new(&node, "sbt_keys");
    let key = crate::common::keys_add(&ks.url, "ajio", "serve");
    let dir = tempfile::tempdir().unwrap();
    let log = format!("file:{}", dir.path().join("log").display());
    let spool = dir.path().join("spool").display().to_string();
    let (child, base) = crate::common::spawn_serve(
        &["--store", &ks.url, "--log", &log, "--spool-dir", &spool],
        &[],
    );
    let _serve = crate::common::Killed(child);
    let together = std::sync::Barrier::new(16);
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let requests: Vec<_> = (0..16)
            .map(|_| {
                scope.spawn(|| {
                    let client = reqwest::blocking::Client::new();
                    together.wait();
                    client
                        .get(format!("{base}/v1/me"))
                        .bearer_auth(&key)
                        .send()
                        .unwrap()
                        .status()
                        .as_u16()
                })
            })
            .collect();
        requests.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert_eq!(statuses, [200; 16]);
}

/// What the writer of the isolation test writes to every shard in epoch `e`: rows whose counts
/// are a function of `e`, one row that exists only in even epochs, and applied offsets
/// {0: e, 1: 1000 + e}.
fn epoch_rows(tenant: &str, city: &str, e: u64) -> Vec<(CountKey, Counts)> {
    let mut rows = Vec::new();
    for banner in 1..=6u64 {
        for bucket in [-1, 490_000, 490_001] {
            rows.push((
                CountKey {
                    arm: Arc::new(ArmKey::new(tenant, "hero", city, &format!("b{banner}"))),
                    bucket,
                },
                Counts::new(10 * e + banner, e + banner),
            ));
        }
    }
    let even = e.is_multiple_of(2);
    rows.push((
        CountKey {
            arm: Arc::new(ArmKey::new(tenant, "hero", city, "b0")),
            bucket: -1,
        },
        if even {
            Counts::new(e, e)
        } else {
            Counts::ZERO
        },
    ));
    rows
}

fn expected_state(tenant: &str, city: &str, e: u64) -> ShardState {
    let mut rows: Vec<_> = epoch_rows(tenant, city, e)
        .into_iter()
        .filter(|(_, c)| !c.is_zero())
        .collect();
    rows.sort();
    ShardState {
        shard: ShardKey::new(tenant, city),
        rows,
        applied: applied_in(e),
        keep_from: None,
    }
}

fn applied_in(e: u64) -> BTreeMap<Partition, Offset> {
    BTreeMap::from([
        (Partition(0), Offset(e as i64)),
        (Partition(1), Offset(1000 + e as i64)),
    ])
}

#[test]
fn a_reader_never_sees_a_shards_rows_disagree_with_its_applied_offsets() {
    let Some(node) = service("SLOTBANDIT_CASSANDRA") else {
        return;
    };
    let ks = Keyspace::new(&node, "sbt_isolation");
    let store: Arc<dyn PosteriorStore> = Arc::from(ks.store());
    let shards: Vec<ShardKey> = ["t1", "t2"]
        .iter()
        .flat_map(|t| ["c1", "c2", "c3"].map(|c| ShardKey::new(t, c)))
        .collect();
    let reads = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));

    // The writer runs on a plain thread (as timely workers do) until the reader has read a good
    // many times, so the two overlap however fast either is.
    let writer = {
        let (store, reads, done, shards) =
            (store.clone(), reads.clone(), done.clone(), shards.clone());
        std::thread::spawn(move || {
            let mut e = 0;
            while e < 5 || (reads.load(Ordering::SeqCst) < 40 && e < 5000) {
                e += 1;
                let writes: Vec<ShardWrite> = shards
                    .iter()
                    .map(|s| ShardWrite {
                        shard: s.clone(),
                        rows: epoch_rows(&s.tenant, &s.city, e),
                        applied: applied_in(e),
                        keep_from: None,
                    })
                    .collect();
                store.apply_epoch(&writes).unwrap();
            }
            done.store(true, Ordering::SeqCst);
            e
        })
    };

    // The reader runs where the lookup service calls the store: a tokio blocking thread.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let epochs_seen = runtime
        .block_on(runtime.spawn_blocking({
            let (store, reads, done) = (store.clone(), reads.clone(), done.clone());
            move || {
                let mut seen = std::collections::BTreeSet::new();
                loop {
                    let finished = done.load(Ordering::SeqCst);
                    for state in store.shards(&|_, _| true).unwrap() {
                        let e = state.applied[&Partition(0)].0 as u64;
                        let shard = &state.shard;
                        assert_eq!(state, expected_state(&shard.tenant, &shard.city, e));
                        seen.insert(e);
                    }
                    reads.fetch_add(1, Ordering::SeqCst);
                    if finished {
                        return seen;
                    }
                }
            }
        }))
        .unwrap();
    let last = writer.join().unwrap();
    eprintln!(
        "{} reads saw {} of {last} epochs",
        reads.load(Ordering::SeqCst),
        epochs_seen.len()
    );
    assert!(reads.load(Ordering::SeqCst) >= 40);
    assert!(
        epochs_seen.contains(&last),
        "the final read sees the last epoch"
    );
}

#[test]
fn the_customer_command_lists_a_customers_history_newest_first_in_ist() {
    let Some(node) = service("SLOTBANDIT_CASSANDRA") else {
        return;
    };
    let ks = Keyspace::new(&node, "sbt_customer");
    ks.store()
        .append_customer_events(&customer_history())
        .unwrap();

    // The customer command lists the newest first, in IST.
    let json = ok(slotbandit(&[
        "customer",
        "--store",
        &ks.url,
        "--tenant",
        "ajio",
        "--customer",
        "cust-1",
        "--format",
        "json",
    ]));
    let listed: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    let ids: Vec<&str> = listed
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["e3", "e2", "e1"]);
    assert_eq!(listed[2]["ts"], "2026-11-02T18:29:59Z");
    assert_eq!(listed[2]["ts_ist"], "2026-11-02T23:59:59+05:30");
    assert_eq!(listed[2]["referrer"], "ads");
    let table = ok(slotbandit(&[
        "customer",
        "--store",
        &ks.url,
        "--tenant",
        "ajio",
        "--customer",
        "cust-1",
        "--limit",
        "1",
    ]));
    assert!(table.contains("2026-11-02 23:59:59 IST"), "{table}");
    assert!(table.contains("1 event(s) of customer cust-1"), "{table}");
    let bad = slotbandit(&[
        "customer",
        "--store",
        &ks.url,
        "--tenant",
        "ajio",
        "--customer",
        "a b",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("whitespace"), "{}", stderr(&bad));
}

#[test]
fn the_schema_applies_once_and_a_store_without_it_is_named() {
    let Some(node) = service("SLOTBANDIT_CASSANDRA") else {
        return;
    };
    let ks = Keyspace::new(&node, "sbt_schema");
    let again = ok(slotbandit(&["schema", "apply", "--store", &ks.url]));
    assert!(again.contains("nothing to do"), "{again}");

    let missing = format!("cassandra://{node}/{}", unique_name("sbt_none"));
    let out = slotbandit(&["posteriors", "--store", &missing]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("has no slotbandit schema") && err.contains("slotbandit schema apply --store"),
        "{err}"
    );

    let printed = ok(slotbandit(&[
        "schema",
        "print",
        "--store",
        &ks.url,
        "--replication",
        "dc1:3,dc2:2",
    ]));
    assert!(printed.contains(&format!(
        "CREATE KEYSPACE IF NOT EXISTS {}\n    WITH replication = {{'class': 'NetworkTopologyStrategy', 'dc1': 3, 'dc2': 2}}",
        ks.name
    )));
    let bad = slotbandit(&[
        "schema",
        "apply",
        "--store",
        &ks.url,
        "--replication",
        "dc1",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("simple:RF or DC:RF"),
        "{}",
        stderr(&bad)
    );
    let embedded = slotbandit(&["schema", "apply", "--store", "embedded:x.redb"]);
    assert!(
        stderr(&embedded).contains("only cassandra:// stores"),
        "{}",
        stderr(&embedded)
    );
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_backfill_fails_clearly_when_cassandra_stops_and_is_exact_after_a_restart() {
    if service("SLOTBANDIT_CASSANDRA").is_none() {
        return;
    }
    let own = OwnService::cassandra();
    let address = own.address.clone();
    let ks = Keyspace::with_url_suffix(&address, "sbt_stop", "?deadline_s=8");
    let h = history(
        "--events 400000 --days 6 --tenants 2 --cities 6 --banners 4 --seed 13",
        "2",
    );

    // A sentinel row that the backfill's clear removes: once it is gone, the job is past
    // connecting and clearing, and is reading and writing.
    let sentinel = ShardWrite {
        rows: vec![(
            CountKey::all_time(Arc::new(ArmKey::new("sentinel", "s", "gone", "b"))),
            Counts::new(1, 0),
        )],
        ..ShardWrite::new(ShardKey::new("sentinel", "gone"))
    };
    let probe = ks.store();
    probe.apply_epoch(&[sentinel]).unwrap();
    let mut job = Command::new(env!("CARGO_BIN_EXE_slotbandit"))
        .args(["backfill", "--input", h.data.to_str().unwrap()])
        .args(["--store", &ks.url, "-w", "2"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    while !probe.shards(&|t, _| t == "sentinel").unwrap().is_empty() {
        if job.try_wait().unwrap().is_some() {
            panic!(
                "the backfill ended before its clear: {}",
                stderr(&job.wait_with_output().unwrap())
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // Hold the job still while the node goes down, so that it meets the stop mid-run however
    // fast it is.
    signal(job.id(), "-STOP");
    assert!(
        job.try_wait().unwrap().is_none(),
        "the backfill ended before Cassandra stopped; give it more history"
    );
    drop(probe);
    own.run(&["stop"]);
    signal(job.id(), "-CONT");
    let failed = job.wait_with_output().unwrap();
    let err = stderr(&failed);
    eprintln!("the job ended with: {}", err.lines().last().unwrap_or(""));
    assert_eq!(failed.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cassandra store {address}/{}", ks.name))
            && err.contains("gave up after")
            && err.contains("deadline_s=8")
            && err.contains("last error"),
        "{err}"
    );
    assert!(
        err.contains("retrying in"),
        "the job retried before giving up: {err}"
    );

    own.run(&["start"]);
    ok(backfill(&h.data, &ks.url, &["-w", "2"]));
    assert_same_posteriors(&ks.url, &h.embedded);
}

/// The schema version this build writes.
const SCHEMA_VERSION: u32 = 5;

/// A keyspace left at schema version `from` is refused, naming the command that moves it on;
/// `schema apply` then applies every later version.
fn refused_until_schema_apply(ks: &Keyspace, from: u32) {
    let refused = open_store(&ks.url, true).err().unwrap().to_string();
    assert!(
        refused.contains(&format!(
            "schema version {from} is older than this build's {SCHEMA_VERSION}"
        )) && refused.contains("run `slotbandit schema apply --store"),
        "{refused}"
    );
    let applied = ok(slotbandit(&["schema", "apply", "--store", &ks.url]));
    let versions: Vec<String> = (from + 1..=SCHEMA_VERSION).map(|v| v.to_string()).collect();
    assert!(
        applied.contains(&format!(
            "applied schema version(s) {}; now at {SCHEMA_VERSION}",
            versions.join(", ")
        )),
        "{applied}"
    );
}

/// The keys of versions, in order.
fn parts(versions: &Versions) -> Vec<(Part, &str)> {
    versions.keys().map(|(p, n)| (*p, n.as_str())).collect()
}

/// Version 4 adds the priors' city effects: a version-3 keyspace with the empirical-Bayes priors
/// of an earlier build is refused until `schema apply`, after which those priors read as they
/// were (the slot's prior and the banner effects, no city effect: every city gets the banner's
/// prior) until a job writes the hierarchical ones, city effects and all.
#[test]
fn schema_apply_moves_a_version_3_keyspace_to_version_4_keeping_its_priors() {
    let Some(node) = service("SLOTBANDIT_CASSANDRA") else {
        return;
    };
    let ks = Keyspace::new(&node, "sbt_migrate4");
    let k = &ks.name;
    cql_rows(
        &node,
        &[
            format!("DROP TABLE {k}.prior_cities"),
            format!("DELETE FROM {k}.schema_version WHERE version = 4"),
            format!("DELETE FROM {k}.schema_version WHERE version = 5"),
            format!(
                "INSERT INTO {k}.priors (tenant, slot, banner, alpha0, beta0, source) \
                 VALUES ('ajio', 'hero', '', 2.0, 38.0, 'slot_mean')"
            ),
            format!(
                "INSERT INTO {k}.priors (tenant, slot, banner, alpha0, beta0, source) \
                 VALUES ('ajio', 'hero', 'b1', 5.0, 95.0, 'empirical_bayes')"
            ),
        ],
    )
    .unwrap();
    refused_until_schema_apply(&ks, 3);
    let store = ks.store();
    let priors = store.priors("ajio", "hero").unwrap();
    assert!(priors.cities.is_empty());
    let b1 = priors.for_arm("pune", "b1");
    assert_eq!((b1.alpha0, b1.beta0), (5.0, 95.0));
    assert_eq!(b1.source, slotbandit::bandit::PriorSource::EmpiricalBayes);
    assert_eq!(priors.for_arm("pune", "b9").alpha0, 2.0);
    // A job's write adds the city effects in the new table.
    let mut hierarchical = priors.clone();
    hierarchical.cities.insert(
        "pune".into(),
        slotbandit::bandit::CityEffect {
            level: 1.5,
            clicks: 30.0,
        },
    );
    store.write_priors("ajio", "hero", &hierarchical).unwrap();
    assert_eq!(store.priors("ajio", "hero").unwrap(), hierarchical);
}

/// Version 5 adds a slot's rules as static columns of its banner partition: a version-4
/// keyspace's slots are refused until `schema apply`, then read with no rules (the service's
/// defaults) until a slot is written with some.
#[test]
fn schema_apply_moves_a_version_4_keyspace_to_version_5_keeping_its_slots() {
    let Some(node) = service("SLOTBANDIT_CASSANDRA") else {
        return;
    };
    let ks = Keyspace::new(&node, "sbt_migrate5");
    let k = &ks.name;
    cql_rows(
        &node,
        &[
            format!("ALTER TABLE {k}.slot_banners DROP (recency_minutes, holdout_bp)"),
            format!("DELETE FROM {k}.schema_version WHERE version = 5"),
            format!(
                "INSERT INTO {k}.slot_banners \
                 (tenant, slot, banner, image_url, valid_from, valid_to, updated_at) \
                 VALUES ('ajio', 'hero', 'b1', 'b1.png', '2026-11-01', '2026-12-01', '2026-11-01')"
            ),
        ],
    )
    .unwrap();
    refused_until_schema_apply(&ks, 4);
    let store = ks.store();
    let mut hero = store
        .slot("ajio", "hero")
        .unwrap()
        .expect("the slot is kept");
    assert_eq!(hero.banners.len(), 1);
    assert_eq!(hero.rules, SlotRules::default());
    hero.rules = SlotRules {
        recency: Some(Recency::Window(720)),
        holdout_bp: 500,
    };
    store.put_slot(&hero).unwrap();
    assert_eq!(store.slot("ajio", "hero").unwrap(), Some(hero));
}

/// Version 3 adds the city aliases' table: a version-2 keyspace (this build's, without that
/// table and its record) is refused until `schema apply`, which keeps every count.
#[test]
fn schema_apply_moves_a_version_2_keyspace_to_version_3_keeping_its_counts() {
    let Some(node) = service("SLOTBANDIT_CASSANDRA") else {
        return;
    };
    let ks = Keyspace::new(&node, "sbt_migrate3");
    let row = slotbandit::model::CountKey::new(
        std::sync::Arc::new(ArmKey::new("ajio", "hero", "pune", "b1")),
        ALL_TIME,
    );
    let mut write =
        slotbandit::store::ShardWrite::new(slotbandit::model::ShardKey::new("ajio", "pune"));
    write.rows.push((row, Counts::new(10, 2)));
    ks.store().apply_epoch(&[write]).unwrap();
    let k = &ks.name;
    cql_rows(
        &node,
        &[
            format!("DROP TABLE {k}.city_aliases"),
            format!("DROP TABLE {k}.city_merges"),
            format!("DROP TABLE {k}.prior_cities"),
            format!("DELETE FROM {k}.schema_version WHERE version = 3"),
            format!("DELETE FROM {k}.schema_version WHERE version = 4"),
            format!("DELETE FROM {k}.schema_version WHERE version = 5"),
        ],
    )
    .unwrap();
    refused_until_schema_apply(&ks, 2);
    let store = ks.store();
    assert!(store.city_aliases("ajio").unwrap().is_empty());
    let all = store.counts(&CountQuery::default()).unwrap();
    assert_eq!(
        all,
        [(
            ArmKey::new("ajio", "hero", "pune", "b1"),
            Counts::new(10, 2)
        )]
    );
}

#[test]
fn schema_apply_moves_a_version_1_keyspace_to_version_2_keeping_every_count_and_offset() {
    let Some(node) = service("SLOTBANDIT_CASSANDRA") else {
        return;
    };
    let ks = Keyspace::at_version_1(&node, "sbt_migrate");
    let k = &ks.name;
    let count = |t: &str, c: &str, s: &str, b: &str, bucket: i64, imp: u64, clk: u64| {
        format!(
            "INSERT INTO {k}.arm_state (tenant, city, slot, banner, bucket, impressions, clicks) \
             VALUES ('{t}', '{c}', '{s}', '{b}', {bucket}, {imp}, {clk})"
        )
    };
    // As a build of version 1 left it: ajio/pune with history and offsets, ajio/delhi with
    // counts only, zara/surat with offsets only; a slot of ajio and priors of myntra.
    let fill = [
        count("ajio", "pune", "hero", "b1", ALL_TIME, 30, 6),
        count("ajio", "pune", "hero", "b1", 480, 10, 2),
        count("ajio", "pune", "hero", "b1", 481, 20, 4),
        count("ajio", "pune", "hero", "b2", ALL_TIME, 5, 1),
        count("ajio", "pune", "hero", "b2", 481, 5, 1),
        count("ajio", "pune", "footer", "f1", ALL_TIME, 3, 0),
        count("ajio", "pune", "footer", "f1", 100, 3, 0),
        count("ajio", "delhi", "hero", "b1", ALL_TIME, 7, 2),
        count("ajio", "delhi", "hero", "b1", 481, 7, 2),
        count("myntra", "pune", "hero", "m1", ALL_TIME, 9, 9),
        count("myntra", "pune", "hero", "m1", 480, 9, 9),
        format!(
            "UPDATE {k}.arm_state SET applied = applied + {{0: 11, 1: 1011}} \
             WHERE tenant = 'ajio' AND city = 'pune'"
        ),
        format!(
            "UPDATE {k}.arm_state SET applied = applied + {{2: 9}} \
             WHERE tenant = 'zara' AND city = 'surat'"
        ),
        format!(
            "INSERT INTO {k}.slot_banners \
             (tenant, slot, banner, image_url, valid_from, valid_to, updated_at) \
             VALUES ('ajio', 'hero', 'b1', 'https://img/b1.png', '2026-11-01', '2026-12-01', \
             '2026-11-01')"
        ),
        format!(
            "INSERT INTO {k}.priors (tenant, slot, banner, alpha0, beta0, source) \
             VALUES ('myntra', 'hero', '', 2.0, 30.0, 'slot_mean')"
        ),
    ];
    cql_rows(&node, &fill).unwrap();

    refused_until_schema_apply(&ks, 1);

    let store = ks.store();
    let arm = |t: &str, c: &str, s: &str, b: &str| ArmKey::new(t, s, c, b);
    let (pune_b1, pune_b2, pune_f1) = (
        arm("ajio", "pune", "hero", "b1"),
        arm("ajio", "pune", "hero", "b2"),
        arm("ajio", "pune", "footer", "f1"),
    );
    let (delhi_b1, myntra_m1) = (
        arm("ajio", "delhi", "hero", "b1"),
        arm("myntra", "pune", "hero", "m1"),
    );
    let c = Counts::new;
    let counts = |tenant: Option<&str>, city: Option<&str>, from_bucket: Option<i64>| {
        let query = CountQuery {
            tenant: tenant.map(Into::into),
            city: city.map(Into::into),
            from_bucket,
            slot: None,
        };
        store.counts(&query).unwrap()
    };
    assert_eq!(
        counts(None, None, None),
        [
            (pune_f1.clone(), c(3, 0)),
            (delhi_b1.clone(), c(7, 2)),
            (pune_b1.clone(), c(30, 6)),
            (pune_b2.clone(), c(5, 1)),
            (myntra_m1.clone(), c(9, 9)),
        ]
    );
    assert_eq!(
        counts(None, None, Some(481)),
        [
            (delhi_b1.clone(), c(7, 2)),
            (pune_b1.clone(), c(20, 4)),
            (pune_b2.clone(), c(5, 1)),
        ]
    );
    assert_eq!(
        counts(Some("ajio"), Some("pune"), Some(0)),
        [
            (pune_f1.clone(), c(3, 0)),
            (pune_b1.clone(), c(30, 6)),
            (pune_b2.clone(), c(5, 1)),
        ]
    );
    assert_eq!(
        counts(Some("myntra"), None, Some(480)),
        [(myntra_m1, c(9, 9))]
    );

    let pune = store.shards(&|t, c| (t, c) == ("ajio", "pune")).unwrap();
    let key = |a: &ArmKey, bucket: i64, counts: Counts| {
        (CountKey::new(Arc::new(a.clone()), bucket), counts)
    };
    assert_eq!(
        pune,
        [ShardState {
            shard: ShardKey::new("ajio", "pune"),
            rows: vec![
                key(&pune_f1, ALL_TIME, c(3, 0)),
                key(&pune_f1, 100, c(3, 0)),
                key(&pune_b1, ALL_TIME, c(30, 6)),
                key(&pune_b1, 480, c(10, 2)),
                key(&pune_b1, 481, c(20, 4)),
                key(&pune_b2, ALL_TIME, c(5, 1)),
                key(&pune_b2, 481, c(5, 1)),
            ],
            applied: BTreeMap::from([(Partition(0), Offset(11)), (Partition(1), Offset(1011)),]),
            keep_from: None,
        }]
    );
    assert_eq!(
        store.applied_offsets().unwrap(),
        BTreeMap::from([
            (
                ShardKey::new("ajio", "pune"),
                BTreeMap::from([(Partition(0), Offset(11)), (Partition(1), Offset(1011))])
            ),
            (
                ShardKey::new("zara", "surat"),
                BTreeMap::from([(Partition(2), Offset(9))])
            ),
        ])
    );

    assert_eq!(store.tenants().unwrap(), ["ajio", "myntra", "zara"]);
    let ajio = store.versions("ajio").unwrap();
    assert_eq!(
        parts(&ajio),
        [
            (Part::Shard, "delhi"),
            (Part::Shard, "pune"),
            (Part::Slot, "hero")
        ]
    );
    assert_eq!(
        parts(&store.versions("myntra").unwrap()),
        [(Part::Shard, "pune"), (Part::Priors, "hero")]
    );
    assert_eq!(
        parts(&store.versions("zara").unwrap()),
        [(Part::Shard, "surat")]
    );
    assert_eq!(store.versions("ajio").unwrap(), ajio, "versions are stable");
    assert_eq!(store.priors("myntra", "hero").unwrap().slot.beta0, 30.0);
    assert!(store.slot("ajio", "hero").unwrap().is_some());

    let again = ok(slotbandit(&["schema", "apply", "--store", &ks.url]));
    assert!(again.contains("nothing to do"), "{again}");
    assert_eq!(store.versions("ajio").unwrap(), ajio);
}

#[test]
fn a_part_left_marked_by_a_writer_that_stopped_reads_as_changed_until_written_again() {
    let Some(node) = service("SLOTBANDIT_CASSANDRA") else {
        return;
    };
    let ks = Keyspace::new(&node, "sbt_writing");
    let store = ks.store();
    let pune = ArmKey::new("ajio", "hero", "pune", "b1");
    let write = |impressions| {
        let rows = vec![(
            CountKey::all_time(Arc::new(pune.clone())),
            Counts::new(impressions, 0),
        )];
        let shard = ShardWrite {
            rows,
            ..ShardWrite::new(ShardKey::new("ajio", "pune"))
        };
        store.apply_epoch(&[shard]).unwrap();
    };
    write(1);
    let written = store.versions("ajio").unwrap();
    assert_eq!(store.versions("ajio").unwrap(), written);
    // What a writer leaves when it stops between marking the shard and versioning it.
    cql(
        &node,
        &format!(
            "UPDATE {}.part_versions SET writing = true \
             WHERE tenant = 'ajio' AND part = 'shard' AND name = 'pune'",
            ks.name
        ),
    )
    .unwrap();
    let (first, second) = (
        store.versions("ajio").unwrap(),
        store.versions("ajio").unwrap(),
    );
    assert_ne!(first, written);
    assert_ne!(second, first);
    write(2);
    let rewritten = store.versions("ajio").unwrap();
    assert_eq!(store.versions("ajio").unwrap(), rewritten);
    assert_eq!(parts(&rewritten), [(Part::Shard, "pune")]);
}

/// A number the server's metric tables hold (their counts and sizes are integers or doubles).
fn metric_number(value: &Option<CqlValue>) -> f64 {
    match value {
        Some(CqlValue::BigInt(n)) => *n as f64,
        Some(CqlValue::Int(n)) => f64::from(*n),
        Some(CqlValue::Counter(n)) => n.0 as f64,
        Some(CqlValue::Double(n)) => *n,
        None => 0.0,
        other => panic!("not a number: {other:?}"),
    }
}

/// The server's count of single-partition reads of one table, and the most live rows one read of
/// it scanned (`system_views.local_read_latency` and `rows_per_read`, kept since the node started;
/// a keyspace of its own is read only by its test).
fn server_reads(node: &str, keyspace: &str, table: &str) -> (u64, f64) {
    let metric = |view: &str, column: &str| {
        let rows = cql_rows(
            node,
            &[format!(
                "SELECT {column} FROM system_views.{view} \
                 WHERE keyspace_name = '{keyspace}' AND table_name = '{table}'"
            )],
        )
        .unwrap();
        rows.first().map_or(0.0, |r| metric_number(&r.columns[0]))
    };
    (
        metric("local_read_latency", "count") as u64,
        metric("rows_per_read", "max"),
    )
}

/// What the lookup service's cache refresh reads from the server after one epoch changed
/// `changed` of `cities` shards per tenant, each shard holding `buckets` buckets of history:
/// (partitions of arm_counts read, the most rows one read scanned, partitions of part_versions
/// read).
fn reads_after_one_epoch(
    node: &str,
    cities: usize,
    buckets: i64,
    changed: usize,
) -> (u64, f64, u64) {
    const TENANTS: [&str; 2] = ["ajio", "myntra"];
    const BANNERS: usize = 3;
    const WINDOW: i64 = 24;
    let ks = Keyspace::new(node, "sbt_reads");
    let store = ks.store();
    let now = 500_000;
    let shard_rows = |tenant: &str, city: &str, imp: u64| {
        let mut rows = Vec::new();
        for b in 0..BANNERS {
            let arm = Arc::new(ArmKey::new(tenant, "hero", city, &format!("b{b}")));
            rows.push((
                CountKey::all_time(arm.clone()),
                Counts::new(imp * buckets as u64, 1),
            ));
            for bucket in now - buckets + 1..=now {
                rows.push((CountKey::new(arm.clone(), bucket), Counts::new(imp, 0)));
            }
        }
        rows
    };
    let history: Vec<ShardWrite> = TENANTS
        .iter()
        .flat_map(|t| (0..cities).map(move |c| (t, format!("c{c:03}"))))
        .map(|(t, city)| ShardWrite {
            rows: shard_rows(t, &city, 2),
            applied: BTreeMap::from([(Partition(0), Offset(1))]),
            ..ShardWrite::new(ShardKey::new(t, &city))
        })
        .collect();
    for epoch in history.chunks(64) {
        store.apply_epoch(epoch).unwrap();
    }
    for tenant in TENANTS {
        let from = Utc::now() - chrono::Duration::days(1);
        let banners = (0..BANNERS).map(|b| format!("b{b}"));
        let slot = SlotConfig::with_banners(
            tenant,
            "hero",
            banners,
            from,
            from + chrono::Duration::days(9),
        );
        store.put_slot(&slot).unwrap();
    }
    // The service's cache has loaded everything, at a clock inside bucket now + 1.
    let clock = Buckets::hourly().start(now + 1) + chrono::Duration::minutes(30);
    let windows = KeptWindows::service([WINDOW as u32 * 60]);
    let scope = TenantScope::All;
    let loaded = Snapshot::load(store.as_ref(), &windows, clock, &scope).unwrap();
    // One epoch changes a few shards of the first tenant, now with a new bucket.
    let epoch: Vec<ShardWrite> = (0..changed)
        .map(|c| {
            let city = format!("c{c:03}");
            let arm = Arc::new(ArmKey::new(TENANTS[0], "hero", &city, "b0"));
            ShardWrite {
                rows: vec![
                    (
                        CountKey::all_time(arm.clone()),
                        Counts::new(3 * buckets as u64, 1),
                    ),
                    (CountKey::new(arm, now + 1), Counts::new(1, 0)),
                ],
                applied: BTreeMap::from([(Partition(0), Offset(2))]),
                keep_from: Some(now + 1 - buckets),
                shard: ShardKey::new(TENANTS[0], &city),
            }
        })
        .collect();
    store.apply_epoch(&epoch).unwrap();

    let (counts_before, _) = server_reads(node, &ks.name, "arm_counts");
    let (versions_before, _) = server_reads(node, &ks.name, "part_versions");
    let refreshed =
        Snapshot::refresh(Some(&loaded), store.as_ref(), &windows, clock, &scope).unwrap();
    let Refresh::Changed { snapshot, shards } = refreshed else {
        panic!("the epoch changed shards");
    };
    assert_eq!(
        shards, changed,
        "the refresh reads exactly the changed shards"
    );
    let hero = snapshot.slot(TENANTS[0], "hero").unwrap();
    let (arms, city) = hero.all_time.for_city("c000");
    assert_eq!(
        (city, arms.counts[0]),
        ("c000", Counts::new(3 * buckets as u64, 1))
    );
    let window = hero
        .window(Some(WINDOW as u32 * 60))
        .unwrap()
        .for_city("c000")
        .0;
    assert_eq!(
        window.counts[0],
        Counts::new(2 * (WINDOW as u64 - 1) + 1, 0)
    );
    let (counts_after, most_rows) = server_reads(node, &ks.name, "arm_counts");
    let (versions_after, _) = server_reads(node, &ks.name, "part_versions");
    (
        counts_after - counts_before,
        most_rows,
        versions_after - versions_before,
    )
}

#[test]
fn a_cache_refresh_reads_only_the_changed_shards_and_only_their_slices() {
    let Some(node) = service("SLOTBANDIT_CASSANDRA") else {
        return;
    };
    let changed = 3;
    // 2 tenants × 5 shards with 2 days of hourly buckets; 2 tenants × 100 shards with 20 days.
    let small = reads_after_one_epoch(&node, 5, 48, changed);
    let large = reads_after_one_epoch(&node, 100, 480, changed);
    eprintln!(
        "partitions of arm_counts read, most rows one read scanned, partitions of part_versions \
         read: 10 shards × 48 buckets {small:?}; 200 shards × 480 buckets {large:?}"
    );
    // Per changed shard, one read of its all-time rows and one of its window; per tenant, one
    // read of its versions.
    assert_eq!(small.0, 2 * changed as u64);
    assert_eq!(large.0, small.0);
    assert_eq!((small.2, large.2), (2, 2));
    // A read scans its slice (the window: 24 buckets × 3 banners), never the shard's history
    // (480 buckets × 3 banners in the large store).
    assert_eq!(large.1, small.1);
    assert!(large.1 < 100.0, "{large:?}");
}
