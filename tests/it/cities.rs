//! Cities as sites send them (`Pune`, `New Delhi`, `Bengaluru`) and per-tenant city aliases,
//! end to end: the stream job and the backfill count every spelling into one arm, an alias
//! declared after history exists merges that history exactly, the service answers each spelling
//! from the arm its normalized name and aliases say, and bad aliases are refused naming the field.
//! Every expected count is an independent recount of the events produced.

use std::path::Path;
use std::time::Duration;

use reqwest::blocking::Client;
use serde_json::{json, Value};
use slotbandit::model::parquet::{list_parquet_files, PartitionedWriter};
use slotbandit::model::{Event, EventRef};

use crate::common::{
    events_of, gen, keys_add, ok, posteriors, recount, slotbandit, spawn_serve, stderr, Counts,
};

const SECRET: &str = "test secret for the lookup service, 32+ bytes";

/// Generated events of one tenant (`ajio`) in seven cities, among them `bangalore`, `delhi`
/// and `pune`, with their cities spelled as sites send them.
fn spelled_events(dir: &Path, seed: u64) -> Vec<Event> {
    let data = dir.join("generated");
    ok(gen(
        &data,
        &format!("--events 6000 --days 1 --tenants 1 --cities 7 --banners 3 --seed {seed}"),
    ));
    events_of(&list_parquet_files(&data).unwrap())
        .into_iter()
        .enumerate()
        .map(|(i, mut e)| {
            let spellings: &[&str] = match e.city.as_str() {
                "bangalore" => &[
                    "Bangalore",
                    " BANGALORE ",
                    "bengaluru",
                    "Bengaluru",
                    "BENGALURU",
                ],
                "delhi" => &["New Delhi", " new  delhi ", "New-Delhi", "new_delhi"],
                "pune" => &["Pune", "PUNE", "pune"],
                _ => &[],
            };
            if !spellings.is_empty() {
                e.city = spellings[i % spellings.len()].to_string();
            }
            e
        })
        .collect()
}

/// The rule as the documentation states it, for ASCII names: lowercase, runs of anything but
/// letters and digits become one `_`, none at either end; then the aliases.
fn expected_city(city: &str, aliases: &[(&str, &str)]) -> String {
    let folded = city
        .to_lowercase()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join("_");
    aliases
        .iter()
        .find(|(alias, _)| *alias == folded)
        .map_or(folded.clone(), |(_, city)| city.to_string())
}

fn recount_as(events: &[Event], aliases: &[(&str, &str)]) -> Counts {
    let canonical: Vec<Event> = events
        .iter()
        .map(|e| Event {
            city: expected_city(&e.city, aliases),
            ..e.clone()
        })
        .collect();
    recount(&canonical)
}

fn cities_of(counts: &Counts) -> Vec<&str> {
    let mut cities: Vec<&str> = counts.keys().map(|k| k.2.as_str()).collect();
    cities.dedup();
    cities.sort();
    cities.dedup();
    cities
}

fn write_jsonl(path: &Path, events: &[Event]) {
    let lines: Vec<String> = events
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn import_aliases(store: &str, csv: &str, dir: &Path) -> std::process::Output {
    let file = dir.join("aliases.csv");
    std::fs::write(&file, csv).unwrap();
    slotbandit(&[
        "cities",
        "import",
        file.to_str().unwrap(),
        "--tenant",
        "ajio",
        "--store",
        store,
    ])
}

#[test]
fn the_stream_counts_every_spelling_as_one_arm_and_a_later_alias_merges_history_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("embedded:{}", dir.path().join("s.redb").display());
    stream_spellings_then_a_later_alias(dir.path(), &store);
}

/// The same on Cassandra, where the merge is one LOGGED batch over the two shards' partitions.
#[test]
fn on_cassandra_the_stream_merges_a_later_alias_exactly() {
    let Some(node) = crate::common::service("SLOTBANDIT_CASSANDRA") else {
        return;
    };
    let ks = crate::cassandra::Keyspace::new(&node, "sbt_cities");
    let dir = tempfile::tempdir().unwrap();
    stream_spellings_then_a_later_alias(dir.path(), &ks.url);
}

fn stream_spellings_then_a_later_alias(dir: &Path, store: &str) {
    let events = spelled_events(dir, 41);
    let (early, late) = events.split_at(events.len() / 2);
    let log = format!("file:{}?partitions=3", dir.join("log").display());
    let produce = |name: &str, part: &[Event]| {
        let file = dir.join(name);
        write_jsonl(&file, part);
        ok(slotbandit(&[
            "produce",
            "--log",
            &log,
            "--from",
            file.to_str().unwrap(),
        ]));
    };
    let stream = || crate::common::stream_to_end(&log, store, 50, &[]);

    produce("early.jsonl", early);
    stream();
    let counts = posteriors(store, &[]);
    assert_eq!(counts, recount_as(early, &[]));
    let cities = cities_of(&counts);
    for city in ["bangalore", "bengaluru", "new_delhi", "pune"] {
        assert!(cities.contains(&city), "{cities:?}");
    }

    // Declared after history exists under `bangalore`: the next run merges it into
    // `bengaluru` before it counts, and counts later `Bangalore` events there.
    ok(import_aliases(
        store,
        "alias,city\nBangalore,Bengaluru\n",
        dir,
    ));
    produce("late.jsonl", late);
    stream();
    let aliases = [("bangalore", "bengaluru")];
    let counts = posteriors(store, &[]);
    assert_eq!(counts, recount_as(&events, &aliases));
    assert!(!cities_of(&counts).contains(&"bangalore"));
    // A rerun changes nothing: the merge is not done twice.
    stream();
    let want = recount_as(&events, &aliases);
    assert_eq!(posteriors(store, &[]), want);
    let bengaluru: Counts = want
        .into_iter()
        .filter(|(k, _)| k.2 == "bengaluru")
        .collect();
    assert_eq!(
        posteriors(store, &["--tenant", "ajio", "--city", " BANGALORE"]),
        bengaluru
    );
}

/// A running stream job sees an alias declared meanwhile: it stops after its stored epochs,
/// merges the alias's history and goes on counting, exactly.
#[test]
fn a_running_stream_job_merges_an_alias_declared_while_it_runs() {
    use slotbandit::dataflow::{run_stream, Cluster, StreamJob, StreamMetrics};
    use slotbandit::model::CityAliases;
    use slotbandit::store::PosteriorStore;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let events = spelled_events(dir.path(), 42);
    let (early, late) = events.split_at(events.len() / 2);
    let log_url = format!("file:{}?partitions=2", dir.path().join("log").display());
    let store_url = format!("embedded:{}", dir.path().join("s.redb").display());
    let produce = |name: &str, part: &[Event]| {
        let file = dir.path().join(name);
        write_jsonl(&file, part);
        ok(slotbandit(&[
            "produce",
            "--log",
            &log_url,
            "--from",
            file.to_str().unwrap(),
        ]));
    };
    produce("early.jsonl", early);
    let store: Arc<dyn PosteriorStore> =
        Arc::from(slotbandit::store::open_store(&store_url, true).unwrap());
    let shutdown = Arc::new(AtomicBool::new(false));
    let job = StreamJob {
        log: slotbandit::source::open_log(&log_url).unwrap(),
        store: store.clone(),
        name: "stream".into(),
        buckets: slotbandit::time::Buckets::hourly(),
        retention: slotbandit::time::Retention::of_hours(slotbandit::time::Retention::MAX_HOURS)
            .unwrap(),
        epoch: Duration::from_millis(50),
        cutoff: None,
        repeats: slotbandit::dataflow::RepeatWindows {
            clicks: Duration::from_secs(3600),
            impressions: Duration::from_secs(3600),
        },
        customer_events: false,
        stop_at_end: false,
        shutdown: shutdown.clone(),
        progress: Arc::new(|_| {}),
        metrics: Arc::new(StreamMetrics::default()),
        priors: Some(slotbandit::dataflow::PriorSettings::default()),
    };
    let running = std::thread::spawn(move || run_stream(job, &Cluster::single(2)));
    let counted = |want: &Counts| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let rows = store.counts(&Default::default()).unwrap();
            let got: Counts = rows
                .into_iter()
                .map(|(a, c)| {
                    (
                        (a.tenant, a.slot, a.city, a.banner),
                        (c.impressions, c.clicks),
                    )
                })
                .collect();
            if got == *want {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "counts never reached {want:?}: {got:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    counted(&recount_as(early, &[]));
    let mut aliases = CityAliases::default();
    aliases.declare("bangalore", "bengaluru").unwrap();
    store.put_city_aliases("ajio", &aliases).unwrap();
    counted(&recount_as(early, &[("bangalore", "bengaluru")]));
    produce("late.jsonl", late);
    counted(&recount_as(&events, &[("bangalore", "bengaluru")]));
    shutdown.store(true, Ordering::Relaxed);
    running.join().unwrap().unwrap();
}

/// History in Parquet with the cities spelled as sites send them, an alias declared before the
/// backfill, and the service answering each spelling from its arm.
#[test]
fn backfill_and_service_answer_each_spelling_from_its_normalized_and_aliased_arm() {
    let dir = tempfile::tempdir().unwrap();
    let events = spelled_events(dir.path(), 43);
    let history = dir.path().join("history");
    let mut writer = PartitionedWriter::create(&history, 100_000).unwrap();
    for e in &events {
        writer.write(&EventRef::from(e)).unwrap();
    }
    writer.finish().unwrap();
    let store = format!("embedded:{}", dir.path().join("s.redb").display());
    ok(import_aliases(
        &store,
        "alias,city\nBangalore,Bengaluru\n",
        dir.path(),
    ));
    ok(slotbandit(&[
        "backfill",
        "--input",
        history.to_str().unwrap(),
        "--store",
        &store,
    ]));
    let aliases = [("bangalore", "bengaluru")];
    let want = recount_as(&events, &aliases);
    assert_eq!(posteriors(&store, &[]), want);

    let slots = dir.path().join("slots.csv");
    std::fs::write(
        &slots,
        "platform,slotname,imageid,imagename,validfrom,validto\n\
         ajio,hero,b01,b01.svg,01-Nov-26 00:00:00,31-Dec-36 23:59:59\n\
         ajio,hero,b02,b02.svg,01-Nov-26 00:00:00,31-Dec-36 23:59:59\n\
         ajio,hero,b03,b03.svg,01-Nov-26 00:00:00,31-Dec-36 23:59:59\n",
    )
    .unwrap();
    ok(slotbandit(&[
        "slots",
        "import",
        slots.to_str().unwrap(),
        "--store",
        &store,
    ]));
    let serve_key = keys_add(&store, "ajio", "serve");
    let admin = keys_add(&store, "ajio", "admin");
    let log = format!("file:{}", dir.path().join("log").display());
    let spool = dir.path().join("spool").display().to_string();
    let (mut child, base) = spawn_serve(
        &[
            "--store",
            &store,
            "--log",
            &log,
            "--spool-dir",
            &spool,
            "--refresh-ms",
            "100",
        ],
        &[("SLOTBANDIT_TOKEN_SECRET", SECRET)],
    );
    let client = Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let get = |path: &str, key: &str| {
        client
            .get(format!("{base}{path}"))
            .bearer_auth(key)
            .send()
            .unwrap()
    };
    let decide = |city: &str| -> Value {
        let r = get(
            &format!("/v1/tenants/ajio/slots/hero/decision?city={city}"),
            &serve_key,
        );
        assert_eq!(r.status(), 200, "{city}");
        r.json().unwrap()
    };
    for (sent, arm) in [
        ("Pune", "pune"),
        ("New%20Delhi", "new_delhi"),
        ("%20new-DELHI", "new_delhi"),
        ("Bengaluru", "bengaluru"),
        ("Bangalore", "bengaluru"),
    ] {
        let d = decide(sent);
        assert_eq!(
            (d["city"].as_str(), d["posterior_city"].as_str()),
            (Some(arm), Some(arm)),
            "{sent}"
        );
    }
    let r = get(
        "/v1/tenants/ajio/slots/hero/posteriors?city=BANGALORE",
        &serve_key,
    );
    assert_eq!(r.status(), 200);
    let p: Value = r.json().unwrap();
    assert_eq!(p["cities"][0]["city"], "bengaluru");
    let served: u64 = p["cities"][0]["banners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["impressions"].as_u64().unwrap())
        .sum();
    let counted: u64 = want
        .iter()
        .filter(|(k, _)| k.1 == "hero" && k.2 == "bengaluru")
        .map(|(_, c)| c.0)
        .sum();
    assert_eq!(served, counted);

    // An alias declared through the API is answered at once (the cache reloads it); removed,
    // the name is a city of its own again (no counts: the all-city posterior).
    let put = |alias: &str, body: Value, key: &str| {
        client
            .put(format!("{base}/v1/tenants/ajio/city-aliases/{alias}"))
            .bearer_auth(key)
            .json(&body)
            .send()
            .unwrap()
    };
    let r = put("Bombay", json!({"city": "Mumbai"}), &admin);
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().unwrap(),
        json!({"alias": "bombay", "city": "mumbai"})
    );
    let d = decide("Bombay");
    assert_eq!(
        (d["city"].as_str(), d["posterior_city"].as_str()),
        (Some("mumbai"), Some("mumbai"))
    );
    let r = client
        .delete(format!("{base}/v1/tenants/ajio/city-aliases/bombay"))
        .bearer_auth(&admin)
        .send()
        .unwrap();
    assert_eq!(r.status(), 204);
    // A city of its own again, without counts: it decides from its prior alone.
    let d = decide("Bombay");
    assert_eq!(
        (d["city"].as_str(), d["posterior_city"].as_str()),
        (Some("bombay"), Some("bombay"))
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// Each bad alias is a 400 naming the field (or 403, 404), and leaves the aliases as they were;
/// the CLI refuses a bad CSV naming the line and field, storing nothing.
#[test]
fn bad_aliases_are_refused_naming_the_field_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("embedded:{}", dir.path().join("s.redb").display());
    let bad_csv = import_aliases(
        &store,
        "alias,city\ngurgaon,gurugram\ngurugram,gurgaon\n",
        dir.path(),
    );
    assert!(!bad_csv.status.success());
    assert!(
        stderr(&bad_csv).contains("field `line 3 city`"),
        "{}",
        stderr(&bad_csv)
    );
    ok(import_aliases(
        &store,
        "alias,city\nBangalore,Bengaluru\n",
        dir.path(),
    ));
    let listed = ok(slotbandit(&[
        "cities", "list", "--tenant", "ajio", "--store", &store,
    ]));
    assert_eq!(listed, "alias,city\nbangalore,bengaluru\n");

    let serve_key = keys_add(&store, "ajio", "serve");
    let admin = keys_add(&store, "ajio", "admin");
    let log = format!("file:{}", dir.path().join("log").display());
    let spool = dir.path().join("spool").display().to_string();
    let (mut child, base) = spawn_serve(
        &["--store", &store, "--log", &log, "--spool-dir", &spool],
        &[("SLOTBANDIT_TOKEN_SECRET", SECRET)],
    );
    let client = Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let aliases_now = || -> Value {
        let r = client
            .get(format!("{base}/v1/tenants/ajio/city-aliases"))
            .bearer_auth(&admin)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().unwrap()
    };
    let before = aliases_now();
    assert_eq!(
        before,
        json!({"tenant": "ajio", "aliases": [{"alias": "bangalore", "city": "bengaluru"}]})
    );
    for (alias, body, key, status, field) in [
        ("Pune", json!({"city": "pune"}), &admin, 400, Some("alias")),
        (
            "blr",
            json!({"city": "Bangalore"}),
            &admin,
            400,
            Some("city"),
        ),
        (
            "Bengaluru",
            json!({"city": "Bangalore"}),
            &admin,
            400,
            Some("city"),
        ),
        (
            "bengaluru",
            json!({"city": "mysuru"}),
            &admin,
            400,
            Some("alias"),
        ),
        (
            "bangalore",
            json!({"city": "mysuru"}),
            &admin,
            400,
            Some("alias"),
        ),
        (
            "%21%21",
            json!({"city": "pune"}),
            &admin,
            400,
            Some("alias"),
        ),
        ("poona", json!({"city": "  "}), &admin, 400, Some("city")),
        ("poona", json!({"city": "पुणे"}), &admin, 400, Some("city")),
        ("poona", json!({"town": "pune"}), &admin, 422, None),
        ("poona", json!({"city": "pune"}), &serve_key, 403, None),
    ] {
        let r = client
            .put(format!("{base}/v1/tenants/ajio/city-aliases/{alias}"))
            .bearer_auth(key)
            .json(&body)
            .send()
            .unwrap();
        let got = r.status().as_u16();
        let err: Value = r.json().unwrap();
        assert_eq!(got, status, "{alias} {body}: {err}");
        if let Some(field) = field {
            assert_eq!(err["field"].as_str(), Some(field), "{alias} {body}: {err}");
        }
        assert_eq!(aliases_now(), before, "{alias} {body}");
    }
    let r = client
        .delete(format!("{base}/v1/tenants/ajio/city-aliases/poona"))
        .bearer_auth(&admin)
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = client
        .post(format!("{base}/v1/tenants/ajio/city-alias-imports"))
        .bearer_auth(&admin)
        .header("content-type", "text/csv")
        .body("alias,city\ngurgaon,gurugram\nbengaluru,blr\n")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let err: Value = r.json().unwrap();
    assert_eq!(err["field"].as_str(), Some("line 3 alias"), "{err}");
    assert_eq!(aliases_now(), before);
    let r = client
        .post(format!("{base}/v1/tenants/ajio/city-alias-imports"))
        .bearer_auth(&admin)
        .header("content-type", "text/csv")
        .body("alias,city\nGurgaon,Gurugram\n")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().unwrap()["aliases"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let doc: Value = client
        .get(format!("{base}/openapi.json"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    for path in [
        "/v1/tenants/{tenant}/city-aliases",
        "/v1/tenants/{tenant}/city-aliases/{alias}",
        "/v1/tenants/{tenant}/city-alias-imports",
    ] {
        assert!(doc["paths"][path].is_object(), "{path}");
    }
    let _ = child.kill();
    let _ = child.wait();
}
