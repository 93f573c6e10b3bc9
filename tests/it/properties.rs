//! Property tests of the pure logic: event codec, validation, Thompson decisions.

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use slotbandit::bandit::{prob_best, seeded_rng, BetaPosterior, DecisionError, SlotPolicy};
use slotbandit::model::{
    Banner, DecisionLog, Event, EventKind, Policy, SlotConfig, EVENT_FIELDS, RANK_MAX,
};
use statrs::distribution::{Beta, Continuous, ContinuousCDF};

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9_-]{1,64}"
}

/// A city in the form the city rule gives: words of `[a-z0-9]` joined by `_`.
fn city() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,12}(_[a-z0-9]{1,12}){0,3}"
}

fn token(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[A-Za-z0-9._:/=+-]{{1,{max}}}")).unwrap()
}

fn instant() -> impl Strategy<Value = DateTime<Utc>> {
    // 2000-01-01 to 2100-01-01, microsecond resolution.
    (946_684_800_000_000i64..4_102_444_800_000_000i64)
        .prop_map(|us| DateTime::from_timestamp_micros(us).unwrap())
}

/// Any valid decision log: each field present or not, propensities anywhere in (0, 1].
fn decision_log() -> impl Strategy<Value = DecisionLog> {
    use proptest::option::of;
    (
        of(prop_oneof![Just(Policy::Thompson), Just(Policy::Uniform)]),
        of(any::<u32>()),
        of(any::<bool>()),
        of((f64::MIN_POSITIVE..=1.0, of(0.0..=1.0f64))),
        of(1..=RANK_MAX),
    )
        .prop_map(
            |(policy, policy_version, holdout, propensity, rank)| DecisionLog {
                policy,
                policy_version,
                holdout: holdout.filter(|&h| !(h && policy == Some(Policy::Thompson))),
                propensity: propensity.map(|(p, _)| p),
                propensity_error: propensity.and_then(|(_, e)| e),
                rank,
            },
        )
}

fn event() -> impl Strategy<Value = Event> {
    (
        token(64),
        prop_oneof![Just(EventKind::Impression), Just(EventKind::Click)],
        (name(), name(), city(), name()),
        instant(),
        proptest::option::of(token(128)),
        proptest::option::of(token(64)),
        proptest::option::of(token(200)),
        decision_log(),
    )
        .prop_map(
            |(
                event_id,
                kind,
                (tenant, slot, city, banner),
                ts,
                customer_id,
                referrer,
                request_id,
                decision,
            )| Event {
                event_id,
                kind,
                tenant,
                slot,
                city,
                banner,
                ts,
                customer_id,
                referrer,
                request_id,
                decision,
            },
        )
}

/// A mutation that breaks exactly one field's rule.
#[derive(Debug, Clone)]
enum Breakage {
    Remove(&'static str),
    Set(&'static str, serde_json::Value),
}

fn breakage() -> impl Strategy<Value = Breakage> {
    use serde_json::json;
    // The first seven fields are the required ones.
    let required = proptest::sample::select(&EVENT_FIELDS[..7]);
    let named = prop_oneof![Just("tenant"), Just("slot"), Just("city"), Just("banner")];
    let bad_name = prop_oneof![
        Just(json!("")),
        // Bad for every name, the city rule's folding too.
        Just(json!("\u{92a}\u{941}\u{923}\u{947}")),
        Just(json!("Stra\u{df}e")),
        Just(json!("a".repeat(65))),
        Just(json!("-\u{2014}-")),
        Just(json!(42)),
        Just(json!(null)),
    ];
    let any_field = proptest::sample::select(&EVENT_FIELDS[..]);
    prop_oneof![
        required.prop_map(Breakage::Remove),
        (named, bad_name).prop_map(|(f, v)| Breakage::Set(f, v)),
        prop_oneof![
            Just(json!("view")),
            Just(json!("Click")),
            Just(json!("")),
            Just(json!(1))
        ]
        .prop_map(|v| Breakage::Set("kind", v)),
        prop_oneof![
            Just(json!("2026-11-28T21:05:00")),
            Just(json!("28/11/2026")),
            Just(json!("")),
            Just(json!(1764345900)),
            Just(json!("2026-13-01T00:00:00Z"))
        ]
        .prop_map(|v| Breakage::Set("ts", v)),
        Just(Breakage::Set("customer_id", json!("x".repeat(129)))),
        Just(Breakage::Set("customer_id", json!("two words"))),
        Just(Breakage::Set("referrer", json!("r".repeat(65)))),
        Just(Breakage::Set("event_id", json!(""))),
        Just(Breakage::Set("event_id", json!("e".repeat(129)))),
        any_field.prop_map(|f| Breakage::Set(f, json!({"nested": true}))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn json_round_trips(e in event()) {
        let back = Event::from_json(e.to_json().as_bytes()).unwrap();
        prop_assert_eq!(back, e);
    }

    #[test]
    fn every_invalid_event_is_rejected_naming_the_field(e in event(), b in breakage()) {
        let mut doc: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        let obj = doc.as_object_mut().unwrap();
        let field = match &b {
            Breakage::Remove(f) => { obj.remove(*f); *f }
            Breakage::Set(f, v) => { obj.insert(f.to_string(), v.clone()); *f }
        };
        let err = Event::from_json(doc.to_string().as_bytes()).unwrap_err();
        prop_assert_eq!(err.field(), Some(field), "{:?} gave {}", b, err);
        prop_assert!(err.to_string().contains(field));
    }

    /// A city as a site spells it (case, spaces, punctuation) decodes to its normal form.
    #[test]
    fn spelled_cities_decode_to_their_normal_form(
        e in event(),
        upper in proptest::collection::vec(any::<bool>(), 64),
        gaps in proptest::collection::vec(prop_oneof![Just(" "), Just("-"), Just(" - "), Just(".  ")], 4),
    ) {
        let mut spelled: String = e.city.chars().zip(&upper).map(|(c, &u)| {
            if u { c.to_ascii_uppercase() } else { c }
        }).collect();
        for gap in &gaps {
            spelled = spelled.replacen('_', gap, 1);
        }
        let doc = e.to_json().replace(&format!("\"city\":\"{}\"", e.city), &format!("\"city\":\" {spelled} \""));
        let back = Event::from_json(doc.as_bytes()).unwrap();
        prop_assert_eq!(back, e);
    }

    #[test]
    fn unknown_fields_are_named(e in event(), extra in "[a-z]{3,12}") {
        prop_assume!(!slotbandit::model::EVENT_FIELDS.contains(&extra.as_str()));
        let mut doc: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        doc.as_object_mut().unwrap().insert(extra.clone(), serde_json::json!("x"));
        let err = Event::from_json(doc.to_string().as_bytes()).unwrap_err();
        prop_assert_eq!(err.field(), Some(extra.as_str()));
    }
}

/// Exact P(best) by numerical integration: P(i best) = ∫ f_i(x) Π_{j≠i} F_j(x) dx (Simpson).
fn exact_prob_best(params: &[(f64, f64)]) -> Vec<f64> {
    let dists: Vec<Beta> = params
        .iter()
        .map(|&(a, b)| Beta::new(a, b).unwrap())
        .collect();
    let steps = 4000;
    let h = 1.0 / steps as f64;
    let mut p = vec![0.0; dists.len()];
    for k in 0..=steps {
        let x = (k as f64 * h).clamp(1e-12, 1.0 - 1e-12);
        let w = if k == 0 || k == steps {
            1.0
        } else if k % 2 == 1 {
            4.0
        } else {
            2.0
        };
        let cdfs: Vec<f64> = dists.iter().map(|d| d.cdf(x)).collect();
        for (i, d) in dists.iter().enumerate() {
            let others: f64 = cdfs
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, c)| c)
                .product();
            p[i] += w * d.pdf(x) * others;
        }
    }
    p.iter().map(|v| v * h / 3.0).collect()
}

fn always_valid_slot(n: usize) -> SlotConfig {
    let from = DateTime::from_timestamp(0, 0).unwrap();
    let ids = (0..n).map(|i| format!("b{i}"));
    SlotConfig::with_banners("ajio", "hero", ids, from, from + Duration::days(365 * 200))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn selection_frequencies_match_p_best(
        params in proptest::collection::vec((1.0f64..60.0, 1.0f64..60.0), 2..6),
        seed in any::<u64>(),
    ) {
        let config = always_valid_slot(params.len());
        let mut i = 0;
        let policy = SlotPolicy::new(&std::sync::Arc::new(config.clone()), |_| {
            let (a, b) = params[i];
            i += 1;
            BetaPosterior::new(a, b).unwrap()
        });
        let now = DateTime::from_timestamp(1_764_345_900, 0).unwrap();
        let draws = 20_000;
        let mut rng = seeded_rng(seed);
        let mut wins = vec![0u32; params.len()];
        let mut out = Vec::new();
        for _ in 0..draws {
            policy.decide(now, 1, &mut rng, &mut out).unwrap();
            wins[out[0]] += 1;
        }
        let exact = exact_prob_best(&params);
        let monte_carlo = prob_best(policy.samplers(), draws, &mut seeded_rng(seed ^ 0x5eed));
        // Tolerance: 4.5 binomial standard errors of a 20,000-draw frequency, plus quadrature error.
        for k in 0..params.len() {
            let p = exact[k].clamp(0.0, 1.0);
            let tol = 4.5 * (p * (1.0 - p) / draws as f64).sqrt() + 0.003;
            let freq = wins[k] as f64 / draws as f64;
            prop_assert!((freq - p).abs() <= tol, "arm {}: freq {} vs exact {} (tol {})", k, freq, p, tol);
            prop_assert!((monte_carlo[k] - p).abs() <= tol, "arm {}: P(best) {} vs exact {}", k, monte_carlo[k], p);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn decisions_respect_validity_windows(
        windows in proptest::collection::vec((0i64..1000, 1i64..500), 1..12),
        now_min in -50i64..1600,
        n in 1usize..5,
        seed in any::<u64>(),
    ) {
        let epoch = DateTime::from_timestamp(1_764_000_000, 0).unwrap();
        let config = SlotConfig {
            tenant: "ajio".into(),
            slot: "hero".into(),
            banners: windows
                .iter()
                .enumerate()
                .map(|(i, &(start, len))| Banner {
                    id: format!("b{i}"),
                    image: format!("b{i}.svg"),
                    valid_from: epoch + Duration::minutes(start),
                    valid_to: epoch + Duration::minutes(start + len),
                })
                .collect(),
            rules: Default::default(),
        };
        let policy = SlotPolicy::new(&std::sync::Arc::new(config.clone()), |_| BetaPosterior::uniform());
        let now = epoch + Duration::minutes(now_min);
        let valid = config.banners.iter().filter(|b| b.valid_from <= now && now < b.valid_to).count();
        let mut out = Vec::new();
        match policy.decide(now, n, &mut seeded_rng(seed), &mut out) {
            Ok(()) => {
                prop_assert_eq!(out.len(), n.min(valid));
                for &i in &out {
                    let b = &config.banners[i];
                    prop_assert!(b.valid_from <= now && now < b.valid_to, "{} shown outside its window", b.id);
                }
                let mut distinct = out.clone();
                distinct.sort_unstable();
                distinct.dedup();
                prop_assert_eq!(distinct.len(), out.len());
            }
            Err(DecisionError::NoValidBanner { tenant, slot, at }) => {
                prop_assert_eq!(valid, 0);
                prop_assert_eq!((tenant.as_str(), slot.as_str()), ("ajio", "hero"));
                prop_assert!(at.ends_with("IST"));
            }
            Err(e) => prop_assert!(false, "unexpected error {}", e),
        }
    }
}

#[test]
fn zero_banners_requested_is_an_error() {
    let policy = SlotPolicy::new(&std::sync::Arc::new(always_valid_slot(3)), |_| {
        BetaPosterior::uniform()
    });
    let now = DateTime::from_timestamp(1_764_345_900, 0).unwrap();
    let err = policy
        .decide(now, 0, &mut seeded_rng(1), &mut Vec::new())
        .unwrap_err();
    assert_eq!(err, DecisionError::ZeroBanners);
}
