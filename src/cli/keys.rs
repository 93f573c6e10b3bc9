//! `slotbandit keys add`: makes an API key for a tenant and role, stores its SHA-256, and prints
//! the key once.

use clap::{Args, Subcommand};
use slotbandit::serve::auth::create_key;
use slotbandit::store::{open_store, Role};

use super::flags::{self, StoreArg};

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a key; it is printed once and only its SHA-256 is stored.
    Add(AddArgs),
}

#[derive(Args)]
pub struct AddArgs {
    #[command(flatten)]
    store: StoreArg,
    /// The tenant the key belongs to.
    #[arg(long, value_parser = flags::name)]
    tenant: String,
    /// serve (decide, click, read) or admin (also configure slots).
    #[arg(long, value_parser = clap::value_parser!(Role))]
    role: Role,
}

pub fn run(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Add(args) => {
            let store = open_store(&args.store.store, true)?;
            let key = create_key(store.as_ref(), &args.tenant, args.role)?;
            println!("{key}");
            eprintln!(
                "API key for tenant {} with role {} (shown once; send it as `Authorization: Bearer <key>`)",
                args.tenant,
                args.role.as_str()
            );
            Ok(())
        }
    }
}
