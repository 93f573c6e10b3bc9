//! A synthetic clickstream that looks like a real one: Indian cities with skewed traffic, IST
//! diurnal load, true CTRs per (tenant, slot, city, banner) between 0.5% and 8% (a banner effect
//! times a city effect), customers, referrers, and clicks linked to their impressions by
//! `request_id`. Banners are logged by a uniform random policy. Deterministic for a seed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, NaiveDate};
use rand::{RngExt, SeedableRng};
use rand_distr::weighted::WeightedAliasIndex;
use rand_distr::{Distribution, Exp, LogNormal};
use serde::{Deserialize, Serialize};

use crate::model::parquet::{ParquetEventError, PartitionedWriter, ROWS_PER_FILE};
use crate::model::{EventKind, EventRef, SlotConfig, SlotConfigError};
use crate::time;

const TENANTS: [&str; 8] = [
    "ajio", "myntra", "nykaa", "tatacliq", "meesho", "snapdeal", "firstcry", "lenskart",
];
/// Ordered by traffic: the skew follows the list.
const CITIES: [&str; 30] = [
    "mumbai",
    "delhi",
    "bangalore",
    "hyderabad",
    "chennai",
    "kolkata",
    "pune",
    "ahmedabad",
    "jaipur",
    "surat",
    "lucknow",
    "kanpur",
    "nagpur",
    "indore",
    "bhopal",
    "patna",
    "vadodara",
    "ludhiana",
    "agra",
    "nashik",
    "kochi",
    "coimbatore",
    "visakhapatnam",
    "guwahati",
    "chandigarh",
    "mysore",
    "thiruvananthapuram",
    "bhubaneswar",
    "dehradun",
    "ranchi",
];
const SLOTS: [(&str, f64); 2] = [("hero", 0.7), ("footer", 0.3)];
const REFERRERS: [(&str, f64); 5] = [
    ("direct", 0.45),
    ("ads", 0.25),
    ("thirdparty", 0.15),
    ("email", 0.08),
    ("social", 0.07),
];
/// Relative traffic per IST hour of day: a night trough, a lunch bump and an evening peak.
const DIURNAL: [f64; 24] = [
    0.30, 0.20, 0.15, 0.10, 0.10, 0.15, 0.30, 0.50, 0.80, 1.00, 1.10, 1.20, 1.30, 1.20, 1.10, 1.00,
    1.00, 1.10, 1.30, 1.50, 1.60, 1.50, 1.00, 0.60,
];
pub const CTR_MIN: f64 = 0.005;
pub const CTR_MAX: f64 = 0.08;

/// The largest world `gen` makes: a million-arm platform (e.g. 100 tenants × 2 slots × 500 cities
/// × 10 banners, or 50 × 2 × 200 × 50) fits four times over; the ground truth lists every arm, so
/// the bound keeps `_truth.json` and the generator's memory within a laptop's.
pub const MAX_ARMS: usize = 4_000_000;
pub const MAX_TENANTS: u16 = 1000;
pub const MAX_CITIES: u16 = 1000;
pub const MAX_BANNERS: u16 = 100;

/// What to generate. `impressions` is the number of impressions; each click adds a row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenSpec {
    pub impressions: u64,
    pub days: u32,
    pub seed: u64,
    pub tenants: usize,
    pub cities: usize,
    pub banners: usize,
    /// The first IST date of the data.
    pub start: NaiveDate,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TruthArm {
    pub tenant: String,
    pub slot: String,
    pub city: String,
    pub banner: String,
    pub ctr: f64,
}

/// The side files `generate` writes beside the Parquet partitions. Their names start with `_`, the
/// Hadoop convention for files that are not data, so that pyarrow, Spark and DuckDB read the folder
/// as one Parquet dataset.
pub const TRUTH_FILE: &str = "_truth.json";
pub const SLOTS_FILE: &str = "_slots.csv";

/// The ground truth written beside the data as [`TRUTH_FILE`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Truth {
    pub spec: GenSpec,
    pub first_ts: String,
    pub last_ts: String,
    pub rows: u64,
    pub impressions: u64,
    pub clicks: u64,
    pub city_traffic_share: Vec<(String, f64)>,
    pub arms: Vec<TruthArm>,
    /// The best banner per (tenant, slot, city).
    pub best: Vec<TruthArm>,
}

#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("{0}")]
    Spec(String),
    #[error(transparent)]
    Parquet(#[from] ParquetEventError),
    #[error(transparent)]
    Slots(#[from] SlotConfigError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl GenSpec {
    pub fn validate(&self) -> Result<(), GenError> {
        let check = |ok: bool, msg: &str| {
            if ok {
                Ok(())
            } else {
                Err(GenError::Spec(msg.into()))
            }
        };
        check(self.impressions >= 1, "--events must be at least 1")?;
        check(
            (1..=3660).contains(&self.days),
            "--days must be between 1 and 3660",
        )?;
        let within = |value: usize, max: u16, flag: &str| {
            check(
                (1..=usize::from(max)).contains(&value),
                &format!("{flag} must be between 1 and {max}"),
            )
        };
        within(self.tenants, MAX_TENANTS, "--tenants")?;
        within(self.cities, MAX_CITIES, "--cities")?;
        within(self.banners, MAX_BANNERS, "--banners")?;
        let arms = self.tenants * SLOTS.len() * self.cities * self.banners;
        check(
            arms <= MAX_ARMS,
            &format!(
                "--tenants × {} slots × --cities × --banners is {arms} arms; at most {MAX_ARMS}",
                SLOTS.len()
            ),
        )?;
        Ok(())
    }
}

fn tenant_name(i: usize) -> String {
    TENANTS
        .get(i)
        .map_or_else(|| format!("tenant{i:02}"), |s| s.to_string())
}

fn city_name(i: usize) -> String {
    CITIES
        .get(i)
        .map_or_else(|| format!("city{i:03}"), |s| s.to_string())
}

pub fn banner_name(i: usize) -> String {
    format!("b{:02}", i + 1)
}

/// (tenant, slot, city) combinations with their traffic weights, and every arm's true CTR.
struct World {
    tenants: Vec<String>,
    cities: Vec<String>,
    /// Per (tenant, slot, city) group: indices and weight.
    groups: Vec<(usize, usize, usize)>,
    group_weights: Vec<f64>,
    /// ctr[group * banners + banner]
    ctr: Vec<f64>,
    banners: Vec<String>,
}

impl World {
    fn new(spec: &GenSpec, rng: &mut impl rand::Rng) -> Self {
        let tenants: Vec<String> = (0..spec.tenants).map(tenant_name).collect();
        let cities: Vec<String> = (0..spec.cities).map(city_name).collect();
        let banners: Vec<String> = (0..spec.banners).map(banner_name).collect();
        let tenant_w: Vec<f64> = (0..spec.tenants)
            .map(|i| 1.0 / (i as f64 + 1.0).powf(0.8))
            .collect();
        let city_w: Vec<f64> = (0..spec.cities).map(|i| 1.0 / (i as f64 + 1.0)).collect();
        let city_effect = LogNormal::new(0.0, 0.3).expect("valid lognormal");
        let arm_noise = LogNormal::new(0.0, 0.1).expect("valid lognormal");
        let mut groups = Vec::new();
        let mut group_weights = Vec::new();
        let mut ctr = Vec::new();
        for (t, tw) in tenant_w.iter().enumerate() {
            for (s, (_, slot_w)) in SLOTS.iter().enumerate() {
                let base: Vec<f64> = (0..spec.banners)
                    .map(|_| (0.01f64.ln() + rng.random::<f64>() * (5.0f64).ln()).exp())
                    .collect();
                for (c, cw) in city_w.iter().enumerate() {
                    let effect: f64 = city_effect.sample(rng);
                    groups.push((t, s, c));
                    group_weights.push(tw * slot_w * cw);
                    for b in &base {
                        let noise: f64 = arm_noise.sample(rng);
                        ctr.push((b * effect * noise).clamp(CTR_MIN, CTR_MAX));
                    }
                }
            }
        }
        Self {
            tenants,
            cities,
            groups,
            group_weights,
            ctr,
            banners,
        }
    }

    fn arm(&self, group: usize, banner: usize) -> TruthArm {
        let (t, s, c) = self.groups[group];
        TruthArm {
            tenant: self.tenants[t].clone(),
            slot: SLOTS[s].0.to_string(),
            city: self.cities[c].clone(),
            banner: self.banners[banner].clone(),
            ctr: self.ctr[group * self.banners.len() + banner],
        }
    }
}

/// Splits `total` over `weights` proportionally with exact integer counts (largest remainder).
fn apportion(total: u64, weights: &[f64]) -> Vec<u64> {
    let sum: f64 = weights.iter().sum();
    let exact: Vec<f64> = weights.iter().map(|w| total as f64 * w / sum).collect();
    let mut counts: Vec<u64> = exact.iter().map(|x| x.floor() as u64).collect();
    let mut short = total - counts.iter().sum::<u64>();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())));
    for i in order.into_iter().cycle() {
        if short == 0 {
            break;
        }
        counts[i] += 1;
        short -= 1;
    }
    counts
}

#[derive(Clone, Copy)]
struct Row {
    ts_micros: i64,
    kind: EventKind,
    group: u32,
    banner: u16,
    referrer: u8,
    customer: u32,
    event_id: u128,
    request_id: u128,
}

impl PartialEq for Row {
    fn eq(&self, other: &Self) -> bool {
        self.ts_micros == other.ts_micros && self.event_id == other.event_id
    }
}
impl Eq for Row {}
impl PartialOrd for Row {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Row {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.ts_micros, self.event_id).cmp(&(other.ts_micros, other.event_id))
    }
}

/// Writes the clickstream under `out` (Parquet by IST date), [`TRUTH_FILE`] and [`SLOTS_FILE`].
/// `progress` is called with the number of impressions generated so far.
pub fn generate(
    spec: &GenSpec,
    out: &Path,
    mut progress: impl FnMut(u64),
) -> Result<Truth, GenError> {
    spec.validate()?;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(spec.seed);
    let world = World::new(spec, &mut rng);
    let groups = WeightedAliasIndex::new(world.group_weights.clone()).expect("positive weights");
    let referrers =
        WeightedAliasIndex::new(REFERRERS.iter().map(|r| r.1).collect()).expect("positive weights");
    let click_delay = Exp::new(1.0 / 25.0).expect("valid rate");
    let customer_pool = (spec.impressions / 20).max(1000) as f64;

    let hours = spec.days as usize * 24;
    let hour_weights: Vec<f64> = (0..hours).map(|h| DIURNAL[h % 24]).collect();
    let per_hour = apportion(spec.impressions, &hour_weights);
    let start = time::ist_midnight(spec.start);

    let mut writer = PartitionedWriter::create(out, ROWS_PER_FILE)?;
    let mut pending: BinaryHeap<Reverse<Row>> = BinaryHeap::new();
    let mut rows: Vec<Row> = Vec::new();
    let (mut impressions, mut clicks) = (0u64, 0u64);
    let mut first_ts = None;
    let mut last_ts = None;
    let mut text = RowText::default();
    let banners = spec.banners as u16;

    for (h, &count) in per_hour.iter().enumerate() {
        let hour_start = (start + Duration::hours(h as i64)).timestamp_micros();
        let hour_end = hour_start + 3_600_000_000;
        rows.clear();
        while pending.peek().is_some_and(|r| r.0.ts_micros < hour_end) {
            rows.push(pending.pop().expect("peeked").0);
        }
        for _ in 0..count {
            let group = groups.sample(&mut rng);
            let banner = rng.random_range(0..banners);
            let imp = Row {
                ts_micros: hour_start + rng.random_range(0..3_600_000_000i64),
                kind: EventKind::Impression,
                group: group as u32,
                banner,
                referrer: referrers.sample(&mut rng) as u8,
                customer: customer_pool.powf(rng.random::<f64>()) as u32,
                event_id: rng.random(),
                request_id: rng.random(),
            };
            rows.push(imp);
            if rng.random::<f64>() < world.ctr[group * spec.banners + banner as usize] {
                let delay: f64 =
                    2.0 + Distribution::<f64>::sample(&click_delay, &mut rng).min(1800.0);
                let click = Row {
                    ts_micros: imp.ts_micros + (delay * 1e6) as i64,
                    kind: EventKind::Click,
                    event_id: rng.random(),
                    ..imp
                };
                if click.ts_micros < hour_end {
                    rows.push(click);
                } else {
                    pending.push(Reverse(click));
                }
            }
        }
        rows.sort_unstable();
        for r in &rows {
            write_row(&mut writer, &world, r, &mut text)?;
            match r.kind {
                EventKind::Impression => impressions += 1,
                EventKind::Click => clicks += 1,
            }
        }
        if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
            first_ts.get_or_insert(first.ts_micros);
            last_ts = Some(last.ts_micros);
        }
        progress(impressions);
    }
    let tail: Vec<Row> = std::iter::from_fn(|| pending.pop().map(|r| r.0)).collect();
    for r in &tail {
        write_row(&mut writer, &world, r, &mut text)?;
        clicks += 1;
        last_ts = Some(r.ts_micros);
    }
    let rows_written = writer.rows();
    writer.finish()?;

    let truth = truth(
        spec,
        &world,
        rows_written,
        impressions,
        clicks,
        first_ts,
        last_ts,
    );
    write_json(&out.join(TRUTH_FILE), &truth)?;
    let slots = slot_configs(spec, &world);
    let path = out.join(SLOTS_FILE);
    let file = fs::File::create(&path).map_err(|source| GenError::Io { path, source })?;
    SlotConfig::write_csv(&slots, file)?;
    Ok(truth)
}

#[derive(Default)]
struct RowText {
    event_id: String,
    request_id: String,
    customer: String,
}

fn write_row(
    writer: &mut PartitionedWriter,
    world: &World,
    r: &Row,
    text: &mut RowText,
) -> Result<(), GenError> {
    let (t, s, c) = world.groups[r.group as usize];
    text.event_id.clear();
    text.request_id.clear();
    text.customer.clear();
    write!(text.event_id, "{}", uuid::Uuid::from_u128(r.event_id)).expect("write to String");
    write!(text.request_id, "{}", uuid::Uuid::from_u128(r.request_id)).expect("write to String");
    write!(text.customer, "cust{:07}", r.customer).expect("write to String");
    writer.write(&EventRef {
        event_id: &text.event_id,
        kind: r.kind,
        tenant: &world.tenants[t],
        slot: SLOTS[s].0,
        city: &world.cities[c],
        banner: &world.banners[r.banner as usize],
        ts: DateTime::from_timestamp_micros(r.ts_micros).expect("generated times are in range"),
        customer_id: Some(&text.customer),
        referrer: Some(REFERRERS[r.referrer as usize].0),
        request_id: Some(&text.request_id),
        decision: Default::default(),
    })?;
    Ok(())
}

fn truth(
    spec: &GenSpec,
    world: &World,
    rows: u64,
    impressions: u64,
    clicks: u64,
    first: Option<i64>,
    last: Option<i64>,
) -> Truth {
    let nb = spec.banners;
    let arms: Vec<TruthArm> = (0..world.groups.len())
        .flat_map(|g| (0..nb).map(move |b| (g, b)))
        .map(|(g, b)| world.arm(g, b))
        .collect();
    let best = (0..world.groups.len())
        .map(|g| {
            let b = (0..nb)
                .max_by(|&x, &y| world.ctr[g * nb + x].total_cmp(&world.ctr[g * nb + y]))
                .expect("at least one banner");
            world.arm(g, b)
        })
        .collect();
    let total: f64 = world.group_weights.iter().sum();
    let city_traffic_share = world
        .cities
        .iter()
        .enumerate()
        .map(|(c, name)| {
            let w: f64 = world
                .groups
                .iter()
                .zip(&world.group_weights)
                .filter(|((_, _, gc), _)| *gc == c)
                .map(|(_, w)| w)
                .sum();
            (name.clone(), w / total)
        })
        .collect();
    let ts = |m: Option<i64>| {
        m.and_then(DateTime::from_timestamp_micros)
            .map(time::format_utc)
            .unwrap_or_default()
    };
    Truth {
        spec: spec.clone(),
        first_ts: ts(first),
        last_ts: ts(last),
        rows,
        impressions,
        clicks,
        city_traffic_share,
        arms,
        best,
    }
}

/// Every generated slot with its banners, valid from the first IST day to a day after the last.
fn slot_configs(spec: &GenSpec, world: &World) -> Vec<SlotConfig> {
    let from = time::ist_midnight(spec.start);
    let to = from + Duration::days(i64::from(spec.days) + 1);
    world
        .tenants
        .iter()
        .flat_map(|t| SLOTS.iter().map(move |(s, _)| (t, s)))
        .map(|(t, s)| SlotConfig::with_banners(t, s, &world.banners, from, to))
        .collect()
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), GenError> {
    let json = serde_json::to_vec_pretty(value).expect("truth serializes");
    fs::write(path, json).map_err(|source| GenError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_million_arm_world_is_within_bounds_and_too_large_a_one_names_its_flags() {
        let spec = |tenants, cities, banners| GenSpec {
            impressions: 1,
            days: 1,
            seed: 1,
            tenants,
            cities,
            banners,
            start: NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(),
        };
        // A million arms at 10 banners a slot, and the bench's shape.
        spec(100, 500, 10).validate().unwrap();
        spec(50, 200, 50).validate().unwrap();
        spec(usize::from(MAX_TENANTS), usize::from(MAX_CITIES), 2)
            .validate()
            .unwrap();
        let too_large = spec(1000, 1000, 3).validate().unwrap_err().to_string();
        for word in [
            "--tenants",
            "--cities",
            "--banners",
            "6000000 arms",
            "4000000",
        ] {
            assert!(too_large.contains(word), "{word} in {too_large}");
        }
        let err = spec(1001, 1, 1).validate().unwrap_err().to_string();
        assert!(
            err.contains("--tenants must be between 1 and 1000"),
            "{err}"
        );
        let err = spec(1, 1, 0).validate().unwrap_err().to_string();
        assert!(err.contains("--banners must be between 1 and 100"), "{err}");
    }

    #[test]
    fn apportion_is_exact_and_proportional() {
        let c = apportion(1000, &[1.0, 2.0, 1.0]);
        assert_eq!(c, vec![250, 500, 250]);
        let c = apportion(7, &[1.0, 1.0, 1.0]);
        assert_eq!(c.iter().sum::<u64>(), 7);
        assert!(c.iter().all(|&x| x == 2 || x == 3));
    }
}
