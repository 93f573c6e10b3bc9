//! The `slotbandit` binary as a user runs it: flags, files, exit codes and messages.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::{gen, slotbandit, stderr, stdout};

use slotbandit::model::parquet::{list_parquet_files, read_events};
use slotbandit::model::{Event, EventKind};

/// Fails with the named message and never with a panic.
fn assert_fails_with(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert!(!err.contains("panicked"), "panicked: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
}

fn all_events(dir: &Path) -> Vec<Event> {
    list_parquet_files(dir)
        .unwrap()
        .iter()
        .flat_map(|f| read_events(f).unwrap())
        .collect()
}

#[test]
fn gen_flags_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x");
    for (flag, value) in [
        ("--events", "0"),
        ("--events", "ten"),
        ("--days", "0"),
        ("--days", "100000"),
        ("--tenants", "1001"),
        ("--cities", "0"),
        ("--banners", "-3"),
        ("--start", "2026-13-01"),
        ("--seed", "1.5"),
    ] {
        let o = gen(&out, &format!("{flag} {value}"));
        assert_fails_with(&o, &[flag]);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{flag} {value}: usage errors exit 2"
        );
    }
    assert_fails_with(&slotbandit(&["gen"]), &["--out"]);
    let too_many_arms = gen(&out, "--tenants 1000 --cities 1000 --banners 5");
    assert_fails_with(
        &too_many_arms,
        &["--tenants", "--cities", "--banners", "arms"],
    );
    assert!(!out.exists(), "nothing is written on a usage error");
}

#[test]
fn gen_is_deterministic_links_clicks_and_partitions_by_ist_date() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    let args = "--events 20000 --days 3 --seed 7 --tenants 2 --cities 5 --banners 4";
    for out in [&a, &b] {
        let o = gen(out, args);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stdout(&o).contains("rows/s"));
    }
    let other_seed = args.replace("--seed 7", "--seed 8");
    assert!(gen(&c, &other_seed).status.success());

    let (ea, eb, ec) = (all_events(&a), all_events(&b), all_events(&c));
    assert_eq!(ea, eb, "same seed, same events");
    assert_ne!(ea, ec, "another seed, other events");

    let impressions: Vec<&Event> = ea
        .iter()
        .filter(|e| e.kind == EventKind::Impression)
        .collect();
    assert_eq!(impressions.len(), 20_000);
    let by_request: std::collections::HashMap<&str, &Event> = impressions
        .iter()
        .map(|e| (e.request_id.as_deref().unwrap(), *e))
        .collect();
    for click in ea.iter().filter(|e| e.kind == EventKind::Click) {
        let imp = by_request[click.request_id.as_deref().unwrap()];
        assert_eq!(imp.arm(), click.arm());
        assert!(click.ts > imp.ts);
        assert_eq!(imp.customer_id, click.customer_id);
    }
    for f in list_parquet_files(&a).unwrap() {
        let dt = f
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        for e in read_events(&f).unwrap() {
            assert_eq!(slotbandit::time::dt_partition(e.ts), dt);
        }
    }
    let truth: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("_truth.json")).unwrap()).unwrap();
    assert_eq!(truth["best"].as_array().unwrap().len(), 2 * 2 * 5);
    for arm in truth["arms"].as_array().unwrap() {
        let ctr = arm["ctr"].as_f64().unwrap();
        assert!((0.005..=0.08).contains(&ctr), "{ctr}");
    }
    let slots = slotbandit(&["slots", "check", a.join("_slots.csv").to_str().unwrap()]);
    assert!(slots.status.success(), "{}", stderr(&slots));
}

#[test]
fn gen_refuses_a_non_empty_folder_without_force() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keep.txt"), "mine").unwrap();
    let o = gen(dir.path(), "--events 10");
    assert_fails_with(&o, &["not empty", "--force"]);
    assert!(gen(dir.path(), "--events 10 --force").status.success());
}

#[test]
fn slots_check_prints_ist_times() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/slots/ajio_hero.csv");
    let o = slotbandit(&["slots", "check", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    assert!(table.contains("IST"));
    assert_eq!(table.matches("ajio").count(), 10, "{table}");
    let json = slotbandit(&["slots", "check", file.to_str().unwrap(), "--format", "json"]);
    let parsed: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(parsed[0]["banners"].as_array().unwrap().len(), 10);
}

#[test]
fn broken_slot_csvs_are_rejected_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let header = "platform,slotname,imageid,imagename,validfrom,validto\n";
    let cases = [
        ("ajio,hero,b1,b1.png,01-Nov-26 00:00:00,soon\n", vec!["line 2", "validto"]),
        ("ajio,hero,b1,b1.png,01-Nov-26 00:00:00\n", vec!["line 2"]),
        ("AJIO,hero,b1,b1.png,01-Nov-26 00:00:00,01-Dec-26 00:00:00\n", vec!["line 2", "platform"]),
        ("ajio,hero,b1,,01-Nov-26 00:00:00,01-Dec-26 00:00:00\n", vec!["imagename"]),
        ("ajio,hero,b1,b1.png,01-Dec-26 00:00:00,01-Nov-26 00:00:00\n", vec!["validto", "after validfrom"]),
        ("ajio,hero,b1,b1.png,01-Nov-26 00:00:00,01-Dec-26 00:00:00\najio,hero,b1,b2.png,01-Nov-26 00:00:00,01-Dec-26 00:00:00\n", vec!["line 3", "twice"]),
        ("ajio,hero,b\"1,b1.png\n", vec!["slot CSV"]),
    ];
    for (i, (rows, needles)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.csv"));
        std::fs::write(&path, format!("{header}{rows}")).unwrap();
        let o = slotbandit(&["slots", "check", path.to_str().unwrap()]);
        assert_fails_with(&o, needles);
    }
    let bin = dir.path().join("binary.csv");
    std::fs::write(&bin, [0xff, 0xfe, 0x00, 0x01, b'\n']).unwrap();
    assert_fails_with(
        &slotbandit(&["slots", "check", bin.to_str().unwrap()]),
        &["binary.csv"],
    );
    let missing = dir.path().join("missing.csv");
    assert_fails_with(
        &slotbandit(&["slots", "check", missing.to_str().unwrap()]),
        &["missing.csv"],
    );
}

#[test]
fn truncated_parquet_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    assert!(gen(&data, "--events 2000 --days 1").status.success());
    let file = list_parquet_files(&data).unwrap().remove(0);
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let o = slotbandit(&["demo", "--input", data.to_str().unwrap()]);
    assert_fails_with(&o, &["part-0.parquet"]);
}

#[test]
fn demo_prints_the_per_city_table_of_the_sample() {
    let o = Command::new(env!("CARGO_BIN_EXE_slotbandit"))
        .args(["demo", "--once"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for needle in ["ajio", "hero", "mumbai", "P(best)", "true best"] {
        assert!(out.contains(needle), "no {needle} in {out}");
    }
}

/// The demo end to end with a 10% holdout: a simulated audience clicking with the sample's
/// true CTRs through the real service, stream job and store; TS's uplift over the holdout is
/// positive with a 95% interval that excludes 0 (the sample's true difference is about 1.2 pp).
/// 60,000 visits, not the 20,000 a quiet machine needs: beside the other tests the job and the
/// service refresh less often per visit, so TS learns later and the interval is wider.
#[test]
fn the_demo_with_a_holdout_shows_an_uplift_that_excludes_zero() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("demo.redb");
    let o = Command::new(env!("CARGO_BIN_EXE_slotbandit"))
        .args([
            "demo",
            "--audience",
            "--holdout",
            "0.1",
            "--audience-rate",
            "2000",
        ])
        .args([
            "--audience-visits",
            "60000",
            "--listen",
            "127.0.0.1:0",
            "--store",
        ])
        .arg(&store)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let last = out
        .lines()
        .rev()
        .find(|l| l.starts_with("uplift: "))
        .unwrap_or_else(|| panic!("no uplift line in {out}"));
    let numbers: Vec<f64> = last
        .split(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .filter_map(|w| w.parse().ok())
        .collect();
    // TS n, CTR, holdout n, CTR, difference, 95, low, high, extra clicks, true difference
    let [ts, _, holdout, _, difference, _, low, high, _, truth] = numbers[..] else {
        panic!("unexpected uplift line {last:?}: {numbers:?}");
    };
    let share = holdout / (ts + holdout);
    assert!(
        (0.08..0.12).contains(&share),
        "holdout share {share} in {last}"
    );
    assert!(low > 0.0 && low < difference && difference < high, "{last}");
    assert!(
        truth > 0.5,
        "the sample's TS beats uniform by about 1.2 pp: {last}"
    );
}

#[test]
fn demo_flags_out_of_range_are_refused() {
    let o = slotbandit(&["demo", "--once", "--holdout", "0.6"]);
    assert_fails_with(&o, &["--holdout", "0.5"]);
    let o = slotbandit(&["demo", "--once", "--audience-visits", "10"]);
    assert_fails_with(&o, &["--audience"]);
}

#[test]
fn job_files_set_flags_and_the_command_line_wins() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job.toml");
    let out = dir.path().join("out");
    std::fs::write(
        &job,
        format!(
            "[gen]\nout = {:?}\nevents = 500\ndays = 1\nseed = 3\nforce = true\n",
            out.display()
        ),
    )
    .unwrap();
    let cfg = job.to_str().unwrap();
    let o = slotbandit(&["gen", "--config", cfg]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("500 impressions"), "{}", stdout(&o));
    let o = slotbandit(&["gen", "--config", cfg, "--events", "700"]);
    assert!(stdout(&o).contains("700 impressions"), "{}", stdout(&o));

    for (text, needles) in [
        ("[gen]\nevnts = 5\n", vec!["--evnts"]),
        ("[gen]\nevents = 0\n", vec!["--events"]),
        (
            "[gen]\nevents = [1, {a = 1}]\n",
            vec!["must be a string, number or boolean"],
        ),
        ("[backfill]\ninput = \"x\"\n", vec!["no [gen] table"]),
        ("[gen\n", vec![cfg]),
    ] {
        std::fs::write(&job, text).unwrap();
        let o = slotbandit(&["gen", "--config", cfg]);
        assert_fails_with(&o, &needles);
    }
    assert_fails_with(
        &slotbandit(&["gen", "--config", "/nonexistent/job.toml"]),
        &["/nonexistent/job.toml"],
    );
}

#[test]
fn the_store_env_var_overrides_the_job_file() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job.toml");
    std::fs::write(
        &job,
        "[posteriors]\nstore = \"embedded:/nonexistent/from-file.redb\"\n",
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_slotbandit"))
        .args(["posteriors", "--config", job.to_str().unwrap()])
        .env("SLOTBANDIT_STORE", "embedded:/nonexistent/from-env.redb")
        .output()
        .unwrap();
    assert_fails_with(&o, &["from-env.redb"]);
}

#[test]
fn backfill_refuses_an_epoch_of_no_rows_naming_the_flag() {
    for bad in ["0", "-5", "many"] {
        let flag = format!("--epoch-rows={bad}");
        let o = slotbandit(&["backfill", "--input", "datasets/sample", &flag]);
        assert!(!o.status.success(), "--epoch-rows {bad} was accepted");
        let err = stderr(&o);
        assert!(err.contains("--epoch-rows"), "{err}");
    }
}

#[test]
fn stream_repeat_windows_and_report_inputs_out_of_range_are_refused_naming_the_flag() {
    for flag in ["--impression-dedup-minutes", "--click-dedup-minutes"] {
        for bad in ["0", "100001", "an-hour"] {
            let o = slotbandit(&[
                "stream",
                "--log",
                "file:/nonexistent",
                &format!("{flag}={bad}"),
            ]);
            assert_fails_with(&o, &[flag]);
        }
    }
    let o = slotbandit(&["report", "--input", "datasets/sample", "--workers", "0"]);
    assert_fails_with(&o, &["--workers"]);
    let o = slotbandit(&["report", "--input", "/nonexistent/history"]);
    assert_fails_with(&o, &["--input", "/nonexistent/history"]);
    let empty = tempfile::tempdir().unwrap();
    let o = slotbandit(&["report", "--input", empty.path().to_str().unwrap()]);
    assert_fails_with(&o, &["--input", "no Parquet files"]);
}
