//! `slotbandit cities`: a tenant's city aliases in a store.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum CitiesCommand {
    /// Declare the aliases of a CSV (header `alias,city`: the alias is another spelling of the
    /// canonical city), added to the tenant's aliases all or nothing.
    Import {
        file: PathBuf,
        #[arg(long, value_parser = super::flags::name)]
        tenant: String,
        #[command(flatten)]
        store: super::flags::StoreArg,
    },
    /// Print a tenant's aliases as CSV (`alias,city`).
    List {
        #[arg(long, value_parser = super::flags::name)]
        tenant: String,
        #[command(flatten)]
        store: super::flags::StoreArg,
    },
}

pub fn run(cmd: CitiesCommand) -> anyhow::Result<()> {
    match cmd {
        CitiesCommand::Import {
            file,
            tenant,
            store,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let db = slotbandit::store::open_store(&store.store, true)?;
            let before = db.city_aliases(&tenant)?;
            let aliases = before
                .with_csv(&text)
                .with_context(|| format!("{}", file.display()))?;
            db.put_city_aliases(&tenant, &aliases)?;
            println!(
                "{}: {} city aliases of {tenant} ({} new) in {}",
                file.display(),
                aliases.len(),
                aliases.len() - before.len(),
                store.store
            );
            Ok(())
        }
        CitiesCommand::List { tenant, store } => {
            let db = slotbandit::store::open_store(&store.store, false)?;
            println!("alias,city");
            for (alias, city) in db.city_aliases(&tenant)?.iter() {
                println!("{alias},{city}");
            }
            Ok(())
        }
    }
}
