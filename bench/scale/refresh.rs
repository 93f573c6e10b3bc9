//! The lookup cache's costs at the size of a store: a full load, a refresh that finds nothing
//! changed, and refreshes as the clock crosses bucket starts (each kept window's first bucket
//! moves). Reads the store at its "as of" instant (the end of its backfill), the service's
//! default window (720 minutes) and every tenant.
//! Usage: cargo run --release --example refresh -- STORE_URL [WINDOW_MINUTES,...]
use std::time::Instant;

use anyhow::{bail, Context};
use chrono::{Duration, Utc};
use slotbandit::serve::cache::{KeptWindows, Refresh, Snapshot, TenantScope};
use slotbandit::store::{open_store_for, StoreUse};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(url) = args.next() else {
        bail!("usage: refresh STORE_URL [WINDOW_MINUTES,...]");
    };
    let windows: Vec<u32> = match args.next() {
        Some(list) => list
            .split(',')
            .map(|w| w.parse().with_context(|| format!("window minutes {w:?}")))
            .collect::<anyhow::Result<_>>()?,
        None => vec![720],
    };
    let store = open_store_for(&url, false, StoreUse::Lookup)?;
    let windows = KeptWindows::service(windows);
    let scope = TenantScope::All;
    let mut now = store.as_of()?.unwrap_or_else(Utc::now);
    let started = Instant::now();
    let mut snapshot = Snapshot::load(store.as_ref(), &windows, now, &scope)?;
    println!(
        "full load: {:.3} s, {} arms, {} slots (at {now})",
        started.elapsed().as_secs_f64(),
        snapshot.arms,
        snapshot.slot_count()
    );
    let started = Instant::now();
    let unchanged = Snapshot::refresh(Some(&snapshot), store.as_ref(), &windows, now, &scope)?;
    println!(
        "refresh, nothing changed: {:.6} s ({})",
        started.elapsed().as_secs_f64(),
        if matches!(unchanged, Refresh::Unchanged) {
            "unchanged"
        } else {
            "changed"
        }
    );
    for _ in 0..3 {
        now += Duration::hours(1);
        let started = Instant::now();
        let refreshed = Snapshot::refresh(Some(&snapshot), store.as_ref(), &windows, now, &scope)?;
        let seconds = started.elapsed().as_secs_f64();
        if let Refresh::Changed {
            snapshot: next,
            shards,
        } = refreshed
        {
            println!("refresh, an hour later: {seconds:.3} s ({shards} shards changed)");
            snapshot = *next;
        }
    }
    Ok(())
}
