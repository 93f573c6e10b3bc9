//! `slotbandit posteriors`: one row per (tenant, slot, city, banner) from a store.

use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};
use slotbandit::store::{open_store, CountQuery, PosteriorRow};

use super::flags;

#[derive(Args)]
pub struct PosteriorsArgs {
    #[command(flatten)]
    store: flags::StoreArg,
    #[arg(long, value_parser = flags::name)]
    tenant: Option<String>,
    #[arg(long, value_parser = flags::name)]
    slot: Option<String>,
    /// A city (normalized; with --tenant, resolved through the tenant's city aliases). A city
    /// without counts falls back to the slot's all-city posterior (city `*`).
    #[arg(long, value_parser = flags::city)]
    city: Option<String>,
    /// Only the whole buckets that start at or after NOW − M minutes.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=5_256_000))]
    window_minutes: Option<u32>,
    /// The instant windows end at; default: the store's as-of (end of backfill), else the clock.
    #[arg(long, value_parser = flags::instant)]
    now: Option<DateTime<Utc>>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Csv,
    Json,
}

pub fn run(args: PosteriorsArgs) -> anyhow::Result<()> {
    let store = open_store(&args.store.store, false)?;
    let from_bucket = match args.window_minutes {
        None => None,
        Some(minutes) => {
            let now = match args.now {
                Some(t) => t,
                None => store.as_of()?.unwrap_or_else(Utc::now),
            };
            Some(store.buckets()?.first_in_window(now, minutes))
        }
    };
    let city = match (&args.tenant, args.city) {
        (Some(tenant), Some(city)) => Some(store.city_aliases(tenant)?.resolve(&city).to_string()),
        (_, city) => city,
    };
    let rows = store.posteriors(&CountQuery {
        tenant: args.tenant,
        slot: args.slot,
        city,
        from_bucket,
    })?;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Format::Csv => {
            let mut w = csv::Writer::from_writer(std::io::stdout());
            w.write_record(PosteriorRow::COLUMNS)?;
            for r in &rows {
                w.write_record(cells(r))?;
            }
            w.flush()?;
        }
        Format::Table => {
            let mut table = super::table(PosteriorRow::COLUMNS);
            for r in &rows {
                table.add_row(cells(r));
            }
            println!("{table}");
        }
    }
    Ok(())
}

fn cells(r: &PosteriorRow) -> [String; 11] {
    let s = &r.summary;
    [
        r.tenant.clone(),
        r.slot.clone(),
        r.city.clone(),
        r.banner.clone(),
        s.impressions.to_string(),
        s.clicks.to_string(),
        format!("{}", s.alpha),
        format!("{}", s.beta),
        format!("{:.6}", s.mean),
        format!("{:.6}", s.lower95),
        format!("{:.6}", s.upper95),
    ]
}
