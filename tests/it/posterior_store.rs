//! One contract, two backends: each check below takes a fresh, empty `&dyn PosteriorStore` and
//! holds it to what the trait promises. `conformance!` runs every check against the embedded store
//! (a file in a temporary folder) and against the Cassandra store (a keyspace of its own on
//! `SLOTBANDIT_CASSANDRA`, skipped when that is unset), as `posterior_store::embedded::CHECK` and
//! `posterior_store::cassandra::CHECK`. A stored prior with a source this build does not know is
//! written through each backend's own tables and must fail naming the value.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use slotbandit::bandit::{CityEffect, Prior, PriorSource, SlotPriors};
use slotbandit::model::{
    ArmKey, CityAliases, CountKey, Counts, Event, EventFields, Offset, Partition, Recency,
    ShardKey, SlotConfig, SlotRules, ALL_TIME,
};
use slotbandit::store::{
    open_store, ApiKey, CountQuery, Part, PosteriorStore, Role, ShardState, ShardWrite, StoreError,
    Versions, META_AS_OF, META_BUCKET_MINUTES,
};
use slotbandit::time::Buckets;

use crate::cassandra::{cql, Keyspace};
use crate::common::service;

macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod embedded {
            $(
                #[test]
                fn $check() {
                    super::on_embedded(super::$check);
                }
            )*
        }

        mod cassandra {
            $(
                #[test]
                fn $check() {
                    super::on_cassandra(stringify!($check), super::$check);
                }
            )*
        }
    };
}

conformance!(
    epochs_are_counted_all_time_and_over_windows_per_tenant_slot_and_city,
    a_later_epoch_replaces_counts_and_a_zero_row_is_deleted,
    shards_returns_exactly_the_owned_shards_with_their_rows_and_offsets,
    clear_counts_removes_every_row_and_offset,
    checkpoints_round_trip_per_job,
    priors_round_trip_and_default_to_uniform,
    priors_are_replaced_whole_each_slot_with_a_new_version,
    put_slot_replaces_the_configuration_and_slots_lists_them,
    api_keys_round_trip,
    customer_events_are_kept_once_newest_first_up_to_the_limit,
    meta_as_of_and_buckets_round_trip,
    the_first_claim_of_a_meta_key_is_every_claimants,
    a_meta_value_is_replaced_only_by_who_expects_what_it_holds,
    posteriors_add_each_arms_prior_and_a_city_without_counts_gets_its_prior,
    a_parts_version_changes_exactly_when_the_part_is_written,
    keep_from_deletes_a_shards_earlier_buckets_and_never_its_all_time_rows,
    tenants_are_those_with_counts_a_slot_priors_or_a_key,
    counts_of_one_tenant_and_city_are_that_shards_only,
    city_aliases_are_replaced_whole_per_tenant_with_a_new_version,
    merge_shards_moves_every_row_and_the_larger_offsets_in_one_write,
    a_merge_of_a_shard_with_a_long_history_goes_through,
);

fn on_embedded(check: fn(&dyn PosteriorStore)) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("embedded:{}", dir.path().join("store.redb").display());
    check(open_store(&url, true).unwrap().as_ref());
}

fn on_cassandra(name: &str, check: fn(&dyn PosteriorStore)) {
    let Some(node) = service("SLOTBANDIT_CASSANDRA") else {
        return;
    };
    // Keyspace names allow 48 characters; the check's name is for whoever finds one left over.
    let prefix: String = format!("sbt_ps_{name}").chars().take(24).collect();
    let keyspace = Keyspace::new(&node, &prefix);
    check(keyspace.store().as_ref());
}

pub(crate) fn arm(tenant: &str, city: &str, slot: &str, banner: &str) -> ArmKey {
    ArmKey::new(tenant, slot, city, banner)
}

/// One count row: (tenant, city, slot, banner) in `bucket`.
pub(crate) fn row(arm: &ArmKey, bucket: i64, impressions: u64, clicks: u64) -> (CountKey, Counts) {
    (
        CountKey::new(Arc::new(arm.clone()), bucket),
        Counts::new(impressions, clicks),
    )
}

/// The rows grouped into one write per shard, each with `applied` offsets.
pub(crate) fn epoch(
    rows: &[(CountKey, Counts)],
    applied: &BTreeMap<Partition, Offset>,
) -> Vec<ShardWrite> {
    let mut shards = BTreeMap::new();
    for r in rows {
        let write = ShardWrite::entry(&mut shards, &ShardKey::of(&r.0.arm));
        write.rows.push(r.clone());
        write.applied = applied.clone();
    }
    shards.into_values().collect()
}

pub(crate) fn offsets(pairs: &[(i32, i64)]) -> BTreeMap<Partition, Offset> {
    pairs
        .iter()
        .map(|&(p, o)| (Partition(p), Offset(o)))
        .collect()
}

fn counts(store: &dyn PosteriorStore, query: CountQuery) -> Vec<(ArmKey, Counts)> {
    store.counts(&query).unwrap()
}

/// Every stored shard, each with its rows in key order (the trait does not order them).
fn all_shards(store: &dyn PosteriorStore, owns: &dyn Fn(&str, &str) -> bool) -> Vec<ShardState> {
    let mut shards = store.shards(owns).unwrap();
    for shard in &mut shards {
        shard.rows.sort();
    }
    shards.sort_by(|a, b| a.shard.cmp(&b.shard));
    shards
}

fn epochs_are_counted_all_time_and_over_windows_per_tenant_slot_and_city(
    store: &dyn PosteriorStore,
) {
    let hero_pune = arm("ajio", "pune", "hero", "b1");
    let hero_pune_2 = arm("ajio", "pune", "hero", "b2");
    let hero_delhi = arm("ajio", "delhi", "hero", "b1");
    let footer_pune = arm("ajio", "pune", "footer", "f1");
    let other_tenant = arm("myntra", "pune", "hero", "m1");
    // Buckets 479 and 480 lie on either side of a day boundary; -30 is before 1970.
    let rows = [
        row(&hero_pune, ALL_TIME, 20, 4),
        row(&hero_pune, -30, 2, 0),
        row(&hero_pune, 479, 8, 1),
        row(&hero_pune, 480, 10, 3),
        row(&hero_pune_2, ALL_TIME, 5, 1),
        row(&hero_pune_2, 481, 5, 1),
        row(&hero_delhi, ALL_TIME, 7, 2),
        row(&hero_delhi, 480, 7, 2),
        row(&footer_pune, ALL_TIME, 3, 0),
        row(&footer_pune, 100, 3, 0),
        row(&other_tenant, ALL_TIME, 9, 9),
        row(&other_tenant, 480, 9, 9),
    ];
    store.apply_epoch(&epoch(&rows, &offsets(&[]))).unwrap();

    let all = |t: Option<&str>, s: Option<&str>, c: Option<&str>, from: Option<i64>| CountQuery {
        tenant: t.map(Into::into),
        slot: s.map(Into::into),
        city: c.map(Into::into),
        from_bucket: from,
    };
    let c = Counts::new;
    assert_eq!(
        counts(store, all(None, None, None, None)),
        [
            (footer_pune.clone(), c(3, 0)),
            (hero_delhi.clone(), c(7, 2)),
            (hero_pune.clone(), c(20, 4)),
            (hero_pune_2.clone(), c(5, 1)),
            (other_tenant.clone(), c(9, 9)),
        ]
    );
    assert_eq!(
        counts(store, all(Some("ajio"), Some("hero"), Some("pune"), None)),
        [
            (hero_pune.clone(), c(20, 4)),
            (hero_pune_2.clone(), c(5, 1))
        ]
    );
    assert_eq!(
        counts(store, all(None, None, Some("delhi"), None)),
        [(hero_delhi.clone(), c(7, 2))]
    );
    assert_eq!(
        counts(store, all(Some("ajio"), Some("footer"), None, None)),
        [(footer_pune.clone(), c(3, 0))]
    );
    assert_eq!(counts(store, all(Some("zara"), None, None, None)), []);

    // A window sums the buckets from `from_bucket` on, never the all-time row.
    assert_eq!(
        counts(store, all(Some("ajio"), Some("hero"), None, Some(480))),
        [
            (hero_delhi.clone(), c(7, 2)),
            (hero_pune.clone(), c(10, 3)),
            (hero_pune_2.clone(), c(5, 1)),
        ]
    );
    assert_eq!(
        counts(store, all(Some("ajio"), None, Some("pune"), Some(-100))),
        [
            (footer_pune, c(3, 0)),
            (hero_pune.clone(), c(20, 4)),
            (hero_pune_2.clone(), c(5, 1)),
        ]
    );
    assert_eq!(
        counts(store, all(None, None, None, Some(481))),
        [(hero_pune_2, c(5, 1))]
    );
    assert_eq!(counts(store, all(None, None, None, Some(482))), []);
}

fn a_later_epoch_replaces_counts_and_a_zero_row_is_deleted(store: &dyn PosteriorStore) {
    let b1 = arm("ajio", "pune", "hero", "b1");
    let b2 = arm("ajio", "pune", "hero", "b2");
    let first = [
        row(&b1, ALL_TIME, 12, 3),
        row(&b1, 479, 5, 1),
        row(&b1, 480, 7, 2),
        row(&b2, ALL_TIME, 4, 4),
        row(&b2, 481, 4, 4),
    ];
    store
        .apply_epoch(&epoch(&first, &offsets(&[(0, 10)])))
        .unwrap();
    // Absolute values: one row changes, one falls to zero, one is new, b2 empties entirely.
    let second = [
        row(&b1, ALL_TIME, 14, 3),
        row(&b1, 479, 0, 0),
        row(&b1, 480, 8, 2),
        row(&b1, 490, 1, 0),
        row(&b2, ALL_TIME, 0, 0),
        row(&b2, 481, 0, 0),
    ];
    store
        .apply_epoch(&epoch(&second, &offsets(&[(0, 20)])))
        .unwrap();

    let shards = all_shards(store, &|_, _| true);
    assert_eq!(
        shards,
        [ShardState {
            shard: ShardKey::new("ajio", "pune"),
            rows: vec![
                row(&b1, ALL_TIME, 14, 3),
                row(&b1, 480, 8, 2),
                row(&b1, 490, 1, 0)
            ],
            applied: offsets(&[(0, 20)]),
            keep_from: None,
        }]
    );
    assert_eq!(
        counts(store, CountQuery::default()),
        [(b1.clone(), Counts::new(14, 3))]
    );
    let window = CountQuery {
        from_bucket: Some(0),
        ..Default::default()
    };
    assert_eq!(counts(store, window), [(b1, Counts::new(9, 2))]);
}

fn shards_returns_exactly_the_owned_shards_with_their_rows_and_offsets(store: &dyn PosteriorStore) {
    let pune = arm("ajio", "pune", "hero", "b1");
    let delhi = arm("ajio", "delhi", "hero", "b1");
    let goa = arm("zara", "goa", "hero", "z1");
    store
        .apply_epoch(&epoch(
            &[row(&pune, ALL_TIME, 3, 1), row(&pune, 700, 3, 1)],
            &offsets(&[(0, 5), (1, 1005)]),
        ))
        .unwrap();
    store
        .apply_epoch(&epoch(
            &[row(&delhi, ALL_TIME, 2, 0), row(&goa, 700, 1, 1)],
            &offsets(&[(0, 6)]),
        ))
        .unwrap();
    // A shard may have applied offsets before it has any rows.
    store
        .apply_epoch(&[ShardWrite {
            applied: offsets(&[(2, 9)]),
            ..ShardWrite::new(ShardKey::new("zara", "surat"))
        }])
        .unwrap();
    // A later epoch moves the offsets it names and keeps the others.
    store
        .apply_epoch(&[ShardWrite {
            applied: offsets(&[(1, 1010)]),
            ..ShardWrite::new(ShardKey::new("ajio", "pune"))
        }])
        .unwrap();

    let state = |tenant: &str, city: &str, rows: Vec<(CountKey, Counts)>, applied| ShardState {
        shard: ShardKey::new(tenant, city),
        rows,
        applied,
        keep_from: None,
    };
    let ajio = [
        state(
            "ajio",
            "delhi",
            vec![row(&delhi, ALL_TIME, 2, 0)],
            offsets(&[(0, 6)]),
        ),
        state(
            "ajio",
            "pune",
            vec![row(&pune, ALL_TIME, 3, 1), row(&pune, 700, 3, 1)],
            offsets(&[(0, 5), (1, 1010)]),
        ),
    ];
    let zara = [
        state(
            "zara",
            "goa",
            vec![row(&goa, 700, 1, 1)],
            offsets(&[(0, 6)]),
        ),
        state("zara", "surat", vec![], offsets(&[(2, 9)])),
    ];
    assert_eq!(all_shards(store, &|t, _| t == "ajio"), ajio);
    assert_eq!(
        all_shards(store, &|t, c| t == "zara" || c == "pune"),
        [ajio[1].clone(), zara[0].clone(), zara[1].clone()]
    );
    assert_eq!(all_shards(store, &|_, _| false), []);
    assert_eq!(
        store.applied_offsets().unwrap(),
        ajio.iter()
            .chain(&zara)
            .map(|s| (s.shard.clone(), s.applied.clone()))
            .collect()
    );
}

fn clear_counts_removes_every_row_and_offset(store: &dyn PosteriorStore) {
    let b1 = arm("ajio", "pune", "hero", "b1");
    store
        .apply_epoch(&epoch(
            &[row(&b1, ALL_TIME, 3, 1), row(&b1, 700, 3, 1)],
            &offsets(&[(0, 5)]),
        ))
        .unwrap();
    store
        .set_checkpoints("stream", &offsets(&[(0, 5)]))
        .unwrap();
    store.clear_counts().unwrap();
    assert_eq!(all_shards(store, &|_, _| true), []);
    assert!(store.applied_offsets().unwrap().is_empty());
    assert_eq!(counts(store, CountQuery::default()), []);
    // Only the counts: the checkpoints are the job's to reset.
    assert_eq!(store.checkpoints("stream").unwrap(), offsets(&[(0, 5)]));
    store
        .apply_epoch(&epoch(&[row(&b1, ALL_TIME, 1, 0)], &offsets(&[])))
        .unwrap();
    assert_eq!(
        counts(store, CountQuery::default()),
        [(b1, Counts::new(1, 0))]
    );
}

fn checkpoints_round_trip_per_job(store: &dyn PosteriorStore) {
    assert_eq!(store.checkpoints("stream").unwrap(), offsets(&[]));
    store
        .set_checkpoints("stream", &offsets(&[(0, 10), (1, 20)]))
        .unwrap();
    store
        .set_checkpoints("stream", &offsets(&[(1, 25), (2, 5)]))
        .unwrap();
    store.set_checkpoints("other", &offsets(&[(0, 1)])).unwrap();
    assert_eq!(
        store.checkpoints("stream").unwrap(),
        offsets(&[(0, 10), (1, 25), (2, 5)])
    );
    assert_eq!(store.checkpoints("other").unwrap(), offsets(&[(0, 1)]));
    assert_eq!(store.checkpoints("nobody").unwrap(), offsets(&[]));
}

fn priors_round_trip_and_default_to_uniform(store: &dyn PosteriorStore) {
    assert_eq!(store.priors("ajio", "hero").unwrap(), SlotPriors::uniform());
    let prior = |alpha0, beta0, source| Prior {
        alpha0,
        beta0,
        source,
    };
    let hero = SlotPriors {
        slot: prior(2.0, 38.0, PriorSource::SlotMean),
        banners: [
            (
                "b1".to_string(),
                prior(3.25, 61.5, PriorSource::EmpiricalBayes),
            ),
            ("b2".to_string(), prior(1.0, 1.0, PriorSource::Uniform)),
        ]
        .into(),
        cities: [
            ("pune".to_string(), effect(1.5, 42.0)),
            ("delhi".to_string(), effect(0.25, 10.5)),
        ]
        .into(),
    };
    let footer = SlotPriors {
        slot: prior(1.5, 20.0, PriorSource::EmpiricalBayes),
        banners: BTreeMap::new(),
        cities: BTreeMap::new(),
    };
    store.write_priors("ajio", "hero", &hero).unwrap();
    store.write_priors("ajio", "footer", &footer).unwrap();
    assert_eq!(store.priors("ajio", "hero").unwrap(), hero);
    assert_eq!(store.priors("ajio", "footer").unwrap(), footer);
    assert_eq!(
        store.priors("myntra", "hero").unwrap(),
        SlotPriors::uniform()
    );
    assert_eq!(
        store.priors("ajio", "hero").unwrap().for_banner("b9"),
        hero.slot
    );
}

fn effect(level: f64, clicks: f64) -> CityEffect {
    CityEffect { level, clicks }
}

fn priors_are_replaced_whole_each_slot_with_a_new_version(store: &dyn PosteriorStore) {
    let prior = |alpha0: f64| Prior {
        alpha0,
        beta0: 50.0,
        source: PriorSource::EmpiricalBayes,
    };
    let slot = |banners: &[&str], cities: &[&str]| SlotPriors {
        slot: Prior {
            alpha0: 1.0,
            beta0: 30.0,
            source: PriorSource::SlotMean,
        },
        banners: banners
            .iter()
            .map(|b| (b.to_string(), prior(3.0)))
            .collect(),
        cities: cities
            .iter()
            .map(|c| (c.to_string(), effect(2.0, 12.0)))
            .collect(),
    };
    let versions = |store: &dyn PosteriorStore| store.versions("ajio").unwrap();
    let before = versions(store);
    store
        .write_all_priors(&[
            (
                "ajio".into(),
                "hero".into(),
                slot(&["b1", "b2", "b3"], &["pune", "goa"]),
            ),
            ("ajio".into(), "side".into(), slot(&["s1"], &["agra"])),
        ])
        .unwrap();
    let first = versions(store);
    assert_eq!(
        changed_parts(&before, &first),
        [(Part::Priors, "hero".into()), (Part::Priors, "side".into())]
    );
    // Banners and cities the new priors leave out are gone: nothing of the old ones stays.
    let hero = slot(&["b2"], &["goa", "delhi"]);
    store.write_priors("ajio", "hero", &hero).unwrap();
    assert_eq!(store.priors("ajio", "hero").unwrap(), hero);
    assert_eq!(
        store.priors("ajio", "side").unwrap(),
        slot(&["s1"], &["agra"])
    );
    assert_eq!(
        changed_parts(&first, &versions(store)),
        [(Part::Priors, "hero".into())]
    );
    store
        .write_all_priors(&[("ajio".into(), "side".into(), SlotPriors::uniform())])
        .unwrap();
    assert_eq!(store.priors("ajio", "side").unwrap(), SlotPriors::uniform());
    store.write_all_priors(&[]).unwrap();
}

fn put_slot_replaces_the_configuration_and_slots_lists_them(store: &dyn PosteriorStore) {
    let from = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
    // Banner IDs in order: Cassandra returns a slot's banners sorted by ID.
    let slot = |tenant: &str, slot: &str, ids: &[&str], days: i64| {
        SlotConfig::with_banners(
            tenant,
            slot,
            ids.iter().copied(),
            from,
            from + Duration::days(days),
        )
    };
    assert_eq!(store.slot("ajio", "hero").unwrap(), None);
    assert_eq!(store.slots(None).unwrap(), []);
    let mut hero = slot("ajio", "hero", &["b1", "b2", "b3"], 30);
    hero.rules = SlotRules {
        recency: Some(Recency::Window(1440)),
        holdout_bp: 1250,
    };
    for config in [
        &hero,
        &slot("ajio", "footer", &["f1"], 1),
        &slot("myntra", "hero", &["m1"], 2),
    ] {
        store.put_slot(config).unwrap();
    }
    assert_eq!(store.slot("ajio", "hero").unwrap(), Some(hero));
    // Banners left out of a new configuration are removed, and so are its rules.
    let mut smaller = slot("ajio", "hero", &["b2", "b4"], 7);
    store.put_slot(&smaller).unwrap();
    assert_eq!(store.slot("ajio", "hero").unwrap(), Some(smaller.clone()));
    smaller.rules.recency = Some(Recency::AllTime);
    store.put_slot(&smaller).unwrap();
    assert_eq!(store.slot("ajio", "hero").unwrap(), Some(smaller));
    assert_eq!(store.slot("ajio", "nope").unwrap(), None);
    let pair = |t: &str, s: &str| (t.to_string(), s.to_string());
    assert_eq!(
        store.slots(Some("ajio")).unwrap(),
        [pair("ajio", "footer"), pair("ajio", "hero")]
    );
    assert_eq!(
        store.slots(None).unwrap(),
        [
            pair("ajio", "footer"),
            pair("ajio", "hero"),
            pair("myntra", "hero")
        ]
    );
}

fn api_keys_round_trip(store: &dyn PosteriorStore) {
    let admin = ApiKey {
        tenant: "ajio".into(),
        role: Role::Admin,
    };
    let serve = ApiKey {
        tenant: "myntra".into(),
        role: Role::Serve,
    };
    store.put_api_key(&"ab".repeat(32), &admin).unwrap();
    store.put_api_key(&"cd".repeat(32), &serve).unwrap();
    assert_eq!(store.api_key(&"ab".repeat(32)).unwrap(), Some(admin));
    assert_eq!(store.api_key(&"cd".repeat(32)).unwrap(), Some(serve));
    assert_eq!(store.api_key(&"ef".repeat(32)).unwrap(), None);
}

/// An event of tenant ajio, slot hero, city pune, banner b2.
fn customer_event(
    id: &str,
    kind: &str,
    customer: &str,
    ts: DateTime<Utc>,
    referrer: Option<&str>,
) -> Event {
    EventFields {
        event_id: Some(id),
        kind: Some(kind),
        tenant: Some("ajio"),
        slot: Some("hero"),
        city: Some("pune"),
        banner: Some("b2"),
        ts: Some(ts),
        customer_id: Some(customer),
        referrer,
        request_id: Some("req-1"),
        decision: Default::default(),
    }
    .validate()
    .unwrap()
}

/// Customer cust-1's three events one microsecond apart (e1, e2, e3, oldest first) and one of
/// cust-2 an hour later.
pub(crate) fn customer_history() -> Vec<Event> {
    let t0 = Utc.with_ymd_and_hms(2026, 11, 2, 18, 29, 59).unwrap();
    let micro = Duration::microseconds(1);
    vec![
        customer_event("e1", "impression", "cust-1", t0, Some("ads")),
        customer_event("e2", "click", "cust-1", t0 + micro, Some("ads")),
        // Same millisecond as e2: the microseconds order them.
        customer_event("e3", "impression", "cust-1", t0 + micro * 2, None),
        customer_event(
            "e4",
            "impression",
            "cust-2",
            t0 + Duration::hours(1),
            Some("direct"),
        ),
    ]
}

fn customer_events_are_kept_once_newest_first_up_to_the_limit(store: &dyn PosteriorStore) {
    let events = customer_history();
    let mut anonymous = customer_event("e5", "impression", "x", events[0].ts, None);
    anonymous.customer_id = None;
    store.append_customer_events(&events).unwrap();
    store.append_customer_events(&events[..2]).unwrap();
    store.append_customer_events(&[anonymous]).unwrap();
    let history = |tenant: &str, customer: &str, limit: usize| {
        store.customer_events(tenant, customer, limit).unwrap()
    };
    assert_eq!(
        history("ajio", "cust-1", 10),
        [events[2].clone(), events[1].clone(), events[0].clone()]
    );
    assert_eq!(
        history("ajio", "cust-1", 2),
        [events[2].clone(), events[1].clone()]
    );
    assert_eq!(history("ajio", "cust-1", 0), []);
    assert_eq!(history("ajio", "cust-2", 10), [events[3].clone()]);
    assert_eq!(history("ajio", "x", 10), []);
    assert_eq!(history("myntra", "cust-1", 10), []);
}

fn meta_as_of_and_buckets_round_trip(store: &dyn PosteriorStore) {
    assert_eq!(store.meta(META_AS_OF).unwrap(), None);
    assert_eq!(store.as_of().unwrap(), None);
    assert_eq!(store.buckets().unwrap(), Buckets::hourly());

    store.set_meta(META_AS_OF, "2026-11-03T00:00:00Z").unwrap();
    store.set_meta(META_BUCKET_MINUTES, "15").unwrap();
    store.set_meta("cutoff.stream", "first").unwrap();
    store.set_meta("cutoff.stream", "second").unwrap();
    assert_eq!(
        store.as_of().unwrap(),
        Some(Utc.with_ymd_and_hms(2026, 11, 3, 0, 0, 0).unwrap())
    );
    assert_eq!(store.buckets().unwrap(), Buckets::of_minutes(15).unwrap());
    assert_eq!(
        store.meta("cutoff.stream").unwrap().as_deref(),
        Some("second")
    );
    assert_eq!(store.meta("nothing").unwrap(), None);

    store.set_meta(META_AS_OF, "yesterday").unwrap();
    store.set_meta(META_BUCKET_MINUTES, "7").unwrap();
    assert!(
        matches!(store.as_of(), Err(StoreError::Meta { key, .. }) if key == META_AS_OF),
        "{:?}",
        store.as_of()
    );
    assert!(
        matches!(store.buckets(), Err(StoreError::Meta { key, .. }) if key == META_BUCKET_MINUTES),
        "{:?}",
        store.buckets()
    );
}

fn the_first_claim_of_a_meta_key_is_every_claimants(store: &dyn PosteriorStore) {
    // As replicas starting together on a new store each claim their own token secret.
    let claims: Vec<String> = std::thread::scope(|s| {
        let claimants: Vec<_> = (0..6)
            .map(|i| s.spawn(move || store.claim_meta("secret", &format!("replica-{i}")).unwrap()))
            .collect();
        claimants.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let held = store.meta("secret").unwrap().expect("claimed");
    assert!(held.starts_with("replica-"), "{held}");
    assert!(claims.iter().all(|c| *c == held), "{claims:?} vs {held}");
    assert_eq!(store.claim_meta("secret", "late").unwrap(), held);
    // A plain write still replaces it.
    store.set_meta("secret", "rotated").unwrap();
    assert_eq!(store.claim_meta("secret", "late").unwrap(), "rotated");
}

fn a_meta_value_is_replaced_only_by_who_expects_what_it_holds(store: &dyn PosteriorStore) {
    store.set_meta("lifetime", "60").unwrap();
    // Six writers expect 60; one wins, the others are told what it wrote.
    let answers: Vec<String> = std::thread::scope(|s| {
        let writers: Vec<_> = (0..6)
            .map(|i| {
                s.spawn(move || {
                    store
                        .replace_meta("lifetime", "60", &format!("w{i}"))
                        .unwrap()
                })
            })
            .collect();
        writers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let held = store.meta("lifetime").unwrap().expect("held");
    assert!(held.starts_with('w'), "{held}");
    assert!(answers.iter().all(|a| *a == held), "{answers:?} vs {held}");
    assert_eq!(store.replace_meta("lifetime", "60", "late").unwrap(), held);
    assert_eq!(
        store.replace_meta("lifetime", &held, "next").unwrap(),
        "next"
    );
    assert!(store.replace_meta("never-set", "x", "y").is_err());
}

fn posteriors_add_each_arms_prior_and_a_city_without_counts_gets_its_prior(
    store: &dyn PosteriorStore,
) {
    let rows = [
        row(&arm("ajio", "pune", "hero", "b1"), ALL_TIME, 100, 10),
        row(&arm("ajio", "delhi", "hero", "b1"), ALL_TIME, 50, 2),
        row(&arm("ajio", "delhi", "hero", "b2"), ALL_TIME, 40, 8),
        row(&arm("ajio", "pune", "footer", "f1"), ALL_TIME, 9, 1),
    ];
    store.apply_epoch(&epoch(&rows, &offsets(&[]))).unwrap();
    let priors = SlotPriors {
        slot: Prior {
            alpha0: 2.0,
            beta0: 30.0,
            source: PriorSource::SlotMean,
        },
        banners: [(
            "b1".to_string(),
            Prior {
                alpha0: 4.0,
                beta0: 50.0,
                source: PriorSource::EmpiricalBayes,
            },
        )]
        .into(),
        cities: [("delhi".to_string(), effect(1.5, 12.0))].into(),
    };
    store.write_priors("ajio", "hero", &priors).unwrap();

    let hero = |city: &str| CountQuery {
        tenant: Some("ajio".into()),
        slot: Some("hero".into()),
        city: Some(city.into()),
        from_bucket: None,
    };
    // (city, banner, impressions, clicks, the prior the posterior starts from)
    let expect = |rows: &[(&str, &str, u64, u64, Prior)]| -> Vec<_> {
        rows.iter()
            .map(|&(city, banner, imp, clk, prior)| {
                let posterior = prior.posterior(imp, clk);
                (
                    city.to_string(),
                    banner.to_string(),
                    imp,
                    clk,
                    posterior.alpha,
                    posterior.beta,
                )
            })
            .collect()
    };
    let got = |query: CountQuery| -> Vec<_> {
        store
            .posteriors(&query)
            .unwrap()
            .into_iter()
            .map(|r| {
                assert_eq!((r.tenant.as_str(), r.slot.as_str()), ("ajio", "hero"));
                let s = r.summary;
                (r.city, r.banner, s.impressions, s.clicks, s.alpha, s.beta)
            })
            .collect()
    };
    let arm_prior = |city: &str, banner: &str| priors.for_arm(city, banner);
    let (b1, b2) = (arm_prior("delhi", "b1"), arm_prior("delhi", "b2"));
    assert_eq!(b1.source, PriorSource::Hierarchical);
    assert_eq!(b2.source, PriorSource::SlotMean);
    assert!((b1.mean() - 1.5 * priors.for_banner("b1").mean()).abs() < 1e-12);
    assert_eq!(
        got(hero("delhi")),
        expect(&[("delhi", "b1", 50, 2, b1), ("delhi", "b2", 40, 8, b2)])
    );
    // Pune has counts but no city effect in these priors: the banner's effect as it is.
    assert_eq!(
        got(hero("pune")),
        expect(&[("pune", "b1", 100, 10, arm_prior("pune", "b1"))])
    );
    // A city without counts gets a row per banner of the slot, with its prior alone: the
    // prior every new city starts from, never the posterior pooled over cities.
    let new = arm_prior("nowhere", "b1");
    assert_eq!(new.source, PriorSource::EmpiricalBayes);
    assert_eq!(
        got(hero("nowhere")),
        expect(&[
            ("nowhere", "b1", 0, 0, new),
            ("nowhere", "b2", 0, 0, arm_prior("nowhere", "b2"))
        ])
    );
    let unknown_slot = CountQuery {
        slot: Some("nope".into()),
        ..hero("nowhere")
    };
    assert_eq!(store.posteriors(&unknown_slot).unwrap(), []);
}

/// The parts whose version differs between two reads of one tenant's versions (added, removed
/// or changed).
fn changed_parts(before: &Versions, after: &Versions) -> Vec<(Part, String)> {
    let mut keys: Vec<&(Part, String)> = before.keys().chain(after.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .cloned()
        .collect()
}

fn part(part: Part, name: &str) -> (Part, String) {
    (part, name.to_string())
}

/// A slot of `tenant` with banners b1 and b2, valid for 30 days from 1 November 2026.
fn hero_slot(tenant: &str, slot: &str) -> SlotConfig {
    let from = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
    SlotConfig::with_banners(tenant, slot, ["b1", "b2"], from, from + Duration::days(30))
}

fn a_parts_version_changes_exactly_when_the_part_is_written(store: &dyn PosteriorStore) {
    assert_eq!(store.versions("ajio").unwrap(), Versions::new());
    let pune = arm("ajio", "pune", "hero", "b1");
    let delhi = arm("ajio", "delhi", "hero", "b1");
    let myntra = arm("myntra", "pune", "hero", "m1");
    let rows = [
        row(&pune, ALL_TIME, 1, 0),
        row(&delhi, ALL_TIME, 1, 0),
        row(&myntra, ALL_TIME, 1, 0),
    ];
    store.apply_epoch(&epoch(&rows, &offsets(&[]))).unwrap();
    store.put_slot(&hero_slot("ajio", "hero")).unwrap();
    store
        .write_priors("ajio", "hero", &SlotPriors::uniform())
        .unwrap();
    let ajio = store.versions("ajio").unwrap();
    let myntra_versions = store.versions("myntra").unwrap();
    assert_eq!(
        ajio.keys().cloned().collect::<Vec<_>>(),
        [
            part(Part::Shard, "delhi"),
            part(Part::Shard, "pune"),
            part(Part::Slot, "hero"),
            part(Part::Priors, "hero"),
        ]
    );
    assert_eq!(
        myntra_versions.keys().cloned().collect::<Vec<_>>(),
        [part(Part::Shard, "pune")]
    );
    assert_eq!(
        store.versions("ajio").unwrap(),
        ajio,
        "reading changes none"
    );

    // Each write changes the version of the part it writes and of no other part or tenant.
    let mut before = ajio;
    let mut assert_changes = |write: &dyn Fn(), parts: &[(Part, String)]| {
        write();
        let after = store.versions("ajio").unwrap();
        assert_eq!(changed_parts(&before, &after), parts);
        assert_eq!(store.versions("myntra").unwrap(), myntra_versions);
        before = after;
    };
    assert_changes(
        &|| {
            let rows = [row(&pune, ALL_TIME, 2, 0)];
            store.apply_epoch(&epoch(&rows, &offsets(&[]))).unwrap();
        },
        &[part(Part::Shard, "pune")],
    );
    assert_changes(
        &|| {
            // Offsets alone change the shard too.
            let write = ShardWrite {
                applied: offsets(&[(0, 4)]),
                ..ShardWrite::new(ShardKey::new("ajio", "delhi"))
            };
            store.apply_epoch(&[write]).unwrap();
        },
        &[part(Part::Shard, "delhi")],
    );
    assert_changes(
        &|| {
            // The expiry of buckets before every kept window changes nothing a reader of the
            // counts sees: the version stays, and the lookup service reads nothing again.
            let write = ShardWrite {
                keep_from: Some(100),
                ..ShardWrite::new(ShardKey::new("ajio", "delhi"))
            };
            store.apply_epoch(&[write]).unwrap();
        },
        &[],
    );
    assert_changes(
        &|| store.put_slot(&hero_slot("ajio", "hero")).unwrap(),
        &[part(Part::Slot, "hero")],
    );
    assert_changes(
        &|| {
            store
                .write_priors("ajio", "hero", &SlotPriors::uniform())
                .unwrap()
        },
        &[part(Part::Priors, "hero")],
    );
    assert_changes(
        &|| store.put_slot(&hero_slot("ajio", "footer")).unwrap(),
        &[part(Part::Slot, "footer")],
    );
    // Clearing the counts removes every shard's version: readers see each shard change.
    let before_clear = store.versions("ajio").unwrap();
    store.clear_counts().unwrap();
    let cleared = store.versions("ajio").unwrap();
    assert_eq!(
        changed_parts(&before_clear, &cleared),
        [part(Part::Shard, "delhi"), part(Part::Shard, "pune")]
    );
    assert_eq!(
        cleared.keys().cloned().collect::<Vec<_>>(),
        [
            part(Part::Slot, "footer"),
            part(Part::Slot, "hero"),
            part(Part::Priors, "hero")
        ]
    );
    assert_eq!(store.versions("myntra").unwrap(), Versions::new());
}

fn keep_from_deletes_a_shards_earlier_buckets_and_never_its_all_time_rows(
    store: &dyn PosteriorStore,
) {
    let b1 = arm("ajio", "pune", "hero", "b1");
    let b2 = arm("ajio", "pune", "hero", "b2");
    let delhi = arm("ajio", "delhi", "hero", "b1");
    let rows = [
        row(&b1, ALL_TIME, 30, 6),
        row(&b1, 100, 10, 2),
        row(&b1, 101, 10, 2),
        row(&b1, 102, 10, 2),
        row(&b2, ALL_TIME, 5, 1),
        row(&b2, 100, 5, 1),
        row(&delhi, ALL_TIME, 4, 1),
        row(&delhi, 100, 4, 1),
    ];
    store.apply_epoch(&epoch(&rows, &offsets(&[]))).unwrap();
    // Pune keeps its buckets from 101 on and writes bucket 102 again; delhi is not written.
    let pune = ShardKey::new("ajio", "pune");
    store
        .apply_epoch(&[ShardWrite {
            rows: vec![row(&b1, ALL_TIME, 31, 6), row(&b1, 102, 11, 2)],
            applied: offsets(&[(0, 7)]),
            keep_from: Some(101),
            ..ShardWrite::new(pune.clone())
        }])
        .unwrap();
    let window = |from| CountQuery {
        from_bucket: Some(from),
        ..Default::default()
    };
    let c = Counts::new;
    assert_eq!(
        counts(store, window(0)),
        [(delhi.clone(), c(4, 1)), (b1.clone(), c(21, 4))]
    );
    assert_eq!(
        counts(store, CountQuery::default()),
        [
            (delhi.clone(), c(4, 1)),
            (b1.clone(), c(31, 6)),
            (b2.clone(), c(5, 1))
        ]
    );
    assert_eq!(
        all_shards(store, &|_, c| c == "pune"),
        [ShardState {
            shard: pune.clone(),
            rows: vec![
                row(&b1, ALL_TIME, 31, 6),
                row(&b1, 101, 10, 2),
                row(&b1, 102, 11, 2),
                row(&b2, ALL_TIME, 5, 1),
            ],
            applied: offsets(&[(0, 7)]),
            keep_from: None,
        }]
    );
    // Keeping from past every bucket leaves the all-time rows alone.
    store
        .apply_epoch(&[ShardWrite {
            keep_from: Some(200),
            ..ShardWrite::new(pune)
        }])
        .unwrap();
    assert_eq!(counts(store, window(0)), [(delhi.clone(), c(4, 1))]);
    assert_eq!(
        counts(store, CountQuery::default()),
        [(delhi, c(4, 1)), (b1, c(31, 6)), (b2, c(5, 1))]
    );
}

fn tenants_are_those_with_counts_a_slot_priors_or_a_key(store: &dyn PosteriorStore) {
    assert_eq!(store.tenants().unwrap(), Vec::<String>::new());
    let key = ApiKey {
        tenant: "nykaa".into(),
        role: Role::Serve,
    };
    store.put_api_key(&"ab".repeat(32), &key).unwrap();
    let rows = [row(&arm("ajio", "pune", "hero", "b1"), ALL_TIME, 1, 0)];
    store.apply_epoch(&epoch(&rows, &offsets(&[]))).unwrap();
    store.put_slot(&hero_slot("myntra", "hero")).unwrap();
    store
        .write_priors("zara", "hero", &SlotPriors::uniform())
        .unwrap();
    assert_eq!(
        store.tenants().unwrap(),
        ["ajio", "myntra", "nykaa", "zara"]
    );
    // A tenant with counts only is gone with its counts.
    store.clear_counts().unwrap();
    assert_eq!(store.tenants().unwrap(), ["myntra", "nykaa", "zara"]);
}

fn counts_of_one_tenant_and_city_are_that_shards_only(store: &dyn PosteriorStore) {
    let b1 = arm("ajio", "pune", "hero", "b1");
    let f1 = arm("ajio", "pune", "footer", "f1");
    // Shards whose names start like ajio/pune, and one of another city.
    let rows = [
        row(&b1, ALL_TIME, 10, 1),
        row(&b1, 500, 4, 1),
        row(&b1, 501, 6, 0),
        row(&f1, ALL_TIME, 3, 0),
        row(&f1, 501, 3, 0),
        row(&arm("ajio", "pune-2", "hero", "b1"), ALL_TIME, 7, 7),
        row(&arm("ajio", "pune-2", "hero", "b1"), 501, 7, 7),
        row(&arm("ajio2", "pune", "hero", "b1"), ALL_TIME, 9, 0),
        row(&arm("ajio2", "pune", "hero", "b1"), 501, 9, 0),
        row(&arm("ajio", "delhi", "hero", "b1"), ALL_TIME, 2, 2),
    ];
    store.apply_epoch(&epoch(&rows, &offsets(&[]))).unwrap();
    let pune = |slot: Option<&str>, from_bucket: Option<i64>| CountQuery {
        tenant: Some("ajio".into()),
        city: Some("pune".into()),
        slot: slot.map(Into::into),
        from_bucket,
    };
    let c = Counts::new;
    assert_eq!(
        counts(store, pune(None, None)),
        [(f1.clone(), c(3, 0)), (b1.clone(), c(10, 1))]
    );
    assert_eq!(
        counts(store, pune(None, Some(500))),
        [(f1.clone(), c(3, 0)), (b1.clone(), c(10, 1))]
    );
    assert_eq!(
        counts(store, pune(Some("hero"), Some(501))),
        [(b1.clone(), c(6, 0))]
    );
    assert_eq!(counts(store, pune(Some("footer"), None)), [(f1, c(3, 0))]);
    let nowhere = CountQuery {
        city: Some("nowhere".into()),
        ..pune(None, None)
    };
    assert_eq!(counts(store, nowhere), []);
}

/// A prior row whose source this build does not know, written straight into a backend's table.
const UNKNOWN_SOURCE: &str = "gut_feeling";

fn city_aliases_are_replaced_whole_per_tenant_with_a_new_version(store: &dyn PosteriorStore) {
    assert_eq!(store.city_aliases("ajio").unwrap(), CityAliases::default());
    let mut aliases = CityAliases::default();
    aliases.declare("Bangalore", "Bengaluru").unwrap();
    aliases.declare("gurgaon", "gurugram").unwrap();
    store.put_city_aliases("ajio", &aliases).unwrap();
    store
        .put_city_aliases(
            "myntra",
            &CityAliases::default()
                .with_csv("alias,city\nbombay,mumbai")
                .unwrap(),
        )
        .unwrap();
    assert_eq!(store.city_aliases("ajio").unwrap(), aliases);
    assert_eq!(
        store.city_aliases("ajio").unwrap().resolve("bangalore"),
        "bengaluru"
    );
    let all = store.all_city_aliases().unwrap();
    assert_eq!(all.resolve("myntra", "bombay"), "mumbai");
    assert_eq!(all.resolve("ajio", "bombay"), "bombay");
    assert!(store.tenants().unwrap().contains(&"myntra".to_string()));

    let before = store.versions("ajio").unwrap();
    assert!(before.contains_key(&part(Part::Aliases, "")), "{before:?}");
    aliases.remove("gurgaon").unwrap();
    store.put_city_aliases("ajio", &aliases).unwrap();
    let after = store.versions("ajio").unwrap();
    assert_eq!(
        changed_parts(&before, &after),
        vec![part(Part::Aliases, "")]
    );
    assert_eq!(store.city_aliases("ajio").unwrap(), aliases);
    assert_eq!(store.city_aliases("ajio").unwrap().len(), 1);
    store
        .put_city_aliases("ajio", &CityAliases::default())
        .unwrap();
    assert!(store.city_aliases("ajio").unwrap().is_empty());
    assert_eq!(store.city_aliases("myntra").unwrap().len(), 1);
}

fn merge_shards_moves_every_row_and_the_larger_offsets_in_one_write(store: &dyn PosteriorStore) {
    let old = arm("ajio", "bangalore", "hero", "b1");
    let new = arm("ajio", "bengaluru", "hero", "b1");
    let new2 = arm("ajio", "bengaluru", "hero", "b2");
    for shard in epoch(
        &[row(&old, ALL_TIME, 10, 2), row(&old, 7, 10, 2)],
        &offsets(&[(0, 40), (1, 5)]),
    ) {
        store.apply_epoch(&[shard]).unwrap();
    }
    for shard in epoch(
        &[
            row(&new, ALL_TIME, 5, 1),
            row(&new, 7, 5, 1),
            row(&new2, ALL_TIME, 3, 0),
        ],
        &offsets(&[(0, 30), (2, 9)]),
    ) {
        store.apply_epoch(&[shard]).unwrap();
    }
    let before = store.versions("ajio").unwrap();
    let old_state = all_shards(store, &|_, c| c == "bangalore").remove(0);
    let from = ShardWrite {
        rows: old_state
            .rows
            .iter()
            .map(|(k, _)| (k.clone(), Counts::default()))
            .collect(),
        ..ShardWrite::new(ShardKey::new("ajio", "bangalore"))
    };
    let into = ShardWrite {
        rows: vec![row(&new, ALL_TIME, 15, 3), row(&new, 7, 15, 3)],
        applied: offsets(&[(0, 40), (1, 5)]),
        ..ShardWrite::new(ShardKey::new("ajio", "bengaluru"))
    };
    store.merge_shards(&[from, into]).unwrap();
    let shards = all_shards(store, &|t, _| t == "ajio");
    let merged: Vec<_> = shards
        .iter()
        .filter(|s| s.shard.city == "bengaluru")
        .collect();
    assert_eq!(merged.len(), 1);
    let mut want = vec![
        row(&new, ALL_TIME, 15, 3),
        row(&new, 7, 15, 3),
        row(&new2, ALL_TIME, 3, 0),
    ];
    want.sort();
    assert_eq!(merged[0].rows, want);
    assert_eq!(merged[0].applied, offsets(&[(0, 40), (1, 5), (2, 9)]));
    assert!(shards
        .iter()
        .filter(|s| s.shard.city == "bangalore")
        .all(|s| s.rows.is_empty()));
    let q = |city: &str| CountQuery {
        tenant: Some("ajio".into()),
        city: Some(city.into()),
        ..Default::default()
    };
    assert!(counts(store, q("bangalore")).is_empty());
    assert_eq!(counts(store, q("bengaluru"))[0].1, Counts::new(15, 3));
    let changed = changed_parts(&before, &store.versions("ajio").unwrap());
    assert_eq!(
        changed,
        vec![
            part(Part::Shard, "bangalore"),
            part(Part::Shard, "bengaluru")
        ]
    );
}

/// Thousands of bucket rows: more than Cassandra takes in one batch over two partitions.
fn a_merge_of_a_shard_with_a_long_history_goes_through(store: &dyn PosteriorStore) {
    let banners = ["b1", "b2", "b3", "b4"];
    let history = |city: &str| -> Vec<(CountKey, Counts)> {
        let mut rows = Vec::new();
        for b in banners {
            let a = arm("ajio", city, "hero", b);
            rows.push(row(&a, ALL_TIME, 800, 80));
            rows.extend((0..400).map(|bucket| row(&a, bucket, 2, 0)));
        }
        rows
    };
    store
        .apply_epoch(&epoch(&history("bangalore"), &offsets(&[(0, 9)])))
        .unwrap();
    store
        .apply_epoch(&epoch(&history("bengaluru"), &offsets(&[(1, 9)])))
        .unwrap();
    let from = ShardWrite {
        rows: history("bangalore")
            .into_iter()
            .map(|(k, _)| (k, Counts::default()))
            .collect(),
        ..ShardWrite::new(ShardKey::new("ajio", "bangalore"))
    };
    let into = ShardWrite {
        rows: history("bengaluru")
            .into_iter()
            .map(|(k, c)| (k, Counts::new(c.impressions * 2, c.clicks * 2)))
            .collect(),
        applied: offsets(&[(0, 9), (1, 9)]),
        ..ShardWrite::new(ShardKey::new("ajio", "bengaluru"))
    };
    store.merge_shards(&[from, into]).unwrap();
    let all = counts(store, CountQuery::default());
    assert_eq!(all.len(), banners.len());
    for (a, c) in all {
        assert_eq!((a.city.as_str(), c), ("bengaluru", Counts::new(1600, 160)));
    }
    let window = CountQuery {
        from_bucket: Some(0),
        ..Default::default()
    };
    assert!(counts(store, window)
        .iter()
        .all(|(_, c)| *c == Counts::new(1600, 0)));
}

/// A Cassandra merge cut between its two steps (rows and record written, the alias's shard not
/// yet deleted) is finished without adding the rows twice, by `finish_merges` or by the merge
/// again.
#[test]
fn cassandra_a_merge_cut_between_its_steps_is_finished_once() {
    let Some(node) = service("SLOTBANDIT_CASSANDRA") else {
        return;
    };
    let ks = Keyspace::new(&node, "sbt_ps_merge_cut");
    let store = ks.store();
    let old = arm("ajio", "bangalore", "hero", "b1");
    let new = arm("ajio", "bengaluru", "hero", "b1");
    // As the first step leaves it: bengaluru holds the sums, the record is written.
    let cut_after_first_step = || {
        let alias_rows = epoch(&[row(&old, ALL_TIME, 10, 1)], &offsets(&[(0, 4)]));
        store.apply_epoch(&alias_rows).unwrap();
        let merged_rows = epoch(&[row(&new, ALL_TIME, 15, 2)], &offsets(&[(0, 4)]));
        store.apply_epoch(&merged_rows).unwrap();
        let record = format!(
            "INSERT INTO {}.city_merges (tenant, city, alias) \
             VALUES ('ajio', 'bengaluru', 'bangalore')",
            ks.name
        );
        cql(&node, &record).unwrap();
    };
    let mut aliases = CityAliases::default();
    aliases.declare("bangalore", "bengaluru").unwrap();
    store.put_city_aliases("ajio", &aliases).unwrap();
    let declared = store.all_city_aliases().unwrap();
    let merged = [(new.clone(), Counts::new(15, 2))];

    cut_after_first_step();
    store.finish_merges(&declared).unwrap();
    assert_eq!(counts(store.as_ref(), CountQuery::default()), merged);
    // With nothing left to do, it changes nothing.
    store.finish_merges(&declared).unwrap();
    assert_eq!(counts(store.as_ref(), CountQuery::default()), merged);

    // The merge again, computed from the half-merged state, finds the record.
    cut_after_first_step();
    let twice = ShardWrite {
        rows: vec![row(&new, ALL_TIME, 25, 3)],
        ..ShardWrite::new(ShardKey::new("ajio", "bengaluru"))
    };
    let from = ShardWrite::new(ShardKey::new("ajio", "bangalore"));
    store.merge_shards(&[from, twice]).unwrap();
    assert_eq!(counts(store.as_ref(), CountQuery::default()), merged);
}

fn assert_unknown_source_is_named(store: &dyn PosteriorStore) {
    let err = store.priors("ajio", "hero").unwrap_err().to_string();
    assert!(
        err.contains(&format!("unknown prior source {UNKNOWN_SOURCE:?}")),
        "{err}"
    );
    assert_eq!(
        store.priors("ajio", "footer").unwrap(),
        SlotPriors::uniform()
    );
}

#[test]
fn embedded_unknown_prior_source_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let url = format!("embedded:{}", path.display());
    drop(open_store(&url, true).unwrap());
    {
        let table: redb::TableDefinition<(&str, &str, &str), (f64, f64, &str)> =
            redb::TableDefinition::new("priors");
        let db = redb::Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(table)
            .unwrap()
            .insert(("ajio", "hero", "b1"), (2.0, 20.0, UNKNOWN_SOURCE))
            .unwrap();
        tx.commit().unwrap();
    }
    assert_unknown_source_is_named(open_store(&url, false).unwrap().as_ref());
}

#[test]
fn cassandra_unknown_prior_source_is_an_error_naming_it() {
    let Some(node) = service("SLOTBANDIT_CASSANDRA") else {
        return;
    };
    let keyspace = Keyspace::new(&node, "sbt_ps_prior_source");
    cql(
        &node,
        &format!(
            "INSERT INTO {}.priors (tenant, slot, banner, alpha0, beta0, source) \
             VALUES ('ajio', 'hero', 'b1', 2.0, 20.0, '{UNKNOWN_SOURCE}')",
            keyspace.name
        ),
    )
    .unwrap();
    assert_unknown_source_is_named(keyspace.store().as_ref());
}
