//! End to end on the real components: Kafka (the event log), Cassandra (the store), the stream
//! job and the lookup service, each its own process. Decisions and clicks go through the
//! service into Kafka, the job counts them into Cassandra, the service's cache picks them up:
//! the posterior moves, and later decisions prefer the banner that was clicked.

use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use serde_json::{json, Value};

use crate::common::Killed;

/// The posterior of each banner for `city`: banner → (impressions, clicks, mean).
fn posteriors(client: &Client, base: &str, key: &str, city: &str) -> Vec<(String, u64, u64, f64)> {
    let p: Value = client
        .get(format!(
            "{base}/v1/tenants/shop/slots/hero/posteriors?city={city}"
        ))
        .bearer_auth(key)
        .send()
        .unwrap()
        .json()
        .unwrap();
    p["cities"][0]["banners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["banner"].as_str().unwrap().to_string(),
                b["impressions"].as_u64().unwrap(),
                b["clicks"].as_u64().unwrap(),
                b["mean"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn clicks_through_kafka_cassandra_and_the_job_steer_later_decisions() {
    let (Some(broker), Some(cassandra)) = (
        crate::common::service("SLOTBANDIT_KAFKA"),
        crate::common::service("SLOTBANDIT_CASSANDRA"),
    ) else {
        return;
    };
    let store = format!(
        "cassandra://{cassandra}/{}",
        crate::common::unique_name("serve_e2e")
    );
    let log = format!(
        "kafka://{broker}/{}?partitions=2",
        crate::common::unique_name("serve-e2e").replace('_', "-")
    );
    crate::common::ok(crate::common::slotbandit(&[
        "schema", "apply", "--store", &store,
    ]));
    let admin = crate::common::keys_add(&store, "shop", "admin");
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool").display().to_string();
    let (service, base) = crate::common::spawn_serve(
        &[
            "--store",
            &store,
            "--log",
            &log,
            "--spool-dir",
            &spool,
            "--refresh-ms",
            "200",
        ],
        &[],
    );
    let _service = Killed(service);
    let _job = crate::common::stream_job(&log, &store);

    let client = Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let slot = json!({"banners": [
        {"id": "good", "image": "b01.svg", "valid_from": "2026-01-01T00:00:00+05:30", "valid_to": "2036-01-01T00:00:00+05:30"},
        {"id": "bad", "image": "b02.svg", "valid_from": "2026-01-01T00:00:00+05:30", "valid_to": "2036-01-01T00:00:00+05:30"}]});
    let r = client
        .put(format!("{base}/v1/tenants/shop/slots/hero"))
        .bearer_auth(&admin)
        .json(&slot)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let before = posteriors(&client, &base, &admin, "pune");
    assert!(before.iter().all(|b| b.1 == 0 && b.2 == 0), "{before:?}");

    // Visitors click "good" whenever they see it and never "bad".
    let decide = || -> (String, String) {
        let d: Value = client
            .get(format!(
                "{base}/v1/tenants/shop/slots/hero/decision?city=pune"
            ))
            .bearer_auth(&admin)
            .send()
            .unwrap()
            .json()
            .unwrap();
        (
            d["request_id"].as_str().unwrap().to_string(),
            d["banners"][0]["banner"].as_str().unwrap().to_string(),
        )
    };
    let (mut shown_good, mut decisions) = (0u64, 0u64);
    for _ in 0..60 {
        let (token, banner) = decide();
        decisions += 1;
        if banner == "good" {
            shown_good += 1;
            let r = client
                .post(format!("{base}/v1/tenants/shop/clicks"))
                .bearer_auth(&admin)
                .json(&json!({"request_id": token, "banner": banner}))
                .send()
                .unwrap();
            assert_eq!(r.status(), 202);
        }
    }
    assert!(
        shown_good > 0 && shown_good < decisions,
        "the uniform prior shows both"
    );

    // The job counts the log into Cassandra; the service's cache reloads it.
    let deadline = Instant::now() + Duration::from_secs(120);
    let after = loop {
        let p = posteriors(&client, &base, &admin, "pune");
        let impressions: u64 = p.iter().map(|b| b.1).sum();
        let clicks: u64 = p.iter().map(|b| b.2).sum();
        if impressions == decisions && clicks == shown_good {
            break p;
        }
        assert!(Instant::now() < deadline, "counts never arrived: {p:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let good = after.iter().find(|b| b.0 == "good").unwrap();
    let bad = after.iter().find(|b| b.0 == "bad").unwrap();
    assert_eq!((good.1, good.2), (shown_good, shown_good));
    assert_eq!((bad.1, bad.2), (decisions - shown_good, 0));
    assert!(good.3 > 0.9 && bad.3 < 0.1, "{after:?}");

    let later: Vec<String> = (0..100).map(|_| decide().1).collect();
    let good_share = later.iter().filter(|b| *b == "good").count();
    assert!(
        good_share >= 95,
        "later decisions prefer the clicked banner: {good_share}/100"
    );
}
