//! Argument parsing and dispatch. Handlers return `anyhow::Result`; errors print as one line
//! with their causes and exit 1 (clap's own usage errors exit 2).

mod demo;
mod gen;
mod replay;
mod simulate;
mod slots;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "slotbandit",
    version,
    about = "Thompson-sampling banner selection per tenant, slot and city",
    long_about = "slotbandit decides which banner a site shows in each banner slot and learns from \
                  every impression and click.\n\nWithout a subcommand it runs `demo` on the \
                  committed sample."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
// Parsed once per process; boxing the larger argument structs would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Run the embedded demo on the committed sample (the default).
    Demo(demo::DemoArgs),
    /// Generate a synthetic clickstream as Parquet partitioned by IST date, with its truth.
    Gen(gen::GenArgs),
    /// Check or convert slot configurations (the prototype's CSV format).
    #[command(subcommand)]
    Slots(slots::SlotsCommand),
    /// Simulate the policies in a Bernoulli environment: regret curves, CSV and plots.
    Simulate(simulate::SimulateArgs),
    /// Off-policy evaluation on the Open Bandit Dataset: replay and IPW with bootstrap intervals.
    Replay(replay::ReplayArgs),
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli
        .command
        .unwrap_or(Command::Demo(demo::DemoArgs::default()))
    {
        Command::Demo(args) => demo::run(args),
        Command::Gen(args) => gen::run(args),
        Command::Slots(cmd) => slots::run(cmd),
        Command::Simulate(args) => simulate::run(args),
        Command::Replay(args) => replay::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Validators for flags, shared by the subcommands.
pub mod flags {
    use chrono::NaiveDate;

    pub fn ist_date(s: &str) -> Result<NaiveDate, String> {
        slotbandit::time::parse_ist_date(s).map_err(|e| e.to_string())
    }
}
