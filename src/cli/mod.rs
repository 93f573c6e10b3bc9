//! Argument parsing and dispatch. Handlers return `anyhow::Result`; errors print as one line
//! with their causes and exit 1 (clap's own usage errors exit 2).

mod backfill;
mod cities;
mod config;
mod consume;
mod customer;
mod demo;
mod evaluate;
mod import_prototype;
mod keys;
mod posteriors;
mod priors;
mod produce;
mod replay;
mod report;
mod schema;
mod serve;
mod simulate;
mod slots;
mod stream;
mod synth;

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
                  committed sample.\n\nJob files: `slotbandit SUBCOMMAND --config jobs/FILE.toml` reads the \
                  file's [SUBCOMMAND] table as flags; flags on the command line win (`simulate` \
                  reads its own experiment file instead)."
)]
#[command(args_override_self = true)]
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
    Gen(synth::GenArgs),
    /// Count Parquet history into a store with the timely/differential job.
    Backfill(backfill::BackfillArgs),
    /// Import a prototype installation's Cassandra history and slots as Parquet and a slot CSV.
    ImportPrototype(import_prototype::ImportPrototypeArgs),
    /// Count the live event log into a store, with exactly-once effect across restarts.
    Stream(stream::StreamArgs),
    /// Print posteriors per (tenant, slot, city, banner) from a store.
    Posteriors(posteriors::PosteriorsArgs),
    /// Compute cold-start priors from history into a store.
    Priors(priors::PriorsArgs),
    /// Check or convert slot configurations (the prototype's CSV format).
    #[command(subcommand)]
    Slots(slots::SlotsCommand),
    /// Declare or list a tenant's city aliases (other spellings of a city).
    #[command(subcommand)]
    Cities(cities::CitiesCommand),
    /// Apply or print the Cassandra schema (keyspace and tables).
    #[command(subcommand)]
    Schema(schema::SchemaCommand),
    /// List a customer's recent impressions and clicks with IST times.
    Customer(customer::CustomerArgs),
    /// Simulate the policies in a Bernoulli environment: regret curves, CSV and plots.
    Simulate(simulate::SimulateArgs),
    /// Off-policy evaluation on the Open Bandit Dataset: replay and IPW with bootstrap intervals.
    Replay(replay::ReplayArgs),
    /// Run the lookup service: decisions, clicks, slot admin, demo page and dashboard.
    Serve(serve::ServeArgs),
    /// Manage API keys of the lookup service.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Replay Parquet history or a JSON-lines file into an event log (Kafka or a file log).
    Produce(produce::ProduceArgs),
    /// Read an event log, validating every message as an event (inspection, benchmarks).
    Consume(consume::ConsumeArgs),
    /// What TS earned over the holdout per (tenant, slot) and overall, from history.
    Report(report::ReportArgs),
    /// Off-policy estimates (IPW, SNIPW, DR) of other policies from the logged propensities.
    Evaluate(evaluate::EvaluateArgs),
}

/// A table in the one style every subcommand prints.
fn table(header: impl Into<comfy_table::Row>) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::UTF8_FULL_CONDENSED)
        .set_header(header);
    table
}

/// Runs `job` with stdout going to stderr: timely prints its connection messages to stdout when
/// a job spans processes, and a command's result must be all of stdout.
fn with_stdout_on_stderr<T>(job: impl FnOnce() -> T) -> anyhow::Result<T> {
    use std::io::Write;
    std::io::stdout().flush()?;
    let stdout = rustix::io::dup(std::io::stdout())?;
    rustix::stdio::dup2_stdout(std::io::stderr())?;
    let out = job();
    std::io::stdout().flush()?;
    rustix::stdio::dup2_stdout(&stdout)?;
    Ok(out)
}

pub fn run() -> ExitCode {
    let argv = match config::expand(std::env::args_os().collect()) {
        Ok(argv) => argv,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(argv);
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,scylla=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli
        .command
        .unwrap_or(Command::Demo(demo::DemoArgs::default()))
    {
        Command::Demo(args) => demo::run(args),
        Command::Gen(args) => synth::run(args),
        Command::Backfill(args) => backfill::run(args),
        Command::ImportPrototype(args) => import_prototype::run(args),
        Command::Stream(args) => stream::run(args),
        Command::Posteriors(args) => posteriors::run(args),
        Command::Priors(args) => priors::run(args),
        Command::Slots(cmd) => slots::run(cmd),
        Command::Cities(cmd) => cities::run(cmd),
        Command::Schema(cmd) => schema::run(cmd),
        Command::Customer(args) => customer::run(args),
        Command::Simulate(args) => simulate::run(args),
        Command::Replay(args) => replay::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Keys(cmd) => keys::run(cmd),
        Command::Produce(args) => produce::run(args),
        Command::Consume(args) => consume::run(args),
        Command::Report(args) => report::run(args),
        Command::Evaluate(args) => evaluate::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Flags shared by the subcommands, and their validators.
pub mod flags {
    use std::path::PathBuf;

    use chrono::{DateTime, NaiveDate, Utc};
    use clap::Args;
    use slotbandit::dataflow::Cluster;

    pub fn ist_date(s: &str) -> Result<NaiveDate, String> {
        slotbandit::time::parse_ist_date(s).map_err(|e| e.to_string())
    }

    pub fn instant(s: &str) -> Result<DateTime<Utc>, String> {
        slotbandit::time::parse_any(s).map_err(|e| e.to_string())
    }

    pub fn name(s: &str) -> Result<String, String> {
        slotbandit::model::validate_name("value", s)
            .map(|()| s.to_string())
            .map_err(|e| e.rule)
    }

    /// A recency rule in minutes: 0 for all time, else a window (`model::Recency`).
    pub fn recency(s: &str) -> Result<slotbandit::model::Recency, String> {
        let minutes = s
            .parse::<u32>()
            .map_err(|_| format!("must be a whole number of minutes (got {s:?})"))?;
        slotbandit::model::Recency::from_minutes("value", minutes).map_err(|e| e.rule)
    }

    /// A share of one core, 0 to 64.
    pub fn cpu_share(s: &str) -> Result<f64, String> {
        match s.parse::<f64>() {
            Ok(v) if (0.0..=64.0).contains(&v) => Ok(v),
            _ => Err(format!(
                "must be a share of one core from 0 to 64 (got {s:?})"
            )),
        }
    }

    /// A holdout share, 0 to 0.5 (`model::SlotRules::holdout_from_share`).
    pub fn holdout(s: &str) -> Result<f64, String> {
        let share = s
            .parse::<f64>()
            .map_err(|_| format!("must be a share such as 0.1 (got {s:?})"))?;
        slotbandit::model::SlotRules::holdout_from_share("value", share)
            .map(|_| share)
            .map_err(|e| e.rule)
    }

    /// A city, by the city rule (`model::normalize_city`).
    pub fn city(s: &str) -> Result<String, String> {
        slotbandit::model::normalize_city("city", s)
            .map(|c| c.into_owned())
            .map_err(|e| e.rule)
    }

    pub fn bucket_minutes(s: &str) -> Result<u32, String> {
        let m: u32 = s
            .parse()
            .map_err(|_| format!("must be a whole number of minutes (got {s:?})"))?;
        slotbandit::time::Buckets::of_minutes(m).map(|_| m)
    }

    pub fn retention_hours(s: &str) -> Result<slotbandit::time::Retention, String> {
        let hours: u32 = s
            .parse()
            .map_err(|_| format!("must be a whole number of hours (got {s:?})"))?;
        slotbandit::time::Retention::of_hours(hours)
    }

    pub fn positive_f64(s: &str) -> Result<f64, String> {
        match s.parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
            _ => Err(format!("must be a positive number (got {s:?})")),
        }
    }

    pub fn customer_id(s: &str) -> Result<String, String> {
        slotbandit::model::validate_token("customer", s, slotbandit::model::CUSTOMER_ID_MAX)
            .map(|()| s.to_string())
            .map_err(|e| e.rule)
    }

    pub fn replication(s: &str) -> Result<slotbandit::store::Replication, String> {
        s.parse()
    }

    fn store_url(s: &str) -> Result<String, String> {
        s.parse::<slotbandit::store::StoreUrl>()
            .map(|_| s.to_string())
            .map_err(|e| e.to_string())
    }

    pub fn log_url(s: &str) -> Result<String, String> {
        s.parse::<slotbandit::source::LogUrl>()
            .map(|_| s.to_string())
            .map_err(|e| e.to_string())
    }

    #[derive(Args)]
    pub struct LogArg {
        /// The event log: kafka://HOST:PORT[,HOST:PORT...]/TOPIC[?partitions=N&timeout_ms=T]
        /// or file:PATH[?partitions=N&retention_hours=H&segment_mb=M] (a folder).
        #[arg(long, env = "SLOTBANDIT_LOG", default_value = "file:slotbandit-events", value_parser = log_url)]
        pub log: String,
    }

    #[derive(Args)]
    pub struct StoreArg {
        /// Where posteriors live: embedded:PATH (a redb file) or
        /// cassandra://HOST:PORT[,HOST:PORT...]/KEYSPACE[?deadline_s=SECONDS] (a Cassandra
        /// cluster; operations retry until the deadline, 60 s by default).
        #[arg(long, env = "SLOTBANDIT_STORE", default_value = "embedded:slotbandit.redb", value_parser = store_url)]
        pub store: String,
    }

    /// Worker threads, and timely's cluster flags for running the job as several processes.
    #[derive(Args)]
    pub struct ClusterArgs {
        /// Worker threads per process.
        #[arg(short = 'w', long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=256))]
        pub workers: u16,
        /// Number of processes.
        #[arg(short = 'n', long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
        pub processes: u16,
        /// Index of this process, from 0.
        #[arg(short = 'p', long, default_value_t = 0)]
        pub process: u16,
        /// File with one host:port per process (required when -n is more than 1).
        #[arg(short = 'h', long)]
        pub hostfile: Option<PathBuf>,
    }

    impl ClusterArgs {
        pub fn cluster(&self) -> anyhow::Result<Cluster> {
            let n = usize::from(self.processes);
            anyhow::ensure!(
                self.process < self.processes,
                "--process must be below --processes ({} is not below {n})",
                self.process
            );
            let hosts = match (&self.hostfile, n) {
                (None, 1) => Vec::new(),
                (None, _) => {
                    anyhow::bail!("--hostfile is required when --processes is more than 1")
                }
                (Some(path), _) => {
                    let text = std::fs::read_to_string(path)
                        .map_err(|e| anyhow::anyhow!("--hostfile {}: {e}", path.display()))?;
                    let hosts: Vec<String> = text
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(str::to_string)
                        .collect();
                    for h in &hosts {
                        slotbandit::model::address::parse_host_port(h)
                            .map_err(|e| anyhow::anyhow!("--hostfile {}: {e}", path.display()))?;
                    }
                    anyhow::ensure!(
                        hosts.len() == n,
                        "--hostfile {} lists {} hosts but --processes is {n}",
                        path.display(),
                        hosts.len()
                    );
                    hosts
                }
            };
            Ok(Cluster {
                workers: self.workers.into(),
                process: self.process.into(),
                hosts,
            })
        }
    }
}
