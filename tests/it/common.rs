//! Helpers shared by the tests that run the `slotbandit` binary.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

use slotbandit::model::parquet::read_events;
use slotbandit::model::{Event, EventKind};

pub fn slotbandit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_slotbandit"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the binary runs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The stdout of a run that must succeed.
pub fn ok(o: Output) -> String {
    assert!(o.status.success(), "failed: {}", stderr(&o));
    String::from_utf8(o.stdout).unwrap()
}

/// `slotbandit gen --out OUT` with flags written as one string.
pub fn gen(out: &Path, flags: &str) -> Output {
    let mut args = vec!["gen", "--out", out.to_str().unwrap()];
    args.extend(flags.split_whitespace());
    slotbandit(&args)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The address of a real service (`SLOTBANDIT_CASSANDRA`, `SLOTBANDIT_KAFKA`), or `None` when it
/// is not set, in which case the calling test skips with a note. Under
/// `SLOTBANDIT_REQUIRE_SERVICES=1` (scripts/test.sh) a missing service fails the test instead.
pub fn service(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(addr) if !addr.is_empty() => Some(addr),
        _ if std::env::var("SLOTBANDIT_REQUIRE_SERVICES").as_deref() == Ok("1") => {
            panic!("{var} is not set but SLOTBANDIT_REQUIRE_SERVICES=1 (start it with scripts/services/)")
        }
        _ => {
            eprintln!("skipped: {var} is not set (scripts/services/ starts the service)");
            None
        }
    }
}

/// A name unique to this test run, for keyspaces and topics that tests must not share.
pub fn unique_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}_{}_{nanos}", std::process::id())
}

pub type Counts = BTreeMap<(String, String, String, String), (u64, u64)>;

pub fn events_of(files: &[std::path::PathBuf]) -> Vec<Event> {
    files.iter().flat_map(|f| read_events(f).unwrap()).collect()
}

/// IST hour bucket, computed here independently: hours since 1970-01-01 00:00 IST.
pub fn ist_hour(e: &Event) -> i64 {
    (e.ts.timestamp() + 19_800).div_euclid(3600)
}

pub fn recount<'a>(events: impl IntoIterator<Item = &'a Event>) -> Counts {
    let mut c = Counts::new();
    for e in events {
        let v = c
            .entry((
                e.tenant.clone(),
                e.slot.clone(),
                e.city.clone(),
                e.banner.clone(),
            ))
            .or_default();
        match e.kind {
            EventKind::Impression => v.0 += 1,
            EventKind::Click => v.1 += 1,
        }
    }
    c
}

pub fn posteriors(store: &str, extra: &[&str]) -> Counts {
    let mut args = vec!["posteriors", "--store", store, "--format", "csv"];
    args.extend_from_slice(extra);
    let csv = ok(slotbandit(&args));
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "tenant,slot,city,banner,impressions,clicks,alpha,beta,mean,lower95,upper95"
    );
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let (imp, clk): (u64, u64) = (f[4].parse().unwrap(), f[5].parse().unwrap());
            let (alpha, beta): (f64, f64) = (f[6].parse().unwrap(), f[7].parse().unwrap());
            // Beta(α0 + clicks, β0 + impressions − clicks), the prior the job kept a proper one.
            let (alpha0, beta0) = (alpha - clk as f64, beta - (imp - clk.min(imp)) as f64);
            assert!(
                alpha0 > 0.0 && beta0 > 0.0 && (alpha0 + beta0).is_finite(),
                "{l}"
            );
            (
                (f[0].into(), f[1].into(), f[2].into(), f[3].into()),
                (imp, clk),
            )
        })
        .collect()
}

pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct free ports: every listener stays bound until all are chosen, so the kernel
/// cannot hand the same port out twice (two listeners of one Kafka broker on one port fail).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<_> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// `n` free local ports below the kernel's ephemeral range (32768 and up by default), for a
/// service that a test stops and starts again on the same ports: a port from the ephemeral range
/// can be handed to some client socket while the service is down, and the restart then fails to
/// bind it. Distinct within this test process; free when picked.
fn service_ports(n: usize) -> Vec<u16> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let offset = std::process::id().wrapping_mul(7919);
    let mut listeners = Vec::new();
    while listeners.len() < n {
        let next = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(
            next < SPAN,
            "no free service port left in {FIRST}..{}",
            FIRST + SPAN
        );
        let port = FIRST + (offset.wrapping_add(next) % SPAN);
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port as u16)) {
            listeners.push(listener);
        }
    }
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// Writes a timely hosts file for `n` processes on distinct local ports and returns its path.
pub fn hosts_file(dir: &Path, n: usize) -> std::path::PathBuf {
    let path = dir.join("hosts.txt");
    let lines: String = free_ports(n)
        .iter()
        .map(|port| format!("127.0.0.1:{port}\n"))
        .collect();
    std::fs::write(&path, lines).unwrap();
    path
}

/// Starts `slotbandit serve ARGS --listen 127.0.0.1:0` and returns the process and its base URL
/// (read from the "listening on" line it prints once bound).
pub fn spawn_serve(args: &[&str], envs: &[(&str, &str)]) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_slotbandit"))
        .arg("serve")
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .envs(envs.iter().copied())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("serve printed {line:?} instead of its address"))
        .to_string();
    (child, base)
}

/// `slotbandit keys add` for a store; returns the key.
pub fn keys_add(store: &str, tenant: &str, role: &str) -> String {
    ok(slotbandit(&[
        "keys", "add", "--store", store, "--tenant", tenant, "--role", role,
    ]))
    .trim()
    .to_string()
}

/// A single-node Cassandra or Kafka of a test's own (scripts/services/, on free ports with a
/// data folder in a temporary directory), which the test may stop and start without disturbing
/// the shared services the other tests use. Stopped when dropped.
pub struct OwnService {
    name: &'static str,
    dir: tempfile::TempDir,
    ports: Vec<(&'static str, u16)>,
    pub address: String,
}

impl OwnService {
    pub fn cassandra() -> Self {
        Self::start("cassandra", &["PORT", "STORAGE_PORT"])
    }

    pub fn kafka() -> Self {
        Self::start("kafka", &["PORT", "CONTROLLER_PORT"])
    }

    fn start(name: &'static str, ports: &[&'static str]) -> Self {
        let mut own = Self {
            name,
            dir: tempfile::tempdir().unwrap(),
            ports: ports
                .iter()
                .copied()
                .zip(service_ports(ports.len()))
                .collect(),
            address: String::new(),
        };
        own.address = format!("127.0.0.1:{}", own.ports[0].1);
        own.run(&["start"]);
        own
    }

    fn var(&self, key: &str) -> String {
        format!("SLOTBANDIT_{}_{key}", self.name.to_uppercase())
    }

    pub fn command(&self, action: &str) -> Command {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scripts/services")
            .join(format!("{}.sh", self.name));
        let mut c = Command::new(script);
        c.arg(action)
            .env(self.var("DATA"), self.dir.path().join(self.name))
            .env(self.var("HEAP"), "512m");
        for (key, port) in &self.ports {
            c.env(self.var(key), port.to_string());
        }
        c
    }

    fn check(&self, out: Output, action: &str) {
        assert!(
            out.status.success(),
            "{}.sh {action}: {}",
            self.name,
            stderr(&out)
        );
    }

    /// Runs a script action (`stop`, `start`, `topic NAME N`, …) and requires it to succeed.
    pub fn run(&self, args: &[&str]) {
        let out = self.command(args[0]).args(&args[1..]).output().unwrap();
        self.check(out, args[0]);
    }
}

impl Drop for OwnService {
    fn drop(&mut self) {
        let _ = self.command("stop").output();
    }
}

/// A child process killed (and reaped) when dropped, so a failing test leaves none behind.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `slotbandit stream` from `log` into `store` up to the log's end, in epochs of `epoch_ms`,
/// with `extra` flags; fails the test unless it succeeds, and returns its stdout.
pub fn stream_to_end(log: &str, store: &str, epoch_ms: u32, extra: &[&str]) -> String {
    let epoch_ms = epoch_ms.to_string();
    let mut args = vec![
        "stream",
        "--log",
        log,
        "--store",
        store,
        "--stop-at-end",
        "--epoch-ms",
        &epoch_ms,
    ];
    args.extend_from_slice(extra);
    ok(slotbandit(&args))
}

/// `slotbandit stream` from `log` into `store` in the background, in epochs of 200 ms, until
/// dropped.
pub fn stream_job(log: &str, store: &str) -> Killed {
    let job = Command::new(env!("CARGO_BIN_EXE_slotbandit"))
        .args([
            "stream",
            "--log",
            log,
            "--store",
            store,
            "--epoch-ms",
            "200",
        ])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("the binary runs");
    Killed(job)
}
