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
