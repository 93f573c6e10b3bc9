//! Exactly once under faults, on real Kafka and real Cassandra: the stream job killed with
//! SIGKILL at random moments while events are produced, the broker restarted and Cassandra
//! restarted mid-stream. After each scenario every arm's counts equal an independent recount.
//!
//! The restarts are of a Kafka and a Cassandra of this test's own (`OwnService`), so the tests
//! running beside it on the shared services are not disturbed.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    events_of, gen, ok, posteriors, recount, service, slotbandit, unique_name, Counts, OwnService,
};

use rand::{RngExt, SeedableRng};
use slotbandit::model::parquet::list_parquet_files;

struct Setup {
    _dir: tempfile::TempDir,
    data: PathBuf,
    log: String,
    store: String,
}

impl Setup {
    fn new(kafka: &OwnService, cassandra: &OwnService, gen_flags: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        ok(gen(&data, gen_flags));
        let topic = unique_name("faults").replace('_', "-");
        kafka.run(&["topic", &topic, "4"]);
        let keyspace = unique_name("faults");
        let store = format!("cassandra://{}/{keyspace}", cassandra.address);
        ok(slotbandit(&["schema", "apply", "--store", &store]));
        Self {
            _dir: dir,
            data,
            log: format!("kafka://{}/{topic}", kafka.address),
            store,
        }
    }

    fn produce(&self, extra: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_slotbandit"));
        c.args(["produce", "--log", &self.log, "--from"])
            .arg(&self.data)
            .args(extra)
            .env("RUST_LOG", "warn");
        c
    }

    fn stream(&self, stop_at_end: bool) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_slotbandit"));
        c.args(["stream", "--log", &self.log, "--store", &self.store])
            .args(["--epoch-ms", "100", "-w", "2"])
            .env("RUST_LOG", "warn");
        if stop_at_end {
            c.arg("--stop-at-end");
        }
        c
    }

    /// Runs the job to the end of the log and returns the counts in the store.
    fn finish(&self) -> Counts {
        let out = self.stream(true).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        posteriors(&self.store, &[])
    }

    fn expected(&self) -> Counts {
        recount(&events_of(&list_parquet_files(&self.data).unwrap()))
    }
}

fn spawn_quiet(mut c: Command) -> Child {
    c.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// SIGKILL at five or more random moments while a producer appends, a restart after each.
fn kill_9_at_random_moments(s: &Setup, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut producer = spawn_quiet(s.produce(&["--rate", "40000"]));
    let mut kills = 0;
    let started = Instant::now();
    while kills < 5
        || (producer.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(120))
    {
        let mut job = spawn_quiet(s.stream(false));
        std::thread::sleep(Duration::from_millis(rng.random_range(300..2500)));
        job.kill().unwrap(); // SIGKILL
        job.wait().unwrap();
        kills += 1;
    }
    assert!(producer.wait().unwrap().success(), "the producer failed");
    assert_eq!(s.finish(), s.expected(), "after {kills} kills");
}

/// A service stopped and started while the job runs; the job rides it out or fails cleanly, and
/// a restart completes the counts.
fn restart_mid_stream(s: &Setup, service: &OwnService) {
    assert!(s.produce(&[]).status().unwrap().success());
    let mut job = spawn_quiet(s.stream(true));
    std::thread::sleep(Duration::from_millis(1500));
    service.run(&["stop"]);
    std::thread::sleep(Duration::from_secs(3));
    service.run(&["start"]);
    let _ = job.wait().unwrap();
    assert_eq!(
        s.finish(),
        s.expected(),
        "after a {} restart",
        service.address
    );
}

#[test]
fn exactly_once_under_kills_and_service_restarts() {
    if service("SLOTBANDIT_KAFKA").is_none() || service("SLOTBANDIT_CASSANDRA").is_none() {
        return;
    }
    let (kafka, cassandra) = (OwnService::kafka(), OwnService::cassandra());
    let flags = "--events 120000 --days 2 --tenants 2 --cities 6 --banners 4 --seed 21";
    kill_9_at_random_moments(&Setup::new(&kafka, &cassandra, flags), 7);
    restart_mid_stream(&Setup::new(&kafka, &cassandra, flags), &kafka);
    restart_mid_stream(&Setup::new(&kafka, &cassandra, flags), &cassandra);
}
