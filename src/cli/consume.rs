//! `slotbandit consume`: reads an event log, decoding and validating every message as an event
//! (inspection, and the catch-up benchmark of the reader alone).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::bail;
use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use slotbandit::model::parquet::{list_parquet_files, PartitionedWriter, ROWS_PER_FILE};
use slotbandit::model::{Event, Offset, Partition};
use slotbandit::source::open_log;

use super::flags;

#[derive(Clone, Copy, ValueEnum)]
enum Print {
    /// Print nothing per message; only the summary.
    None,
    /// One JSON object per message: partition, offset, timestamp_ms, key, payload, error.
    Messages,
}

#[derive(Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    log: flags::LogArg,
    /// Start at the first record appended at or after this instant (RFC 3339, or IST
    /// DD-Mon-YY HH:MM:SS); default: the earliest record.
    #[arg(long, value_parser = flags::instant)]
    since: Option<DateTime<Utc>>,
    /// Keep reading new messages instead of stopping at the end offsets seen at the start.
    #[arg(long)]
    follow: bool,
    /// Stop after this many messages.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
    /// What to print per message.
    #[arg(long, value_enum, default_value = "none")]
    print: Print,
    /// Messages per poll.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    batch: u32,
    /// Also write every valid event, decision log included, as Parquet under
    /// DIR/dt=YYYY-MM-DD/ (IST dates): the history layout that backfill, report, evaluate and
    /// pyarrow read. DIR must hold no Parquet yet, so a second run cannot count events twice.
    #[arg(long, value_name = "DIR")]
    parquet: Option<PathBuf>,
}

pub fn run(args: ConsumeArgs) -> anyhow::Result<()> {
    let mut archive = match &args.parquet {
        Some(dir) => Some(archive_writer(dir)?),
        None => None,
    };
    let log = open_log(&args.log.log)?;
    let started = Instant::now();
    let start = match args.since {
        Some(ts) => log.offsets_for_time(ts)?,
        None => earliest(log.as_ref())?,
    };
    let ends = log.end_offsets()?;
    // The partitions with something left to read before the end offsets.
    let mut open: BTreeMap<Partition, Offset> = ends
        .iter()
        .filter(|&(p, end)| start.get(p).is_some_and(|s| s < end))
        .map(|(&p, &end)| (p, end))
        .collect();
    let mut reader = log.reader(&start)?;
    let bar = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} {human_pos} messages  {per_sec}  {elapsed}")
            .expect("valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let limit = args.limit.unwrap_or(u64::MAX);
    let (mut messages, mut valid, mut bytes) = (0u64, 0u64, 0u64);
    let mut first_invalid = None;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    while messages < limit && (args.follow || !open.is_empty()) {
        let want = (limit - messages).min(u64::from(args.batch)) as usize;
        let mut write_error = None;
        reader.poll_each(want, Duration::from_millis(500), &mut |record| {
            messages += 1;
            bytes += record.payload.len() as u64;
            let decoded = Event::decode_json(record.payload, |event| match &mut archive {
                Some(writer) => writer.write(&event),
                None => Ok(()),
            })
            .map_err(|e| e.to_string())
            .and_then(|written| written.map_err(|e| format!("writing Parquet: {e}")));
            match &decoded {
                Ok(()) => valid += 1,
                Err(e) => {
                    first_invalid.get_or_insert_with(|| {
                        format!(
                            "partition {} offset {}: {e}",
                            record.partition, record.offset
                        )
                    });
                }
            }
            if let (Print::Messages, None) = (&args.print, &write_error) {
                let line = serde_json::json!({
                    "partition": record.partition,
                    "offset": record.offset,
                    "timestamp_ms": record.timestamp_ms,
                    "key": record.key.map(String::from_utf8_lossy),
                    "payload": String::from_utf8_lossy(record.payload),
                    "error": decoded.err(),
                });
                write_error = writeln!(out, "{line}").err();
            }
            if open
                .get(&record.partition)
                .is_some_and(|&end| record.offset.next() >= end)
            {
                open.remove(&record.partition);
            }
        })?;
        if let Some(e) = write_error {
            return Err(e.into());
        }
        bar.set_position(messages);
    }
    out.flush()?;
    drop(out);
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    println!(
        "consumed {messages} messages ({valid} valid events, {} not) from {} in {secs:.2} s: \
         {:.0} messages/s, {:.1} MB/s",
        messages - valid,
        log.name(),
        messages as f64 / secs,
        bytes as f64 / 1e6 / secs
    );
    if let Some(reason) = first_invalid {
        println!("first invalid message: {reason}");
    }
    if let (Some(writer), Some(dir)) = (archive, &args.parquet) {
        let rows = writer.rows();
        let files = writer.finish()?;
        println!(
            "wrote {rows} events to {} Parquet files under {}",
            files.len(),
            dir.display()
        );
    }
    Ok(())
}

/// The Parquet writer of `--parquet DIR`, refusing a folder that already holds Parquet.
fn archive_writer(dir: &Path) -> anyhow::Result<PartitionedWriter> {
    if dir.is_dir() && !list_parquet_files(dir)?.is_empty() {
        bail!(
            "--parquet {}: the folder already holds Parquet files; write to an empty folder so \
             no event is archived twice",
            dir.display()
        );
    }
    Ok(PartitionedWriter::create(dir, ROWS_PER_FILE)?)
}

/// The earliest offset of every partition: the first record at or after the Unix epoch.
fn earliest(log: &dyn slotbandit::source::EventLog) -> anyhow::Result<BTreeMap<Partition, Offset>> {
    Ok(log.offsets_for_time(DateTime::UNIX_EPOCH)?)
}
