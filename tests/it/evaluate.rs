//! Off-policy evaluation on simulated logs where the truth is known: the production policy
//! decides with a 20% uniform holdout on a lab environment and logs its propensities as the
//! service does; `EvaluationTally` estimates other policies from that log alone, and the truth
//! — each target's probabilities times the environment's true CTRs, which the estimators never
//! see — must fall inside the intervals. Then the dataflow job (`run_evaluate`, `slotbandit
//! evaluate`) against the tally on the same events: from Parquet and from an event log, with one
//! worker, several, and two processes.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use rand::RngExt;
use slotbandit::bandit::{seeded_rng, Unbounded};
use slotbandit::dataflow::{run_evaluate, Cluster, EvaluateJob, History, LogHistory};
use slotbandit::eval::{EvaluationTally, ReportRange, Target};
use slotbandit::model::parquet::PartitionedWriter;
use slotbandit::model::{Banner, DecisionLog, Event, EventKind, Policy, SlotConfig, SlotRules};
use slotbandit::sim::{EnvSpec, Environment, Policy as _, Service};
use slotbandit::source::open_log;
use slotbandit::source::parquet::ParquetPlan;
use slotbandit::store::open_store;

use crate::common::{hosts_file, ok, slotbandit, stderr};

const BANNERS: usize = 5;
const CITIES: usize = 4;

fn start() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-06-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn slot_config() -> SlotConfig {
    SlotConfig {
        tenant: "lab".into(),
        slot: "home".into(),
        banners: (0..BANNERS)
            .map(|b| Banner {
                id: format!("b{b}"),
                image: String::new(),
                valid_from: start() - Duration::days(1),
                valid_to: DateTime::<Utc>::MAX_UTC,
            })
            .collect(),
        rules: SlotRules::default(),
    }
}

fn event(kind: EventKind, i: u64, city: usize, banner: usize, decision: DecisionLog) -> Event {
    Event {
        event_id: format!("{kind:?}-{i}"),
        kind,
        tenant: "lab".into(),
        slot: "home".into(),
        city: format!("c{city}"),
        banner: format!("b{banner}"),
        // A decision every 100 ms, its click 50 ms later.
        ts: start()
            + Duration::milliseconds(
                100 * i as i64 + if kind == EventKind::Click { 50 } else { 0 },
            ),
        customer_id: None,
        referrer: None,
        request_id: Some(format!("r{i}")),
        decision,
    }
}

/// The production policy's log over `decisions` decisions with a uniform holdout share.
fn logged(env: &Environment, seed: u64, decisions: u64, holdout: f64) -> Vec<Event> {
    let mut policy = Service::new(CITIES, &[0; BANNERS], 1_000, 1e5, Vec::new());
    let mut rng = seeded_rng(7_000 + seed);
    let mut events = Vec::new();
    for i in 0..decisions {
        let u: f64 = rng.random();
        let mut city = 0;
        let mut acc = env.traffic[0];
        while u >= acc && city + 1 < CITIES {
            city += 1;
            acc += env.traffic[city];
        }
        let held = rng.random::<f64>() < holdout;
        let ctrs = &env.ctrs[city];
        let arms = policy.arms()[city].clone();
        let banner = if held {
            rng.random_range(0..BANNERS)
        } else {
            policy.choose(city, ctrs, &mut rng)
        };
        let (p, _) = arms.propensities(start(), 1, &[banner], &mut rng, &Unbounded);
        let (p_ts, error) = p[0].expect("unbounded");
        let click = rng.random::<f64>() < ctrs[banner];
        policy.observe(city, banner, click);
        let decision = DecisionLog {
            policy: Some(if held {
                Policy::Uniform
            } else {
                Policy::Thompson
            }),
            policy_version: Some(1),
            holdout: Some(held),
            propensity: Some(holdout / BANNERS as f64 + (1.0 - holdout) * p_ts),
            propensity_error: Some(error),
            rank: Some(1),
        };
        events.push(event(EventKind::Impression, i, city, banner, decision));
        if click {
            events.push(event(
                EventKind::Click,
                i,
                city,
                banner,
                DecisionLog::default(),
            ));
        }
    }
    events
}

/// IPW, SNIPW and DR each cover the true value of three other policies — uniform, Thompson
/// with a weaker prior, Thompson over a 5-minute window — in at least 45 of 50 seeds.
#[test]
fn off_policy_intervals_cover_the_truth_in_50_seeds() {
    let spec = EnvSpec {
        ctrs: vec![0.06, 0.05, 0.04, 0.03, 0.02],
        cities: CITIES,
        city_sigma: 0.4,
        traffic_skew: 1.0,
        change: None,
    };
    let targets: Vec<Target> = ["uniform", "thompson:prior=30", "thompson:window=5"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let configs = HashMap::from([(
        ("lab".to_string(), "home".to_string()),
        Arc::new(slot_config()),
    )]);
    let range = ReportRange::new(start(), start() + Duration::days(1)).unwrap();
    let (seeds, decisions) = (50u64, 10_000u64);
    // Per target: seeds covered by IPW, SNIPW, DR.
    let mut covered = vec![[0u32; 3]; targets.len()];
    let mut narrow_enough = 0;
    for seed in 0..seeds {
        let env = Environment::build(&spec, seed).unwrap();
        let mut tally = EvaluationTally::new(range);
        for e in logged(&env, seed, decisions, 0.2) {
            tally.add(e.into());
        }
        let mut truth: HashMap<String, (f64, u64)> = HashMap::new();
        let evaluation = tally
            .finish(&configs, &targets, 0.95, &mut |r| {
                let city: usize = r.city[1..].parse().unwrap();
                let value: f64 = r
                    .banners
                    .iter()
                    .zip(r.target)
                    .map(|(b, p)| p * env.ctrs[city][b[1..].parse::<usize>().unwrap()])
                    .sum();
                let t = truth.entry(r.policy.to_string()).or_default();
                t.0 += value;
                t.1 += 1;
            })
            .unwrap();
        assert_eq!(evaluation.impressions, decisions);
        assert_eq!(evaluation.skipped.without_propensity, 0);
        for (i, policy) in evaluation.policies.iter().enumerate() {
            let overall = policy.rows.last().unwrap();
            assert_eq!(overall.slot, "*");
            let e = overall.estimate.unwrap();
            assert_eq!(e.decisions, decisions);
            let (sum, n) = truth[&policy.policy];
            let true_value = sum / n as f64;
            for (k, interval) in [e.ipw, e.snipw, e.dr].iter().enumerate() {
                covered[i][k] += u32::from(interval.contains(true_value));
            }
            if policy.policy == "uniform" {
                narrow_enough += u32::from(e.dr.high - e.dr.low < 0.02);
            }
        }
    }
    for (target, c) in targets.iter().zip(&covered) {
        eprintln!("{target}: IPW, SNIPW, DR covered the truth in {c:?} of {seeds} seeds");
    }
    for (target, c) in targets.iter().zip(&covered) {
        for (name, n) in ["IPW", "SNIPW", "DR"].iter().zip(c) {
            assert!(
                *n >= 45,
                "{target}: {name} covered the truth in {n} of {seeds}"
            );
        }
    }
    // Not vacuous: DR's interval on uniform is under two percentage points wide (CTRs 2–6%).
    assert!(
        narrow_enough >= 45,
        "DR narrower than 2 pp in {narrow_enough} of {seeds}"
    );
}

fn at(minute: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + minute * 60, 0).unwrap()
}

/// The slots `hero` and `side` of tenant `ajio` (`ghost` is not defined): banners b0 to b2
/// valid all along, b3 only from minute 30.
fn defined_slots() -> Vec<SlotConfig> {
    ["hero", "side"]
        .map(|slot| SlotConfig {
            tenant: "ajio".into(),
            slot: slot.into(),
            banners: (0..4)
                .map(|b| Banner {
                    id: format!("b{b}"),
                    image: String::new(),
                    valid_from: if b == 3 { at(30) } else { at(-1_000) },
                    valid_to: DateTime::<Utc>::MAX_UTC,
                })
                .collect(),
            rules: SlotRules::default(),
        })
        .into()
}

/// One logged decision and its clicks.
#[derive(Debug, Clone)]
struct Decision {
    slot: usize,
    city: usize,
    banner: usize,
    minute: i64,
    propensity: Option<f64>,
    /// Shown second of a carousel (rank 2), or sharing its request with the previous decision.
    carousel: Option<bool>,
    keyed: bool,
    clicks: u8,
}

fn decision() -> impl Strategy<Value = Decision> {
    (
        0..3usize,
        0..3usize,
        0..4usize,
        -20..90i64,
        proptest::option::weighted(0.85, prop::sample::select(vec![0.1, 0.25, 0.5, 0.9])),
        proptest::option::weighted(0.1, any::<bool>()),
        proptest::bool::weighted(0.95),
        prop::sample::select(vec![0u8, 0, 0, 1, 1, 2, 3]),
    )
        .prop_map(
            |(slot, city, banner, minute, propensity, carousel, keyed, clicks)| Decision {
                slot,
                city,
                banner,
                minute,
                propensity,
                carousel,
                keyed,
                clicks,
            },
        )
}

/// The impressions and clicks of `decisions`, a click 0 to 2 minutes after its impression (a
/// repeated click may come first in the log).
fn decision_events(decisions: &[Decision]) -> Vec<Event> {
    let mut events = Vec::new();
    for (i, d) in decisions.iter().enumerate() {
        let request = match d.carousel {
            Some(false) if i > 0 => format!("r{}", i - 1),
            _ => format!("r{i}"),
        };
        let event = |kind: EventKind, minute: i64, n: u8| Event {
            event_id: format!("e{i}-{kind:?}-{n}"),
            kind,
            tenant: "ajio".into(),
            slot: ["hero", "side", "ghost"][d.slot].into(),
            city: ["pune", "delhi", "goa"][d.city].into(),
            banner: format!("b{}", d.banner),
            ts: at(minute),
            customer_id: None,
            referrer: None,
            request_id: d.keyed.then(|| request.clone()),
            decision: DecisionLog::default(),
        };
        let mut shown = event(EventKind::Impression, d.minute, 0);
        shown.decision = DecisionLog {
            propensity: d.propensity,
            rank: Some(if d.carousel == Some(true) { 2 } else { 1 }),
            ..DecisionLog::default()
        };
        events.push(shown);
        for n in 0..d.clicks {
            events.push(event(EventKind::Click, d.minute + 2 - i64::from(n), n));
        }
    }
    events
}

fn targets() -> Vec<Target> {
    [
        "uniform",
        "thompson",
        "thompson:window=10,refresh=300,prior=30",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect()
}

/// An evaluation (or its error) and the weighed decisions, as JSON text.
type Evaluated = (Result<String, String>, Vec<String>);

/// The in-memory tally of `events`, in their order.
fn tally(events: &[Event], range: ReportRange) -> Evaluated {
    let configs = defined_slots()
        .into_iter()
        .map(|c| ((c.tenant.clone(), c.slot.clone()), Arc::new(c)))
        .collect();
    let mut tally = EvaluationTally::new(range);
    for e in events {
        tally.add(e.clone().into());
    }
    let mut decisions = Vec::new();
    let evaluation = tally.finish(&configs, &targets(), 0.95, &mut |r| {
        decisions.push(serde_json::to_string(r).unwrap())
    });
    (
        evaluation
            .map(|e| serde_json::to_string(&e).unwrap())
            .map_err(|e| e.to_string()),
        decisions,
    )
}

fn dataflow(history: History, range: ReportRange, workers: usize) -> Evaluated {
    let job = EvaluateJob {
        history,
        range,
        configs: defined_slots(),
        targets: targets(),
        record_decisions: true,
        progress: Arc::new(|_| {}),
    };
    let run = run_evaluate(job, &Cluster::single(workers))
        .unwrap()
        .unwrap();
    assert_eq!(run.invalid_rows, 0);
    (
        run.parts
            .evaluation(&targets(), 0.95)
            .map(|e| serde_json::to_string(&e).unwrap())
            .map_err(|e| e.to_string()),
        run.decisions,
    )
}

/// Writes `events` as Parquet history of many small files (row groups the workers share).
fn write_history(dir: &Path, events: &[Event], rows_per_file: usize) {
    let mut writer = PartitionedWriter::create(dir, rows_per_file).unwrap();
    for e in events {
        writer.write(&e.into()).unwrap();
    }
    writer.finish().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn the_dataflow_evaluation_equals_the_tally_with_1_and_3_workers_from_parquet_and_a_log(
        decisions in prop::collection::vec(decision(), 0..120),
        rows_per_file in 1usize..30,
    ) {
        let range = ReportRange::new(at(0), at(60)).unwrap();
        let events = decision_events(&decisions);
        let expected = tally(&events, range);
        let dir = tempfile::tempdir().unwrap();
        let parquet = dir.path().join("parquet");
        write_history(&parquet, &events, rows_per_file);
        for workers in [1, 3] {
            let plan = ParquetPlan::new(&parquet, false).unwrap();
            let got = dataflow(History::Parquet(plan), range, workers);
            prop_assert_eq!(&got, &expected, "Parquet, {} workers", workers);
        }
        let url = format!("file:{}?partitions=3", dir.path().join("log").display());
        let log = open_log(&url).unwrap();
        log.append(&events).unwrap();
        let got = dataflow(History::Log(LogHistory::open(log).unwrap()), range, 2);
        prop_assert_eq!(&got, &expected, "log, 2 workers");
    }
}

/// `decisions` logged decisions of the defined slots with propensities, and some that cannot
/// be weighed.
fn logged_decisions(n: usize) -> Vec<Decision> {
    let mut rng = seeded_rng(11);
    (0..n)
        .map(|i| Decision {
            slot: usize::from(rng.random_bool(0.4)) + usize::from(i % 50 == 0),
            city: rng.random_range(0..3),
            banner: rng.random_range(0..4),
            minute: rng.random_range(-30..90),
            propensity: rng
                .random_bool(0.9)
                .then(|| [0.1, 0.25, 0.5][rng.random_range(0..3)]),
            carousel: (i % 40 == 0).then_some(i % 80 == 0),
            keyed: i % 97 != 0,
            clicks: u8::from(rng.random_bool(0.1)) + u8::from(i % 61 == 0),
        })
        .collect()
}

/// `evaluate ARGS` with the common flags; returns stdout.
fn evaluate(source: &[&str], store: &str, extra: &[&str]) -> String {
    let mut args = vec!["evaluate"];
    args.extend(source.iter().copied());
    args.extend(["--store", store, "--format", "json", "--from"]);
    let (from, to) = (at(0).to_rfc3339(), at(60).to_rfc3339());
    args.extend([from.as_str(), "--to", to.as_str()]);
    args.extend(["--policy", "uniform", "--policy", "thompson:window=10"]);
    args.extend(extra);
    ok(slotbandit(&args))
}

#[test]
fn evaluate_from_a_log_equals_evaluate_from_its_archive_with_1_and_2_workers_and_2_processes() {
    let dir = tempfile::tempdir().unwrap();
    let log_url = format!("file:{}?partitions=2", dir.path().join("log").display());
    open_log(&log_url)
        .unwrap()
        .append(&decision_events(&logged_decisions(3_000)))
        .unwrap();
    let store_url = format!("embedded:{}", dir.path().join("store.redb").display());
    let store = open_store(&store_url, true).unwrap();
    for config in defined_slots() {
        store.put_slot(&config).unwrap();
    }
    drop(store);
    let archive = dir.path().join("archive");
    ok(slotbandit(&[
        "consume",
        "--log",
        &log_url,
        "--parquet",
        archive.to_str().unwrap(),
    ]));
    let input = ["--input", archive.to_str().unwrap()];
    let log = ["--log", log_url.as_str()];
    let weighed = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (one, two) = (weighed("one.jsonl"), weighed("two.jsonl"));
    let expected = evaluate(&input, &store_url, &["-w", "1", "--decisions-out", &one]);
    let parsed: serde_json::Value = serde_json::from_str(&expected).unwrap();
    let decisions = parsed["policies"][0]["rows"][2]["estimate"]["decisions"]
        .as_u64()
        .unwrap();
    assert!(decisions > 1_000, "{expected}");
    assert!(
        parsed["skipped"]["unknown_slot"].as_u64().unwrap() > 0,
        "{expected}"
    );
    assert_eq!(evaluate(&log, &store_url, &["-w", "1"]), expected);
    assert_eq!(
        evaluate(&log, &store_url, &["-w", "2", "--decisions-out", &two]),
        expected
    );
    assert_eq!(
        std::fs::read_to_string(&one).unwrap(),
        std::fs::read_to_string(&two).unwrap()
    );
    assert_eq!(evaluate(&input, &store_url, &["-w", "2"]), expected);
    // The report takes the same history flags.
    let report = |source: &[&str]| {
        let mut args = vec!["report", "--format", "json", "-w", "2"];
        args.extend(source.iter().copied());
        ok(slotbandit(&args))
    };
    assert_eq!(report(&log), report(&input));

    for source in [&input, &log] {
        let hosts = hosts_file(dir.path(), 2);
        let (from, to) = (at(0).to_rfc3339(), at(60).to_rfc3339());
        let spawn = |p: &str| {
            let mut args = vec!["evaluate"];
            args.extend(source.iter().copied());
            args.extend(["--store", &store_url, "--format", "json"]);
            args.extend(["--from", &from, "--to", &to]);
            args.extend(["--policy", "uniform", "--policy", "thompson:window=10"]);
            args.extend(["-w", "2", "-n", "2", "-p", p, "-h", hosts.to_str().unwrap()]);
            Command::new(env!("CARGO_BIN_EXE_slotbandit"))
                .args(args)
                .env("RUST_LOG", "warn")
                .output()
                .unwrap()
        };
        let p1 = std::thread::scope(|s| {
            let p1 = s.spawn(|| spawn("1"));
            assert_eq!(ok(spawn("0")), expected, "2 processes, {source:?}");
            p1.join().unwrap()
        });
        assert!(ok(p1).is_empty(), "only process 0 prints the evaluation");
    }
}

#[test]
fn evaluate_takes_exactly_one_history_and_refuses_a_log_without_propensities() {
    let dir = tempfile::tempdir().unwrap();
    let store_url = format!("embedded:{}", dir.path().join("store.redb").display());
    let store = open_store(&store_url, true).unwrap();
    for config in defined_slots() {
        store.put_slot(&config).unwrap();
    }
    drop(store);
    let log_path = dir.path().join("log");
    let log_url = format!("file:{}", log_path.display());
    let mut unlogged = logged_decisions(200);
    unlogged.iter_mut().for_each(|d| d.propensity = None);
    open_log(&log_url)
        .unwrap()
        .append(&decision_events(&unlogged))
        .unwrap();
    let archive = dir.path().join("archive");
    let archive = archive.to_str().unwrap();

    let both = slotbandit(&[
        "evaluate", "--input", archive, "--log", &log_url, "--store", &store_url,
    ]);
    assert_eq!(both.status.code(), Some(2), "{}", stderr(&both));
    assert!(
        stderr(&both).contains("--input") && stderr(&both).contains("--log"),
        "{}",
        stderr(&both)
    );
    let neither = slotbandit(&["evaluate", "--store", &store_url]);
    assert_eq!(neither.status.code(), Some(2), "{}", stderr(&neither));
    assert!(
        stderr(&neither).contains("--input") && stderr(&neither).contains("--log"),
        "{}",
        stderr(&neither)
    );

    let refused = slotbandit(&["evaluate", "--log", &log_url, "--store", &store_url]);
    assert_eq!(refused.status.code(), Some(1));
    let message = stderr(&refused);
    assert!(
        message.contains("propensity") && message.contains(&format!("--log {log_url}")),
        "{message}"
    );

    let missing = format!("file:{}", dir.path().join("no-log").display());
    let refused = slotbandit(&["evaluate", "--log", &missing, "--store", &store_url]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("no such log"),
        "{}",
        stderr(&refused)
    );
    assert!(!dir.path().join("no-log").exists());
}
