//! `slotbandit evaluate`: off-policy estimates of other policies from the decision log in
//! Parquet history or an event log, computed by the dataflow job on one or several timely
//! processes; the valid banners from the store's slot definitions.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{ArgAction, Args};
use slotbandit::dataflow::{run_evaluate, EvaluateJob, EvaluateRun};
use slotbandit::eval::{Evaluation, EvaluationRow, Target};
use slotbandit::store::open_store;

use super::flags;
use super::report::{rows_bar, Format, HistoryArgs};

#[derive(Args)]
#[command(disable_help_flag = true)]
pub struct EvaluateArgs {
    #[command(flatten)]
    history: HistoryArgs,
    /// The store whose slot definitions say which banners were valid when.
    #[command(flatten)]
    store: flags::StoreArg,
    /// A policy to estimate (repeat for several): `uniform`, or
    /// `thompson[:window=MINUTES,prior=STRENGTH,refresh=SECONDS]` (default: the production
    /// settings — all-time counts, prior strength at most 100000, refreshed every 60 s).
    #[arg(long = "policy", value_parser = target, default_values = ["uniform", "thompson"])]
    policies: Vec<Target>,
    /// The intervals' confidence.
    #[arg(long, default_value_t = 0.95, value_parser = confidence)]
    confidence: f64,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Also write every weighed decision (policy, banners valid, propensity, reward, the
    /// target's probabilities and the reward model) as JSON lines to this file (process 0
    /// writes it).
    #[arg(long)]
    decisions_out: Option<PathBuf>,
    #[command(flatten)]
    cluster: flags::ClusterArgs,
    /// Print help.
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,
}

fn target(s: &str) -> Result<Target, String> {
    s.parse()
        .map_err(|e: slotbandit::eval::EvaluateError| e.to_string())
}

fn confidence(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v < 1.0 => Ok(v),
        _ => Err(format!("must be between 0 and 1 exclusive (got {s:?})")),
    }
}

const COLUMNS: [&str; 17] = [
    "policy",
    "tenant",
    "slot",
    "decisions",
    "logged_ctr",
    "ipw",
    "ipw_low",
    "ipw_high",
    "snipw",
    "snipw_low",
    "snipw_high",
    "dr",
    "dr_low",
    "dr_high",
    "dr_vs_logged",
    "effective_sample_size",
    "max_weight",
];

pub fn run(args: EvaluateArgs) -> anyhow::Result<()> {
    let cluster = args.cluster.cluster()?;
    let source = args.history.flag();
    let history = args.history.open().with_context(|| source.clone())?;
    // Process 0 hands the slot definitions to the workers that evaluate each slot.
    let mut configs = Vec::new();
    if cluster.process == 0 {
        let store = open_store(&args.store.store, false)?;
        for (tenant, slot) in store.slots(None)? {
            configs.extend(store.slot(&tenant, &slot)?);
        }
    }
    let mut out = match (&args.decisions_out, cluster.process) {
        (Some(path), 0) => Some(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("--decisions-out {}", path.display()))?,
        )),
        _ => None,
    };
    let bar = rows_bar(history.rows());
    let progress_bar = bar.clone();
    let job = EvaluateJob {
        history,
        range: args.history.range()?,
        configs,
        targets: args.policies.clone(),
        record_decisions: out.is_some(),
        progress: Arc::new(move |n| progress_bar.set_position(n)),
    };
    let run = super::with_stdout_on_stderr(|| run_evaluate(job, &cluster))?
        .with_context(|| format!("evaluation of {source}"))?;
    bar.finish_and_clear();
    // Process 0 gathers the evaluation; the other processes only read and weigh their share.
    let Some(EvaluateRun {
        parts,
        decisions,
        invalid_rows,
    }) = run
    else {
        return Ok(());
    };
    let evaluation = parts
        .evaluation(&args.policies, args.confidence)
        .with_context(|| source.clone())?;
    if let Some(mut out) = out.take() {
        for line in &decisions {
            writeln!(out, "{line}").context("--decisions-out")?;
        }
        out.flush().context("--decisions-out")?;
    }
    print(&evaluation, args.format)?;
    let s = evaluation.skipped;
    eprintln!(
        "{} events read, {invalid_rows} invalid rows skipped; of {} impressions in the range, \
         not evaluated: {} without a propensity, {} without a request_id, {} of carousels, {} \
         of slots the store does not define, {} of banners not valid then; {} repeated clicks \
         counted once",
        evaluation.events,
        evaluation.impressions,
        s.without_propensity,
        s.without_request_id,
        s.carousel,
        s.unknown_slot,
        s.banner_not_valid,
        s.repeated_clicks
    );
    Ok(())
}

fn cells(policy: &str, row: &EvaluationRow) -> Vec<String> {
    let mut out = vec![policy.to_string(), row.tenant.clone(), row.slot.clone()];
    let Some(e) = &row.estimate else {
        out.extend(std::iter::repeat_n(String::new(), COLUMNS.len() - 3));
        return out;
    };
    let pct = |x: f64| format!("{:.4}", 100.0 * x);
    out.push(e.decisions.to_string());
    out.push(pct(e.logged.estimate));
    for i in [e.ipw, e.snipw, e.dr] {
        out.extend([pct(i.estimate), pct(i.low), pct(i.high)]);
    }
    out.push(pct(e.dr.estimate - e.logged.estimate));
    out.push(format!("{:.1}", e.effective_sample_size));
    out.push(format!("{:.2}", e.max_weight));
    out
}

fn print(evaluation: &Evaluation, format: Format) -> anyhow::Result<()> {
    let rows = evaluation
        .policies
        .iter()
        .flat_map(|p| p.rows.iter().map(move |row| cells(&p.policy, row)));
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(evaluation)?),
        Format::Csv => {
            let mut w = csv::Writer::from_writer(std::io::stdout());
            w.write_record(COLUMNS)?;
            for row in rows {
                w.write_record(row)?;
            }
            w.flush()?;
        }
        Format::Table => {
            let mut table = super::table(COLUMNS);
            for row in rows {
                table.add_row(row);
            }
            println!("{table}");
            println!("CTRs in percent; intervals at the stated confidence; dr_vs_logged: DR minus the logged CTR");
        }
    }
    Ok(())
}
