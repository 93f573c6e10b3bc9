//! `slotbandit customer`: a customer's recent impressions and clicks, newest first, in IST.

use clap::{Args, ValueEnum};
use serde::Serialize;
use slotbandit::model::Event;
use slotbandit::store::open_store;
use slotbandit::time;

use super::flags;

#[derive(Args)]
pub struct CustomerArgs {
    #[command(flatten)]
    store: flags::StoreArg,
    #[arg(long, value_parser = flags::name)]
    tenant: String,
    /// The customer ID (1 to 128 bytes, no whitespace).
    #[arg(long, value_parser = flags::customer_id)]
    customer: String,
    /// How many of the most recent events to list.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    limit: u32,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

/// An event as listed: the stored event and its time in IST.
#[derive(Serialize)]
struct Listed<'a> {
    #[serde(flatten)]
    event: &'a Event,
    ts_ist: String,
}

pub fn run(args: CustomerArgs) -> anyhow::Result<()> {
    let store = open_store(&args.store.store, false)?;
    let events = store.customer_events(&args.tenant, &args.customer, args.limit as usize)?;
    match args.format {
        Format::Json => {
            let listed: Vec<Listed> = events
                .iter()
                .map(|event| Listed {
                    event,
                    ts_ist: time::format_ist_rfc3339(event.ts),
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&listed)?);
        }
        Format::Table => {
            let mut table = super::table([
                "time (IST)",
                "kind",
                "slot",
                "city",
                "banner",
                "referrer",
                "event_id",
            ]);
            for e in &events {
                table.add_row([
                    time::format_ist(e.ts),
                    e.kind.as_str().to_string(),
                    e.slot.clone(),
                    e.city.clone(),
                    e.banner.clone(),
                    e.referrer.clone().unwrap_or_default(),
                    e.event_id.clone(),
                ]);
            }
            println!("{table}");
            println!(
                "{} event(s) of customer {} of tenant {}, newest first",
                events.len(),
                args.customer,
                args.tenant
            );
        }
    }
    Ok(())
}
