//! The Cassandra store against a real Cassandra (`SLOTBANDIT_CASSANDRA`), each test in its own
//! keyspace, in what only Cassandra does: the same posteriors as the embedded store from a
//! backfill, idempotent backfills, one process per share of the shards, isolated shard writes,
//! the customer command on its history, the schema's versions, and a Cassandra that stops in the
//! middle of a backfill (a second node of our own, so the shared one is left alone). What every
//! store promises is checked against both backends in `posterior_store.rs`.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::common::{gen, ok, service, slotbandit, stderr, unique_name};
use crate::posterior_store::customer_history;

use slotbandit::model::{ArmKey, CountKey, Counts, Offset, Partition, ShardKey};
use slotbandit::store::{open_store, PosteriorStore, ShardState, ShardWrite};

/// Runs CQL on a node directly with the driver (what the store does not offer: DROP).
pub(crate) fn cql(node: &str, statement: &str) -> Result<(), String> {
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
        session
            .query_unpaged(statement, &[])
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
}

/// A keyspace of this test with the schema applied; dropped at the end.
pub(crate) struct Keyspace {
    node: String,
    pub(crate) name: String,
    url: String,
}

impl Keyspace {
    pub(crate) fn new(node: &str, prefix: &str) -> Self {
        Self::with_url_suffix(node, prefix, "")
    }

    fn with_url_suffix(node: &str, prefix: &str, suffix: &str) -> Self {
        let name = unique_name(prefix);
        let url = format!("cassandra://{node}/{name}{suffix}");
        let applied = ok(slotbandit(&["schema", "apply", "--store", &url]));
        assert!(applied.contains("applied schema version(s) 1"), "{applied}");
        Self {
            node: node.to_string(),
            name,
            url,
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
        want[3].contains(",*,"),
        "the fallback shows city *: {}",
        want[3]
    );
    assert_eq!(views(&ks.url, &t, &s, &c), want);

    ok(backfill(&h.data, &ks.url, &["-w", "3"]));
    assert_eq!(
        views(&ks.url, &t, &s, &c),
        want,
        "a second backfill changed the posteriors"
    );

    // Priors written to and read from Cassandra give the same posteriors too.
    for store in [embedded, &ks.url] {
        ok(slotbandit(&["priors", "--store", store]));
    }
    let with_priors = views(embedded, &t, &s, &c);
    assert_ne!(with_priors, want);
    assert_eq!(views(&ks.url, &t, &s, &c), with_priors);
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

    let hosts = h.dir.path().join("hosts.txt");
    std::fs::write(
        &hosts,
        format!("127.0.0.1:{}\n127.0.0.1:{}\n", free_port(), free_port()),
    )
    .unwrap();
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
    let (p0, p1) = (spawn("0"), spawn("1"));
    let (out0, out1) = (
        ok(p0.wait_with_output().unwrap()),
        ok(p1.wait_with_output().unwrap()),
    );
    // Both processes wrote shards: each its own workers' share.
    assert!(shard_batches(&out0) > 0, "{out0}");
    assert!(shard_batches(&out1) > 0, "{out1}");
    assert_same_posteriors(&ks.url, &h.embedded);
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

/// A second Cassandra node on ports and a data folder of its own, which this test may stop.
struct OwnNode {
    dir: tempfile::TempDir,
    port: u16,
    storage_port: u16,
}

impl OwnNode {
    fn script(&self, action: &str) -> Output {
        Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/services/cassandra.sh"
        ))
        .arg(action)
        .env("SLOTBANDIT_CASSANDRA_PORT", self.port.to_string())
        .env(
            "SLOTBANDIT_CASSANDRA_STORAGE_PORT",
            self.storage_port.to_string(),
        )
        .env(
            "SLOTBANDIT_CASSANDRA_DATA",
            self.dir.path().join("cassandra"),
        )
        .env("SLOTBANDIT_CASSANDRA_HEAP", "512m")
        .output()
        .unwrap()
    }

    fn start() -> Self {
        let node = Self {
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
            storage_port: free_port(),
        };
        node.run("start");
        node
    }

    fn run(&self, action: &str) {
        let out = self.script(action);
        assert!(
            out.status.success(),
            "cassandra.sh {action}: {}",
            stderr(&out)
        );
    }
}

impl Drop for OwnNode {
    fn drop(&mut self) {
        self.script("stop");
    }
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
    let own = OwnNode::start();
    let address = format!("127.0.0.1:{}", own.port);
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
    own.run("stop");
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

    own.run("start");
    ok(backfill(&h.data, &ks.url, &["-w", "2"]));
    assert_same_posteriors(&ks.url, &h.embedded);
}
