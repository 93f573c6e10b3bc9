//! Helpers shared by the tests that run the `slotbandit` binary.
#![allow(dead_code)] // each test crate uses its own subset

use std::path::Path;
use std::process::{Command, Output};

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
