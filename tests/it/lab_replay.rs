//! Off-policy evaluation on logs in the Open Bandit Dataset's CSV format: a small synthetic log
//! (no network), and the real sample when datasets/fetch_obd.sh has fetched it.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use rand::RngExt;
use slotbandit::bandit::seeded_rng;
use slotbandit::sim::replay::{
    bootstrap, ipw_terms, observed, read_obd_csv, replay_thompson, replay_uniform,
    thompson_rank_probabilities, trained_samplers,
};

const CTRS: [f64; 3] = [0.3, 0.1, 0.05];

/// A uniform-random log in OBD's layout: an unnamed index column, then timestamp, item_id,
/// position, click, propensity_score and a user feature.
fn synthetic_log(rows: usize, seed: u64) -> String {
    let mut rng = seeded_rng(seed);
    let mut csv =
        String::from(",timestamp,item_id,position,click,propensity_score,user_feature_0\n");
    for i in 0..rows {
        let item = rng.random_range(0..CTRS.len());
        let position = rng.random_range(1..=3);
        let click = u8::from(rng.random::<f64>() < CTRS[item]);
        let (minute, second) = (i / 60, i % 60);
        writeln!(
            csv,
            "{i},2019-11-24 {:02}:{minute:02}:{second:02}.000000+00:00,{item},{position},{click},{:.6},ab12",
            minute / 60 % 24,
            1.0 / CTRS.len() as f64
        )
        .unwrap();
    }
    csv
}

fn write_log(dir: &Path, behaviour: &str, campaign: &str, csv: &str) {
    let folder = dir.join(behaviour).join(campaign);
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join(format!("{campaign}.csv")), csv).unwrap();
}

#[test]
fn estimators_recover_the_synthetic_truth() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), "random", "men", &synthetic_log(30_000, 1));
    let log = read_obd_csv(&dir.path().join("random/men/men.csv")).unwrap();
    assert_eq!((log.items, log.positions, log.rows.len()), (3, 3, 30_000));
    let mean_ctr = CTRS.iter().sum::<f64>() / 3.0;
    let mut rng = seeded_rng(2);
    let seen = observed(&log, 300, &mut rng);
    assert!(seen.low < mean_ctr && mean_ctr < seen.high, "{seen:?}");

    // Uniform target on a uniform log: every IPW weight is 1, the estimate is the observed CTR.
    let uniform = vec![vec![1.0 / 3.0; 3]; 3];
    let terms = ipw_terms(&log.rows, &uniform);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!((mean(&terms) / log.observed_ctr() - 1.0).abs() < 1e-5);

    // Thompson sampling trained on the first half ranks the best item first almost always.
    let (train, test) = log.rows.split_at(15_000);
    let samplers = trained_samplers(train, 3, 100.0);
    let pi = thompson_rank_probabilities(&samplers, 3, 5_000, &mut rng);
    assert!(pi[0][0] > 0.99, "{pi:?}");
    for row in &pi {
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    }
    let ts_ipw = bootstrap(&ipw_terms(test, &pi), 300, &mut rng, mean);
    // Position 1 gets item 0 (CTR 0.3), positions 2 and 3 mostly items 1 and 2.
    let expected = (0.3 + 0.1 + 0.05) / 3.0;
    assert!(
        ts_ipw.low < expected && expected < ts_ipw.high,
        "{ts_ipw:?}"
    );

    // Replay: online TS learns the best item; uniform's matched rows average the CTRs.
    let ts = replay_thompson(&log, 1, &mut rng);
    let uni = replay_uniform(&log, &mut rng);
    let (ts_ctr, uni_ctr) = (mean(&ts), mean(&uni));
    assert!(
        ts.len() > 5_000 && uni.len() > 5_000,
        "{} {}",
        ts.len(),
        uni.len()
    );
    assert!((uni_ctr - mean_ctr).abs() < 0.03, "{uni_ctr}");
    assert!(ts_ctr > 0.25, "{ts_ctr}");
}

#[test]
fn malformed_logs_are_rejected_with_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.csv");
    std::fs::write(&path, ",timestamp,item_id,position,click\n0,t,1,1,0\n").unwrap();
    let err = read_obd_csv(&path).unwrap_err().to_string();
    assert!(err.contains("propensity_score"), "{err}");
    std::fs::write(
        &path,
        ",timestamp,item_id,position,click,propensity_score\n0,t,1,1,0,0.5\n1,t,1,1,2,0.5\n",
    )
    .unwrap();
    let err = read_obd_csv(&path).unwrap_err().to_string();
    assert!(err.contains("line 3") && err.contains("click"), "{err}");
}

fn slotbandit(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_slotbandit"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the binary runs")
}

#[test]
fn replay_cli_reports_every_estimator() {
    let dir = tempfile::tempdir().unwrap();
    for behaviour in ["random", "bts"] {
        write_log(dir.path(), behaviour, "men", &synthetic_log(3_000, 4));
    }
    let out = dir.path().join("replay.csv");
    let o = slotbandit(&[
        "replay",
        "--log",
        dir.path().to_str().unwrap(),
        "--campaign",
        "men",
        "--bootstrap",
        "100",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let csv = std::fs::read_to_string(&out).unwrap();
    for needle in [
        "men,random,observed,",
        "men,random,replay,ts,",
        "men,bts,ipw (2nd half),ts,",
    ] {
        assert!(csv.contains(needle), "{needle}: {csv}");
    }
    let missing = slotbandit(&[
        "replay",
        "--log",
        dir.path().to_str().unwrap(),
        "--campaign",
        "all",
    ]);
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        !missing.status.success() && err.contains("fetch_obd.sh"),
        "{err}"
    );
    let bad = slotbandit(&[
        "replay",
        "--log",
        dir.path().to_str().unwrap(),
        "--policy",
        "ucb9",
    ]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown policy"));
}

/// On the real sample, when fetched: 10,000 rows per log, 80 items in `all`, and the observed
/// CTRs of datasets-notes (random/all 0.38%, bts/all 0.42%).
#[test]
fn real_obd_sample_when_fetched() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/obd");
    let (random, bts) = (
        root.join("random/all/all.csv"),
        root.join("bts/all/all.csv"),
    );
    if !random.is_file() || !bts.is_file() {
        eprintln!("skipped: run datasets/fetch_obd.sh to test on the real sample");
        return;
    }
    let random = read_obd_csv(&random).unwrap();
    let bts = read_obd_csv(&bts).unwrap();
    assert_eq!(
        (random.rows.len(), random.items, random.positions),
        (10_000, 80, 3)
    );
    assert!((random.observed_ctr() - 0.0038).abs() < 1e-9);
    assert!((bts.observed_ctr() - 0.0042).abs() < 1e-9);
    assert!(random
        .rows
        .iter()
        .all(|r| (r.propensity - 0.0125).abs() < 1e-12));
}
