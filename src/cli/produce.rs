//! `slotbandit produce`: replays history into an event log (tests, demos, benchmarks).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use slotbandit::model::parquet::{list_parquet_files, EventFileReader};
use slotbandit::model::Event;
use slotbandit::source::{event_key, open_log, EventLog};

use super::flags;

#[derive(Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    log: flags::LogArg,
    /// A Parquet file or a folder of Parquet history (searched recursively; each valid row is
    /// appended as event JSON keyed tenant|city) or a JSON-lines file (each non-empty line is appended as it is,
    /// keyed tenant|city when it is a valid event, else without a key).
    #[arg(long)]
    from: PathBuf,
    /// Messages per second (default: as fast as the log takes them).
    #[arg(long, value_parser = flags::positive_f64)]
    rate: Option<f64>,
    /// Stop after this many messages.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
    /// Messages per append (each append is durable before the next).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    batch: u32,
}

/// Appends batches, paced to a rate, with progress.
struct Producer<'a> {
    log: &'a dyn EventLog,
    rate: Option<f64>,
    limit: u64,
    batch: usize,
    sent: u64,
    started: Instant,
    bar: ProgressBar,
    keys: Vec<Option<String>>,
    payloads: Vec<Vec<u8>>,
}

impl Producer<'_> {
    fn done(&self) -> bool {
        self.sent + self.payloads.len() as u64 >= self.limit
    }

    fn push(&mut self, key: Option<String>, payload: Vec<u8>) -> anyhow::Result<()> {
        self.keys.push(key);
        self.payloads.push(payload);
        if self.payloads.len() >= self.batch || self.done() {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if self.payloads.is_empty() {
            return Ok(());
        }
        if let Some(rate) = self.rate {
            let due = Duration::from_secs_f64(self.sent as f64 / rate);
            if let Some(wait) = due.checked_sub(self.started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let messages: Vec<(Option<&[u8]>, &[u8])> = self
            .keys
            .iter()
            .zip(&self.payloads)
            .map(|(k, p)| (k.as_deref().map(str::as_bytes), p.as_slice()))
            .collect();
        self.log.append_raw(&messages)?;
        self.sent += messages.len() as u64;
        self.bar.set_position(self.sent);
        self.keys.clear();
        self.payloads.clear();
        Ok(())
    }
}

pub fn run(args: ProduceArgs) -> anyhow::Result<()> {
    let log = open_log(&args.log.log)?;
    let bar = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} {human_pos} messages  {per_sec}  {elapsed}")
            .expect("valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    // With a rate, append about 20 times a second so the pace is smooth.
    let batch = match args.rate {
        Some(rate) => (args.batch as f64).min((rate / 20.0).ceil()).max(1.0) as usize,
        None => args.batch as usize,
    };
    let mut producer = Producer {
        log: log.as_ref(),
        rate: args.rate,
        limit: args.limit.unwrap_or(u64::MAX),
        batch,
        sent: 0,
        started: Instant::now(),
        bar,
        keys: Vec::with_capacity(batch),
        payloads: Vec::with_capacity(batch),
    };
    let mut skipped = 0u64;
    let mut first_skip = None;
    let parquet_file = args.from.is_file()
        && args
            .from
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("parquet"));
    if args.from.is_dir() || parquet_file {
        let files = match parquet_file {
            true => vec![args.from.clone()],
            false => list_parquet_files(&args.from)?,
        };
        anyhow::ensure!(
            !files.is_empty(),
            "--from {}: no *.parquet files in this folder",
            args.from.display()
        );
        'files: for path in files {
            let mut reader = EventFileReader::open(&path)?;
            while let Some(rows) = reader.next_batch() {
                for row in rows? {
                    if producer.done() {
                        break 'files;
                    }
                    match row {
                        Ok(event) => {
                            producer.push(Some(event_key(&event)), event.to_json().into_bytes())?
                        }
                        Err(e) => {
                            skipped += 1;
                            first_skip.get_or_insert(e.to_string());
                        }
                    }
                }
            }
        }
    } else {
        let file =
            File::open(&args.from).with_context(|| format!("--from {}", args.from.display()))?;
        let mut lines = BufReader::with_capacity(1 << 20, file);
        let mut line = Vec::new();
        let mut number = 0u64;
        while !producer.done() {
            line.clear();
            number += 1;
            let n = lines
                .read_until(b'\n', &mut line)
                .with_context(|| format!("--from {}: line {number}", args.from.display()))?;
            if n == 0 {
                break;
            }
            while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                line.pop();
            }
            if line.is_empty() {
                continue;
            }
            let key = Event::from_json(&line).ok().map(|e| event_key(&e));
            producer.push(key, line.clone())?;
        }
    }
    producer.flush()?;
    producer.bar.finish_and_clear();
    let secs = producer.started.elapsed().as_secs_f64();
    println!(
        "produced {} messages to {} in {secs:.1} s ({:.0} messages/s)",
        producer.sent,
        log.name(),
        producer.sent as f64 / secs.max(1e-9)
    );
    if let Some(reason) = first_skip {
        println!("skipped {skipped} rows that are not valid events; the first: {reason}");
    }
    let ends = log.end_offsets()?;
    println!(
        "partitions: {}; end offsets: {}",
        ends.len(),
        ends.iter()
            .map(|(p, o)| format!("{p}={o}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(())
}
