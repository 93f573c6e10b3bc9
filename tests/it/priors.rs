//! The priors the jobs keep (docs/architecture.md, "Priors"), end to end with real processes and
//! no `slotbandit priors` run: history from `slotbandit gen` is counted by a job, then the lookup
//! service decides for cities it has never seen. Each decision must favour the banner the
//! history says is best for the slot (the highest CTR pooled over cities, computed here from the
//! generated rows), and the posteriors route must show the prior each arm used. On the embedded
//! default (file log, redb; the backfill, and the stream job stopping at the log's end) and on
//! Kafka and Cassandra (the stream job running, priors kept on its event-time cadence).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use serde_json::{json, Value};
use slotbandit::model::EventKind;

use crate::common::{
    events_of, gen, keys_add, ok, service, slotbandit, spawn_serve, unique_name, Killed,
};

const TENANT: &str = "ajio";
const SLOT: &str = "hero";
const BANNERS: usize = 5;

/// Generated history and, per banner of `SLOT`, its (impressions, clicks) pooled over cities.
struct History {
    dir: tempfile::TempDir,
    pooled: BTreeMap<String, (u64, u64)>,
}

impl History {
    fn path(&self) -> String {
        self.dir.path().join("history").display().to_string()
    }

    /// The banner of the highest pooled CTR, after checking that it leads the runner-up by a
    /// margin a slot prior can show in a few hundred draws.
    fn best(&self) -> String {
        let mut ctrs: Vec<(f64, &String)> = self
            .pooled
            .iter()
            .map(|(b, &(n, k))| (k as f64 / n as f64, b))
            .collect();
        ctrs.sort_by(|a, b| b.0.total_cmp(&a.0));
        assert_eq!(ctrs.len(), BANNERS, "{ctrs:?}");
        assert!(
            ctrs[0].0 > 1.3 * ctrs[1].0,
            "the generated history should have a clear best banner: {ctrs:?}"
        );
        ctrs[0].1.clone()
    }
}

fn history() -> History {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("history");
    ok(gen(
        &out,
        &format!("--events 150000 --days 2 --tenants 1 --cities 6 --banners {BANNERS} --seed 9"),
    ));
    let files: Vec<_> = walk(&out);
    let mut pooled: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for e in events_of(&files) {
        if e.tenant == TENANT && e.slot == SLOT {
            let c = pooled.entry(e.banner.clone()).or_default();
            match e.kind {
                EventKind::Impression => c.0 += 1,
                EventKind::Click => c.1 += 1,
            }
        }
    }
    History { dir, pooled }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else if path.extension().is_some_and(|e| e == "parquet") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// A running lookup service on `store`, with an admin key and the slot configured.
struct Service {
    _child: Killed,
    base: String,
    key: String,
    client: Client,
    _spool: tempfile::TempDir,
}

impl Service {
    fn start(store: &str, log: &str, banners: &[String]) -> Service {
        let key = keys_add(store, TENANT, "admin");
        let spool = tempfile::tempdir().unwrap();
        let (child, base) = spawn_serve(
            &[
                "--store",
                store,
                "--log",
                log,
                "--spool-dir",
                &spool.path().display().to_string(),
                "--refresh-ms",
                "200",
            ],
            &[],
        );
        let service = Service {
            _child: Killed(child),
            base,
            key,
            client: Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            _spool: spool,
        };
        let config: Vec<Value> = banners
            .iter()
            .map(|b| {
                json!({"id": b, "image": format!("{b}.svg"),
                    "valid_from": "2026-01-01T00:00:00+05:30", "valid_to": "2036-01-01T00:00:00+05:30"})
            })
            .collect();
        let r = service
            .client
            .put(format!("{}/v1/tenants/{TENANT}/slots/{SLOT}", service.base))
            .bearer_auth(&service.key)
            .json(&json!({ "banners": config }))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        service
    }

    fn get(&self, path: &str) -> Value {
        let r = self
            .client
            .get(format!(
                "{}/v1/tenants/{TENANT}/slots/{SLOT}/{path}",
                self.base
            ))
            .bearer_auth(&self.key)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        r.json().unwrap()
    }

    /// The posteriors route's banners for one city.
    fn banners(&self, city: &str) -> Vec<Value> {
        let p = self.get(&format!("posteriors?city={city}"));
        assert_eq!(p["cities"].as_array().unwrap().len(), 1, "{p}");
        assert_eq!(p["cities"][0]["city"], city, "{p}");
        p["cities"][0]["banners"].as_array().unwrap().clone()
    }

    /// Waits until the service has the job's priors (a new city's arms no longer uniform).
    fn wait_for_priors(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let banners = self.banners("never_seen");
            if banners.iter().all(|b| b["prior"]["source"] != "uniform") {
                return;
            }
            assert!(Instant::now() < deadline, "no priors arrived: {banners:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Decisions for cities the service has never seen favour `best`, each from the slot's prior
/// for a new city, which the posteriors route shows; a city of the history shows its own.
fn new_cities_favour(service: &Service, best: &str, known_city: &str) {
    let banners = service.banners("brand_new_city");
    let mean = |b: &Value| {
        let (a, z) = (
            b["prior"]["alpha0"].as_f64().unwrap(),
            b["prior"]["beta0"].as_f64().unwrap(),
        );
        a / (a + z)
    };
    for b in &banners {
        assert_eq!(b["prior"]["source"], "empirical_bayes", "{b}");
        assert_eq!(b["prior"]["city_effect"], Value::Null, "{b}");
        assert_eq!(
            (b["impressions"].as_u64(), b["clicks"].as_u64()),
            (Some(0), Some(0))
        );
        // The posterior is the prior itself: the city has no counts.
        assert_eq!(b["alpha"], b["prior"]["alpha0"], "{b}");
        assert_eq!(b["beta"], b["prior"]["beta0"], "{b}");
    }
    let top = banners
        .iter()
        .max_by(|x, y| mean(x).total_cmp(&mean(y)))
        .unwrap();
    assert_eq!(top["banner"], best, "the prior's best banner: {banners:?}");

    let mut chosen: BTreeMap<String, u32> = BTreeMap::new();
    let decisions = 400;
    for i in 0..decisions {
        // Every decision for a city never seen before.
        let d = service.get(&format!("decision?city=new_city_{i}"));
        assert_eq!(d["posterior_city"], format!("new_city_{i}"), "{d}");
        *chosen
            .entry(d["banners"][0]["banner"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let (favourite, times) = chosen.iter().max_by_key(|(_, &n)| n).unwrap();
    assert_eq!(favourite, best, "{chosen:?}");
    assert!(
        *times as usize > 2 * decisions / BANNERS,
        "twice the share of a uniform choice: {chosen:?}"
    );

    let known = service.banners(known_city);
    for b in &known {
        assert_eq!(b["prior"]["source"], "hierarchical", "{b}");
        let effect = b["prior"]["city_effect"].as_f64().unwrap();
        assert!(effect > 0.0 && effect.is_finite(), "{b}");
        let clicks = b["clicks"].as_f64().unwrap();
        let misses = b["impressions"].as_f64().unwrap() - clicks;
        let alpha = b["prior"]["alpha0"].as_f64().unwrap() + clicks;
        let beta = b["prior"]["beta0"].as_f64().unwrap() + misses;
        assert!((b["alpha"].as_f64().unwrap() - alpha).abs() < 1e-6, "{b}");
        assert!((b["beta"].as_f64().unwrap() - beta).abs() < 1e-6, "{b}");
    }
}

/// The city with the most impressions in the history (the generator's first).
const KNOWN_CITY: &str = "mumbai";

#[test]
fn on_the_embedded_default_backfill_and_stream_keep_priors_that_new_cities_decide_from() {
    let history = history();
    let best = history.best();
    let banners: Vec<String> = history.pooled.keys().cloned().collect();
    let dir = tempfile::tempdir().unwrap();

    // The backfill computes the priors at its end.
    let backfilled = format!("embedded:{}", dir.path().join("backfill.redb").display());
    ok(slotbandit(&[
        "backfill",
        "--input",
        &history.path(),
        "--store",
        &backfilled,
    ]));
    // The stream job, from the file log, computes them on its cadence and when it stops.
    let log = format!("file:{}?partitions=2", dir.path().join("log").display());
    ok(slotbandit(&[
        "produce",
        "--log",
        &log,
        "--from",
        &history.path(),
    ]));
    let streamed = format!("embedded:{}", dir.path().join("stream.redb").display());
    crate::common::stream_to_end(&log, &streamed, 100, &[]);

    for store in [&backfilled, &streamed] {
        let decisions = format!("file:{}", dir.path().join("decisions").display());
        let service = Service::start(store, &decisions, &banners);
        service.wait_for_priors(Duration::from_secs(30));
        new_cities_favour(&service, &best, KNOWN_CITY);
    }
}

#[test]
fn on_kafka_and_cassandra_the_running_stream_keeps_priors_that_new_cities_decide_from() {
    let (Some(broker), Some(cassandra)) =
        (service("SLOTBANDIT_KAFKA"), service("SLOTBANDIT_CASSANDRA"))
    else {
        return;
    };
    let history = history();
    let best = history.best();
    let banners: Vec<String> = history.pooled.keys().cloned().collect();
    let store = format!("cassandra://{cassandra}/{}", unique_name("priors_e2e"));
    let log = format!(
        "kafka://{broker}/{}?partitions=2",
        unique_name("priors-e2e").replace('_', "-")
    );
    ok(slotbandit(&["schema", "apply", "--store", &store]));
    ok(slotbandit(&[
        "produce",
        "--log",
        &log,
        "--from",
        &history.path(),
    ]));
    let _job = crate::common::stream_job(&log, &store);
    let service = Service::start(&store, &log, &banners);
    service.wait_for_priors(Duration::from_secs(180));
    // The history's last minute of event time may not be in the priors yet; the slot's best
    // banner is clear enough not to change with it.
    new_cities_favour(&service, &best, KNOWN_CITY);
}
