//! `slotbandit schema`: the Cassandra keyspace and tables (schema/cassandra/*.cql).

use clap::{Args, Subcommand};
use slotbandit::store::{apply_schema, render_schema, Replication, StoreUrl, SCHEMA_VERSION};

use super::flags;

#[derive(Subcommand)]
pub enum SchemaCommand {
    /// Create the keyspace and tables where missing and record the schema version (running it
    /// again changes nothing).
    Apply(SchemaArgs),
    /// Print the CQL that `apply` runs, for cqlsh or a review.
    Print(SchemaArgs),
}

#[derive(Args)]
pub struct SchemaArgs {
    #[command(flatten)]
    store: flags::StoreArg,
    /// How a new keyspace is replicated: simple:RF (SimpleStrategy, development) or
    /// DC:RF[,DC:RF...] (NetworkTopologyStrategy, clusters). An existing keyspace keeps its own.
    #[arg(long, default_value = "simple:1", value_parser = flags::replication)]
    replication: Replication,
}

pub fn run(cmd: SchemaCommand) -> anyhow::Result<()> {
    let (SchemaCommand::Apply(args) | SchemaCommand::Print(args)) = &cmd;
    let StoreUrl::Cassandra(url) = args.store.store.parse::<StoreUrl>()? else {
        anyhow::bail!(
            "--store {}: only cassandra:// stores have a schema to apply (an embedded store makes its own tables)",
            args.store.store
        );
    };
    match cmd {
        SchemaCommand::Print(_) => print!("{}", render_schema(&url.keyspace, &args.replication)?),
        SchemaCommand::Apply(_) => {
            let recorded = apply_schema(&url, &args.replication)?;
            if recorded.is_empty() {
                println!(
                    "keyspace {} on {} is at schema version {SCHEMA_VERSION}; nothing to do",
                    url.keyspace,
                    url.nodes.join(",")
                );
            } else {
                let versions: Vec<String> = recorded.iter().map(i32::to_string).collect();
                println!(
                    "keyspace {} on {}: applied schema version(s) {}; now at {SCHEMA_VERSION}",
                    url.keyspace,
                    url.nodes.join(","),
                    versions.join(", ")
                );
            }
        }
    }
    Ok(())
}
