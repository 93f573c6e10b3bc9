//! The backfill job as a user runs it, checked against an independent recount of the same
//! Parquet (read row by row with the validating reader, no dataflow).

use std::collections::BTreeMap;
use std::process::Command;

use crate::common::{
    events_of, gen, hosts_file, ist_hour, ok, posteriors, recount, slotbandit, Counts,
};

use slotbandit::model::parquet::list_parquet_files;

/// Generated history in a temp folder, and a store URL beside it.
struct Fixture {
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
    store: String,
}

impl Fixture {
    fn new(gen_flags: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        ok(gen(&data, gen_flags));
        let store = format!("embedded:{}", dir.path().join("s.redb").display());
        Self {
            _dir: dir,
            data,
            store,
        }
    }

    fn backfill(&self, extra: &[&str]) -> std::process::Output {
        let mut args = vec![
            "backfill",
            "--input",
            self.data.to_str().unwrap(),
            "--store",
            &self.store,
        ];
        args.extend_from_slice(extra);
        slotbandit(&args)
    }
}

#[test]
fn backfill_is_exact_for_1_2_4_workers_and_2_processes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    ok(gen(
        &data,
        "--events 150000 --days 4 --tenants 2 --cities 6 --banners 5 --seed 3",
    ));
    let events = events_of(&list_parquet_files(&data).unwrap());
    let expected = recount(&events);
    assert!(expected.len() > 100);

    // `--epoch-rows 1` makes every row group its own epoch, so counts and all-time rows are
    // updated across epochs; the default puts this small history in one epoch per worker.
    for (workers, epoch_rows) in [("1", None), ("2", None), ("4", None), ("2", Some("1"))] {
        let store = format!(
            "embedded:{}",
            dir.path()
                .join(format!("w{workers}-{}.redb", epoch_rows.unwrap_or("d")))
                .display()
        );
        let mut args = vec![
            "backfill",
            "--input",
            data.to_str().unwrap(),
            "--store",
            &store,
            "-w",
            workers,
        ];
        args.extend(epoch_rows.iter().flat_map(|n| ["--epoch-rows", *n]));
        ok(slotbandit(&args));
        assert_eq!(
            posteriors(&store, &[]),
            expected,
            "{workers} workers, epoch rows {epoch_rows:?}"
        );
    }

    let hosts = hosts_file(dir.path(), 2);
    let store = format!("embedded:{}", dir.path().join("n2.redb").display());
    let spawn = |p: &str| {
        Command::new(env!("CARGO_BIN_EXE_slotbandit"))
            .args([
                "backfill",
                "--input",
                data.to_str().unwrap(),
                "--store",
                &store,
                "-w",
                "2",
                "-n",
                "2",
                "-p",
                p,
                "-h",
                hosts.to_str().unwrap(),
            ])
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap()
    };
    let (mut p0, mut p1) = (spawn("0"), spawn("1"));
    assert!(p0.wait().unwrap().success());
    assert!(p1.wait().unwrap().success());
    assert_eq!(posteriors(&store, &[]), expected, "2 processes");

    // Filters select the same rows.
    let pune_like = expected.keys().next().unwrap().clone();
    let filtered = posteriors(&store, &["--tenant", &pune_like.0, "--city", &pune_like.2]);
    let want: Counts = expected
        .iter()
        .filter(|(k, _)| k.0 == pune_like.0 && k.2 == pune_like.2)
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    assert_eq!(filtered, want);
}

/// The first IST hour of a window of `minutes` ending at `now`, by the rule the store states:
/// the whole hours that start at or after now − minutes.
fn first_hour_of_window(now: chrono::DateTime<chrono::Utc>, minutes: i64) -> i64 {
    let from = now.timestamp() - minutes * 60 + 19_800;
    from.div_euclid(3600) + i64::from(from.rem_euclid(3600) != 0)
}

/// Every bucket row (not all-time) kept in an embedded store, as (arm, bucket).
fn bucket_rows(store: &str) -> Vec<(String, i64)> {
    use slotbandit::store::{open_store, PosteriorStore};
    let store: Box<dyn PosteriorStore> = open_store(store, false).unwrap();
    store
        .shards(&|_, _| true)
        .unwrap()
        .into_iter()
        .flat_map(|s| s.rows)
        .filter(|(k, _)| k.bucket != slotbandit::model::ALL_TIME)
        .map(|(k, _)| (k.arm.to_string(), k.bucket))
        .collect()
}

#[test]
fn many_arms_are_counted_exactly_all_time_and_in_windows_with_1_and_2_workers() {
    // 4 tenants × 2 slots × 60 cities × 40 banners: about 19,000 arms, most seen a few times.
    let f = Fixture::new("--events 120000 --days 2 --tenants 4 --cities 60 --banners 40 --seed 8");
    let events = events_of(&list_parquet_files(&f.data).unwrap());
    let all_time = recount(&events);
    assert!(all_time.len() > 10_000, "{} arms", all_time.len());
    let now = events.iter().map(|e| e.ts).max().unwrap();
    for workers in ["1", "2"] {
        ok(f.backfill(&["-w", workers]));
        assert_eq!(posteriors(&f.store, &[]), all_time, "{workers} workers");
        for minutes in [60, 720, 2880] {
            let first_hour = first_hour_of_window(now, minutes);
            assert_eq!(
                posteriors(&f.store, &["--window-minutes", &minutes.to_string()]),
                recount(events.iter().filter(|e| ist_hour(e) >= first_hour)),
                "{workers} workers, {minutes} minutes"
            );
        }
    }
}

#[test]
fn a_short_retention_keeps_windows_inside_it_and_drops_older_bucket_rows() {
    use slotbandit::store::open_store;
    let f = Fixture::new("--events 40000 --days 3 --tenants 2 --cities 5 --banners 4 --seed 9");
    let events = events_of(&list_parquet_files(&f.data).unwrap());
    let now = events.iter().map(|e| e.ts).max().unwrap();
    let now_hour = (now.timestamp() + 19_800).div_euclid(3600);
    for workers in ["1", "2"] {
        ok(f.backfill(&["-w", workers, "--retention-hours", "6"]));
        assert_eq!(posteriors(&f.store, &[]), recount(&events), "all-time");
        for minutes in [60, 240, 360] {
            let first_hour = first_hour_of_window(now, minutes);
            assert_eq!(
                posteriors(&f.store, &["--window-minutes", &minutes.to_string()]),
                recount(events.iter().filter(|e| ist_hour(e) >= first_hour)),
                "{minutes} minutes inside a retention of 6 hours, {workers} workers"
            );
        }
        let rows = bucket_rows(&f.store);
        assert!(!rows.is_empty());
        let oldest = rows.iter().map(|r| r.1).min().unwrap();
        assert_eq!(oldest, now_hour - 6, "the horizon is now's hour less 6");
        let store = open_store(&f.store, false).unwrap();
        assert_eq!(store.retention().unwrap().unwrap().hours(), 6);
    }
    // The default keeps two days.
    ok(f.backfill(&[]));
    let oldest = bucket_rows(&f.store).iter().map(|r| r.1).min().unwrap();
    assert_eq!(oldest, now_hour - 48);
}

#[test]
fn windows_and_until_match_a_recount_with_the_same_rule() {
    let f = Fixture::new("--events 60000 --days 3 --tenants 1 --cities 4 --banners 4 --seed 5");
    let events = events_of(&list_parquet_files(&f.data).unwrap());
    let store = &f.store;
    ok(f.backfill(&[]));

    // "now" is the newest event; the window holds the whole IST hours starting at or after now − 720 min.
    let now = events.iter().map(|e| e.ts).max().unwrap();
    let from = now.timestamp() - 720 * 60 + 19_800;
    let first_hour = from.div_euclid(3600) + i64::from(from.rem_euclid(3600) != 0);
    let in_window = recount(events.iter().filter(|e| ist_hour(e) >= first_hour));
    assert_eq!(posteriors(store, &["--window-minutes", "720"]), in_window);
    assert_ne!(in_window, recount(&events));

    // --until counts only events before the cutoff.
    let cutoff = "2026-11-02T12:00:00+05:30";
    let cut = slotbandit::time::parse_rfc3339(cutoff).unwrap();
    ok(f.backfill(&["--until", cutoff]));
    assert_eq!(
        posteriors(store, &[]),
        recount(events.iter().filter(|e| e.ts < cut))
    );
}

/// Writes `events` to one Parquet file of small pages (`page_rows` rows each) in the given
/// order, with the page index and without the decision log's columns, as a writer of another
/// engine might.
fn write_small_pages(
    path: &std::path::Path,
    events: &[&slotbandit::model::Event],
    page_rows: usize,
) {
    use arrow::array::{ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray};
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::{EnabledStatistics, WriterProperties};

    let text = |f: fn(&slotbandit::model::Event) -> String| -> ArrayRef {
        std::sync::Arc::new(StringArray::from_iter_values(events.iter().map(|e| f(e))))
    };
    let optional = |f: fn(&slotbandit::model::Event) -> Option<String>| -> ArrayRef {
        std::sync::Arc::new(StringArray::from(
            events.iter().map(|e| f(e)).collect::<Vec<_>>(),
        ))
    };
    let ts =
        TimestampMicrosecondArray::from_iter_values(events.iter().map(|e| e.ts.timestamp_micros()))
            .with_timezone("UTC");
    let schema = slotbandit::model::parquet::event_schema();
    let without_decision_log = arrow::datatypes::Schema::new(schema.fields()[..10].to_vec());
    let batch = RecordBatch::try_new(
        std::sync::Arc::new(without_decision_log),
        vec![
            text(|e| e.event_id.clone()),
            text(|e| e.kind.as_str().to_string()),
            text(|e| e.tenant.clone()),
            text(|e| e.slot.clone()),
            text(|e| e.city.clone()),
            text(|e| e.banner.clone()),
            std::sync::Arc::new(ts),
            optional(|e| e.customer_id.clone()),
            optional(|e| e.referrer.clone()),
            optional(|e| e.request_id.clone()),
        ],
    )
    .unwrap();
    let props = WriterProperties::builder()
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_data_page_row_count_limit(page_rows)
        .set_write_batch_size(page_rows)
        .set_max_row_group_row_count(Some(page_rows * 40))
        .build();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut writer = ArrowWriter::try_new(
        std::fs::File::create(path).unwrap(),
        batch.schema(),
        Some(props),
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

#[test]
fn pages_whose_timestamps_share_a_bucket_are_counted_exactly_without_being_read() {
    // Time-ordered history in pages of 64 rows: most pages lie inside one IST hour, and the
    // reader takes their bucket from the page index; pages across an hour, the page holding the
    // --until cutoff and the shuffled file's pages are decoded.
    let f = Fixture::new("--events 40000 --days 1 --tenants 2 --cities 3 --banners 4 --seed 11");
    let mut events = events_of(&list_parquet_files(&f.data).unwrap());
    events.sort_by_key(|e| e.ts);
    let paged = f.data.parent().unwrap().join("paged");
    let (ordered, shuffled) = events.split_at(events.len() * 3 / 4);
    write_small_pages(
        &paged.join("ordered.parquet"),
        &ordered.iter().collect::<Vec<_>>(),
        64,
    );
    let mut mixed: Vec<_> = shuffled.iter().collect();
    mixed.sort_by_key(|e| e.event_id.clone());
    write_small_pages(&paged.join("shuffled.parquet"), &mixed, 64);

    let backfill = |extra: &[&str]| {
        let mut args = vec![
            "backfill",
            "--input",
            paged.to_str().unwrap(),
            "--store",
            &f.store,
        ];
        args.extend_from_slice(extra);
        ok(slotbandit(&args));
    };
    backfill(&["-w", "2"]);
    assert_eq!(posteriors(&f.store, &[]), recount(&events));

    let now = events.last().unwrap().ts.timestamp();
    let from = now - 180 * 60 + 19_800;
    let first_hour = from.div_euclid(3600) + i64::from(from.rem_euclid(3600) != 0);
    assert_eq!(
        posteriors(&f.store, &["--window-minutes", "180"]),
        recount(events.iter().filter(|e| ist_hour(e) >= first_hour))
    );

    // A cutoff inside an hour, and so inside a page of the ordered file.
    let cut = ordered[ordered.len() / 2].ts + chrono::Duration::microseconds(1);
    let cutoff = cut.to_rfc3339();
    backfill(&["--until", &cutoff]);
    let before = recount(events.iter().filter(|e| e.ts < cut));
    assert_eq!(posteriors(&f.store, &[]), before);
    assert_ne!(before, recount(&events));
}

#[test]
fn a_file_whose_page_index_is_unreadable_is_read_whole_and_counted_exactly() {
    let f = Fixture::new("--events 20000 --days 1 --tenants 2 --cities 3 --banners 4 --seed 12");
    let mut events = events_of(&list_parquet_files(&f.data).unwrap());
    events.sort_by_key(|e| e.ts);
    let dir = f.data.parent().unwrap().join("bad-index");
    let path = dir.join("events.parquet");
    write_small_pages(&path, &events.iter().collect::<Vec<_>>(), 64);
    // Every column's page index (column and offset index) overwritten with bytes no Thrift
    // decoder accepts; the footer and the data pages stay intact.
    let metadata = parquet::file::metadata::ParquetMetaDataReader::new()
        .parse_and_finish(&std::fs::File::open(&path).unwrap())
        .unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let mut overwritten = 0;
    for column in metadata.row_groups().iter().flat_map(|rg| rg.columns()) {
        for (offset, length) in [
            (column.column_index_offset(), column.column_index_length()),
            (column.offset_index_offset(), column.offset_index_length()),
        ] {
            if let (Some(offset), Some(length)) = (offset, length) {
                let start = usize::try_from(offset).unwrap();
                bytes[start..start + usize::try_from(length).unwrap()].fill(0xff);
                overwritten += 1;
            }
        }
    }
    assert!(overwritten > 0, "the writer wrote no page index");
    std::fs::write(&path, &bytes).unwrap();

    ok(slotbandit(&[
        "backfill",
        "--input",
        dir.to_str().unwrap(),
        "--store",
        &f.store,
        "-w",
        "2",
    ]));
    assert_eq!(posteriors(&f.store, &[]), recount(&events));
}

#[test]
fn the_leader_per_city_is_the_true_best_wherever_the_data_can_tell() {
    let f = Fixture::new("--events 1500000 --days 2 --tenants 1 --cities 3 --banners 4 --seed 9");
    ok(f.backfill(&[]));
    let counts = posteriors(&f.store, &[]);
    let data = &f.data;
    let truth: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("_truth.json")).unwrap()).unwrap();
    let mut ctr: BTreeMap<(String, String, String), Vec<(String, f64)>> = BTreeMap::new();
    for a in truth["arms"].as_array().unwrap() {
        let s = |k: &str| a[k].as_str().unwrap().to_string();
        ctr.entry((s("tenant"), s("slot"), s("city")))
            .or_default()
            .push((s("banner"), a["ctr"].as_f64().unwrap()));
    }
    let mut checked = 0;
    for ((t, s, c), arms) in &ctr {
        let mut sorted = arms.clone();
        sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
        let (best, second) = (&sorted[0], &sorted[1]);
        let n_min = arms
            .iter()
            .map(|(b, _)| counts[&(t.clone(), s.clone(), c.clone(), b.clone())].0)
            .min()
            .unwrap() as f64;
        // Enough data: the gap to the runner-up is at least 4 standard errors of both estimates.
        let se = ((best.1 * (1.0 - best.1) + second.1 * (1.0 - second.1)) / n_min).sqrt();
        if best.1 - second.1 < 4.0 * se {
            continue;
        }
        let leader = arms
            .iter()
            .max_by(|x, y| {
                let m = |b: &str| {
                    let (i, k) = counts[&(t.clone(), s.clone(), c.clone(), b.to_string())];
                    (1.0 + k as f64) / (2.0 + i as f64)
                };
                m(&x.0).total_cmp(&m(&y.0))
            })
            .unwrap();
        assert_eq!(leader.0, best.0, "{t}/{s}/{c}");
        checked += 1;
    }
    assert!(
        checked >= 2,
        "only {checked} groups had enough data to tell"
    );
}

#[test]
fn bad_files_are_named_or_skipped_with_the_rest_counted_exactly() {
    let f = Fixture::new("--events 700000 --days 2 --tenants 1 --cities 3 --banners 3 --seed 4");
    let (data, store) = (&f.data, &f.store);
    let files = list_parquet_files(data).unwrap();
    let (victim, rest) = (files[0].clone(), files[1..].to_vec());
    let expected = recount(&events_of(&rest));
    let backfill = |extra: &[&str]| f.backfill(extra);
    let victim_name = victim.strip_prefix(data).unwrap().display().to_string();

    // A corrupt row group: the footer is intact, the page data in the middle is not.
    let good = std::fs::read(&victim).unwrap();
    let meta =
        parquet::file::reader::SerializedFileReader::new(std::fs::File::open(&victim).unwrap())
            .unwrap();
    use parquet::file::reader::FileReader;
    assert!(
        meta.metadata().num_row_groups() >= 2,
        "the victim needs several row groups"
    );
    // Overwrite the `city` column chunk of the second row group (a column the job reads).
    let rg = meta.metadata().row_group(1);
    let city = (0..rg.num_columns())
        .find(|&i| rg.column(i).column_path().string() == "city")
        .unwrap();
    let (start, len) = rg.column(city).byte_range();
    let mut bad = good.clone();
    bad[start as usize..(start + len) as usize]
        .iter_mut()
        .for_each(|x| *x = 0xAB);
    std::fs::write(&victim, &bad).unwrap();
    for workers in ["1", "3"] {
        let o = backfill(&["-w", workers]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains(&victim_name) && !err.contains("panicked"),
            "{err}"
        );
        // One row group per epoch: the victim's good row groups are counted in earlier epochs
        // and taken back when its bad one is found.
        let o = backfill(&["-w", workers, "--skip-bad-files", "--epoch-rows", "1"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stderr).contains(&victim_name));
        assert_eq!(
            posteriors(store, &[]),
            expected,
            "corrupt row group, {workers} workers"
        );
    }

    // A wrong schema: `city` as a number.
    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use std::sync::Arc;
    let batch = RecordBatch::try_from_iter([
        ("event_id", Arc::new(StringArray::from(vec!["e1"])) as _),
        ("kind", Arc::new(StringArray::from(vec!["click"])) as _),
        ("tenant", Arc::new(StringArray::from(vec!["ajio"])) as _),
        ("slot", Arc::new(StringArray::from(vec!["hero"])) as _),
        ("city", Arc::new(Int64Array::from(vec![7])) as _),
        ("banner", Arc::new(StringArray::from(vec!["b1"])) as _),
        (
            "ts",
            Arc::new(
                arrow::array::TimestampMicrosecondArray::from(vec![1_764_345_900_000_000])
                    .with_timezone("UTC"),
            ) as _,
        ),
    ])
    .unwrap();
    std::fs::write(&victim, &good).unwrap();
    let wrong = data.join("dt=2026-11-01/wrong.parquet");
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&wrong).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let o = backfill(&[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("wrong.parquet") && err.contains("city"),
        "{err}"
    );
    let o = backfill(&["--skip-bad-files"]);
    assert!(o.status.success());
    assert_eq!(
        posteriors(store, &[]),
        recount(&events_of(&files)),
        "wrong schema skipped"
    );

    // Not Parquet at all, and truncated.
    std::fs::write(&wrong, b"not parquet").unwrap();
    let err = String::from_utf8_lossy(&backfill(&[]).stderr).to_string();
    assert!(err.contains("wrong.parquet"), "{err}");
}

#[test]
fn rows_that_break_the_contract_are_rejected_and_the_rest_counted_exactly() {
    use arrow::array::{RecordBatch, StringArray, TimestampMicrosecondArray};
    use std::sync::Arc;
    let f = Fixture::new("--events 20000 --days 2 --tenants 1 --cities 3 --banners 3 --seed 6");
    let mut expected = recount(&events_of(&list_parquet_files(&f.data).unwrap()));
    // One file mixing good rows with a bad name, a missing name, an unknown kind and a missing
    // time; the generated files hold only good rows, so both the checked and the unchecked
    // reading paths run.
    let t = 1_762_000_000_000_000i64;
    /// kind, city, banner, ts
    type Row<'a> = (Option<&'a str>, &'a str, Option<&'a str>, Option<i64>);
    let rows: [Row; 7] = [
        (Some("impression"), "pune", Some("b1"), Some(t)),
        (Some("click"), "pune", Some("b1"), Some(t + 1)),
        (Some("impression"), "पुणे", Some("b1"), Some(t)),
        (Some("impression"), "pune", None, Some(t)),
        (Some("view"), "pune", Some("b1"), Some(t)),
        (Some("impression"), "pune", Some("b1"), None),
        (
            Some("impression"),
            "delhi",
            Some("b2"),
            Some(t + 7_200_000_000),
        ),
    ];
    let column = |f: &dyn Fn(&Row) -> Option<String>| {
        Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>())) as _
    };
    let batch = RecordBatch::try_from_iter([
        ("event_id", column(&|_| Some("e".into()))),
        ("kind", column(&|r| r.0.map(String::from))),
        ("tenant", column(&|_| Some("mixed".into()))),
        ("slot", column(&|_| Some("hero".into()))),
        ("city", column(&|r| Some(r.1.into()))),
        ("banner", column(&|r| r.2.map(String::from))),
        (
            "ts",
            Arc::new(
                TimestampMicrosecondArray::from(rows.iter().map(|r| r.3).collect::<Vec<_>>())
                    .with_timezone("UTC"),
            ) as _,
        ),
    ])
    .unwrap();
    let mixed = f.data.join("dt=2026-11-01/mixed.parquet");
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&mixed).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let arm = |city: &str, banner: &str| {
        (
            "mixed".to_string(),
            "hero".to_string(),
            city.to_string(),
            banner.to_string(),
        )
    };
    expected.insert(arm("pune", "b1"), (1, 1));
    expected.insert(arm("delhi", "b2"), (1, 0));
    for workers in ["1", "2"] {
        let o = f.backfill(&["-w", workers]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        assert!(
            err.contains("4 rows break the event contract"),
            "{workers} workers: {err}"
        );
        assert_eq!(posteriors(&f.store, &[]), expected, "{workers} workers");
    }
}

#[test]
fn backfill_flags_are_validated() {
    for (args, needle) in [
        (vec!["backfill"], "--input"),
        (
            vec!["backfill", "--input", "x", "--bucket-minutes", "7"],
            "divide",
        ),
        (
            vec!["backfill", "--input", "x", "--until", "tomorrow"],
            "--until",
        ),
        (
            vec!["backfill", "--input", "x", "--store", "mysql://x"],
            "embedded:PATH",
        ),
        (vec!["backfill", "--input", "x", "-w", "0"], "--workers"),
        (
            vec!["backfill", "--input", "x", "--epoch-rows", "0"],
            "--epoch-rows",
        ),
        (vec!["backfill", "--input", "x", "-n", "2"], "--hostfile"),
        (
            vec!["backfill", "--input", "/nonexistent/dir"],
            "/nonexistent/dir",
        ),
        (vec!["posteriors", "--city", "Straße"], "[a-z0-9_]{1,64}"),
        (
            vec!["posteriors", "--window-minutes", "0"],
            "--window-minutes",
        ),
        (
            vec!["posteriors", "--store", "embedded:/nonexistent/x.redb"],
            "does not exist",
        ),
        (vec!["priors", "--prior-strength", "-1"], "positive"),
        (
            vec!["backfill", "--input", "x", "--retention-hours", "0"],
            "--retention-hours",
        ),
        (
            vec!["backfill", "--input", "x", "--retention-hours", "100000"],
            "ten years",
        ),
        (
            vec!["stream", "--log", "file:x", "--retention-hours", "two"],
            "--retention-hours",
        ),
    ] {
        let o = slotbandit(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(
            err.contains(needle) && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn priors_from_history_feed_the_posteriors() {
    let f = Fixture::new("--events 50000 --days 2 --tenants 1 --cities 4 --banners 3");
    ok(f.backfill(&[]));
    let store = &f.store;
    ok(slotbandit(&[
        "priors",
        "--store",
        store,
        "--prior-strength",
        "50",
    ]));
    let csv = ok(slotbandit(&[
        "posteriors",
        "--store",
        store,
        "--format",
        "csv",
    ]));
    for line in csv.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let (imp, clk): (f64, f64) = (f[4].parse().unwrap(), f[5].parse().unwrap());
        let (alpha, beta): (f64, f64) = (f[6].parse().unwrap(), f[7].parse().unwrap());
        let strength = alpha + beta - imp;
        assert!(strength > 0.0 && strength <= 50.0 + 1e-9, "{line}");
        assert!(alpha > clk, "{line}");
    }
}
