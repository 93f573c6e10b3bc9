//! `slotbandit slots`: validate, convert and import slot configurations.

use std::fs::File;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use slotbandit::model::{Recency, SlotConfig};
use slotbandit::time;

#[derive(Subcommand)]
pub enum SlotsCommand {
    /// Validate a slot CSV and print the parsed configuration with IST times.
    Check {
        /// CSV with columns platform,slotname,imageid,imagename,validfrom,validto.
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Store every slot of a slot CSV, replacing each slot's configuration.
    Import {
        /// CSV with columns platform,slotname,imageid,imagename,validfrom,validto.
        file: PathBuf,
        #[command(flatten)]
        store: super::flags::StoreArg,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

fn read(file: &PathBuf) -> anyhow::Result<Vec<SlotConfig>> {
    let f = File::open(file).with_context(|| format!("opening {}", file.display()))?;
    SlotConfig::read_csv(f).with_context(|| format!("{}", file.display()))
}

pub fn run(cmd: SlotsCommand) -> anyhow::Result<()> {
    match cmd {
        SlotsCommand::Import { file, store } => {
            let slots = read(&file)?;
            let db = slotbandit::store::open_store(&store.store, true)?;
            for s in &slots {
                db.put_slot(s)
                    .with_context(|| format!("storing {}/{}", s.tenant, s.slot))?;
            }
            let banners: usize = slots.iter().map(|s| s.banners.len()).sum();
            println!(
                "{}: stored {} slots, {banners} banners into {}",
                file.display(),
                slots.len(),
                store.store
            );
            Ok(())
        }
        SlotsCommand::Check { file, format } => {
            let slots = read(&file)?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&slots)?),
                Format::Csv => SlotConfig::write_csv(&slots, std::io::stdout())?,
                Format::Table => print_table(&slots),
            }
            let banners: usize = slots.iter().map(|s| s.banners.len()).sum();
            eprintln!(
                "{}: ok, {} slots, {banners} banners",
                file.display(),
                slots.len()
            );
            Ok(())
        }
    }
}

fn print_table(slots: &[SlotConfig]) {
    let mut table = super::table([
        "tenant",
        "slot",
        "banner",
        "image",
        "valid from (IST)",
        "valid to (IST)",
        "recency",
        "holdout",
    ]);
    for s in slots {
        let recency = match s.rules.recency {
            None => "service default".to_string(),
            Some(Recency::AllTime) => "all time".to_string(),
            Some(Recency::Window(minutes)) => format!("{minutes} min"),
        };
        let holdout = format!("{}%", s.rules.holdout_share() * 100.0);
        for b in &s.banners {
            table.add_row([
                s.tenant.as_str(),
                s.slot.as_str(),
                b.id.as_str(),
                b.image.as_str(),
                &time::format_ist(b.valid_from),
                &time::format_ist(b.valid_to),
                &recency,
                &holdout,
            ]);
        }
    }
    println!("{table}");
}
