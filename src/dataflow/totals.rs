//! The backfill's sink (docs/architecture.md, "The dataflow"): records are exchanged by (tenant,
//! city) like the stream's, but the owner keeps its shards' totals in memory, per (interned arm,
//! bucket), and writes them once every worker has read everything. A backfill starts over after
//! a crash, so it needs neither per-epoch writes nor a collection that can tell what changed.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Operator, Probe};
use timely::dataflow::{ProbeHandle, StreamVec};

use super::arm_table::ArmTable;
use super::priors::AllTime;
use super::sink::SinkSpec;
use super::DataflowError;
use crate::model::{CountKey, Counts, PackedArm, ShardKey, ALL_TIME};
use crate::source::parquet::ArmIds;
use crate::store::ShardWrite;

/// One file's counts of one arm in one bucket, as a reader hands them to the arm's owner.
/// `bucket` is `None` for counts of buckets before the retention horizon: they go into the
/// all-time row only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct BackfillCell {
    pub(super) file: u32,
    pub(super) arm: SentArm,
    pub(super) bucket: Option<i64>,
    pub(super) counts: Counts,
}

/// An arm as a reader sends it to the arm's owner: by the reader's number for it, with its names
/// the first time. A backfill sends each arm's cells many times over; numbers spare the owner
/// hashing and comparing four names for each, and the reader building them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SentArm {
    /// The reading worker's index.
    reader: u32,
    number: u32,
    shard_hash: u64,
    names: Option<PackedArm>,
}

/// The arms one reader has sent, by their interned names: each arm's number and shard hash.
///
/// Kept as sorted runs probed by cursors, not as a hash map: the backfill asks for the arms of an
/// epoch in sorted order, so a probe moves a cursor a few entries forward through memory that the
/// prefetcher is already reading, where a hash map of a million arms missed the cache on nearly
/// every probe (a seventh of a backfill's CPU). An arm asked for out of order starts a new pass,
/// so any order is answered correctly; only the speed assumes sorted passes.
pub(super) struct SentArms {
    reader: u32,
    /// The arms known before the current pass, sorted, in two runs: a large one, and a smaller
    /// one that recent passes merge into and that merges into the large one once it has grown
    /// to an eighth of it (so each arm is copied a few times, not once per pass).
    runs: [Vec<KnownArm>; 2],
    /// Per run, where the current pass has got to.
    cursors: [usize; 2],
    /// Arms first met in the current pass, in the order met (sorted, as the pass is).
    fresh: Vec<KnownArm>,
    /// The last arm asked for in the current pass.
    last: Option<u128>,
    next: u32,
}

#[derive(Debug, Clone, Copy)]
struct KnownArm {
    ids: u128,
    number: u32,
    shard_hash: u64,
}

/// An arm's ids as one integer, ordered as the ids are (how the backfill's epoch sorts them and
/// [`SentArms`] knows them).
pub(super) fn packed_ids(ids: ArmIds) -> u128 {
    ids.iter().fold(0, |key, &id| (key << 32) | u128::from(id))
}

impl SentArms {
    pub(super) fn new(reader: usize) -> Self {
        Self {
            reader: reader as u32,
            runs: [Vec::new(), Vec::new()],
            cursors: [0, 0],
            fresh: Vec::new(),
            last: None,
            next: 0,
        }
    }

    /// The arm of `key` (its [`packed_ids`]) as this reader sends it: named (by `build`) the
    /// first time.
    pub(super) fn arm(&mut self, key: u128, build: impl FnOnce() -> PackedArm) -> SentArm {
        if self.last.is_some_and(|last| key < last) {
            self.end_pass();
        }
        self.last = Some(key);
        let known = self.find(key);
        let (number, shard_hash, names) = match known {
            Some(known) => (known.number, known.shard_hash, None),
            None => {
                let arm = build();
                let known = KnownArm {
                    ids: key,
                    number: self.next,
                    shard_hash: arm.shard_hash(),
                };
                self.next += 1;
                self.fresh.push(known);
                (known.number, known.shard_hash, Some(arm))
            }
        };
        SentArm {
            reader: self.reader,
            number,
            shard_hash,
            names,
        }
    }

    /// The known arm of `key`, moving the cursors up to it (`key` is at least the pass's last).
    fn find(&mut self, key: u128) -> Option<KnownArm> {
        if let Some(&last) = self.fresh.last().filter(|f| f.ids == key) {
            return Some(last);
        }
        for (run, cursor) in self.runs.iter().zip(&mut self.cursors) {
            while run.get(*cursor).is_some_and(|k| k.ids < key) {
                *cursor += 1;
            }
            if let Some(&known) = run.get(*cursor).filter(|k| k.ids == key) {
                return Some(known);
            }
        }
        None
    }

    /// Takes the pass's new arms into the runs and rewinds the cursors.
    fn end_pass(&mut self) {
        let [large, small] = &mut self.runs;
        if !self.fresh.is_empty() {
            *small = merge_sorted(std::mem::take(small), std::mem::take(&mut self.fresh));
        }
        if small.len() * 8 > large.len() {
            *large = merge_sorted(std::mem::take(large), std::mem::take(small));
        }
        self.cursors = [0, 0];
        self.last = None;
    }
}

/// Two sorted runs of distinct arms as one.
fn merge_sorted(a: Vec<KnownArm>, b: Vec<KnownArm>) -> Vec<KnownArm> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    while let (Some(x), Some(y)) = (a.peek(), b.peek()) {
        out.push(if x.ids < y.ids { a.next() } else { b.next() }.expect("peeked"));
    }
    out.extend(a);
    out.extend(b);
    out
}

/// The bucket of a [`Cell`] whose counts go into the all-time row only. Buckets of events
/// (years 1970 to 9999, buckets of a minute or more) are below it.
const FOLDED: u32 = u32::MAX;

/// Counts of an interned arm in one bucket, on the worker that owns the arm: 24 bytes, as a
/// backfill of many arms holds one per (arm, hour) it saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cell {
    arm: u32,
    bucket: u32,
    counts: Counts,
}

impl Cell {
    /// (arm, bucket) as one integer, which sorts faster than the pair.
    fn key(&self) -> u64 {
        (u64::from(self.arm) << 32) | u64::from(self.bucket)
    }
}

/// Cells appended as they arrive and merged whenever the vector is full, so that memory follows
/// the distinct cells and grows by halves, not doublings. A merge sorts only what arrived since
/// the last one and merges it into the sorted front from the back: sorting the whole vector each
/// time was most of an owner's CPU at a million arms.
#[derive(Default)]
struct Cells {
    cells: Vec<Cell>,
    /// The front `sorted` cells are sorted by (arm, bucket), each key once.
    sorted: usize,
}

impl Cells {
    fn push(&mut self, cell: Cell) {
        if self.cells.len() == self.cells.capacity() {
            self.merge();
            let len = self.cells.len();
            if len >= self.cells.capacity() / 2 {
                self.cells.reserve_exact((len / 2).max(1 << 12));
            }
        }
        self.cells.push(cell);
    }

    fn extend(&mut self, other: Cells) {
        self.cells.extend(other.cells);
    }

    /// Sorts the cells by (arm, bucket) and sums equal ones.
    fn merge(&mut self) {
        let mut tail = self.cells.split_off(self.sorted);
        sort_and_sum(&mut tail);
        let front = self.cells.len();
        // Sets the length; every cell is written over below.
        self.cells.extend_from_slice(&tail);
        let cells = &mut self.cells;
        let (mut i, mut j, mut w) = (front, tail.len(), front + tail.len());
        // Invariant: w >= i + j, so a write never lands on a front cell not yet read.
        while j > 0 {
            w -= 1;
            let t = tail[j - 1];
            if i > 0 && cells[i - 1].key() > t.key() {
                cells[w] = cells[i - 1];
                i -= 1;
            } else if i > 0 && cells[i - 1].key() == t.key() {
                cells[w] = Cell {
                    counts: cells[i - 1].counts.saturating_add(t.counts),
                    ..t
                };
                i -= 1;
                j -= 1;
            } else {
                cells[w] = t;
                j -= 1;
            }
        }
        // The front [0, i) stayed in place; the merged rest starts at w.
        let len = cells.len();
        if w > i {
            cells.copy_within(w..len, i);
            cells.truncate(len - (w - i));
        }
        self.sorted = cells.len();
    }
}

/// Sorts cells by (arm, bucket) and sums equal ones.
fn sort_and_sum(cells: &mut Vec<Cell>) {
    cells.sort_unstable_by_key(Cell::key);
    cells.dedup_by(|later, kept| {
        if later.key() != kept.key() {
            return false;
        }
        kept.counts = kept.counts.saturating_add(later.counts);
        true
    });
}

/// Rows handed to the store in one call: bounds the memory a write holds (here and in the
/// store's transaction) while keeping the number of transactions small.
const WRITE_ROWS: usize = 1 << 17;

/// The arms and shards one worker owns, by id.
#[derive(Default)]
struct OwnedArms {
    table: ArmTable<PackedArm>,
    /// Per reader, the id of each arm it numbered ([`UNNAMED`] until its names arrive).
    by_reader: Vec<Vec<u32>>,
}

/// An arm number whose names have not arrived.
const UNNAMED: u32 = u32::MAX;

impl OwnedArms {
    /// The id of a sent arm, interning it when it comes with its names; `None` for a number
    /// whose names have not arrived yet.
    fn id_of(&mut self, sent: &SentArm) -> Option<u32> {
        let reader = sent.reader as usize;
        if self.by_reader.len() <= reader {
            self.by_reader.resize_with(reader + 1, Vec::new);
        }
        let number = sent.number as usize;
        match &sent.names {
            Some(names) => {
                let id = self.intern(names.clone());
                let numbers = &mut self.by_reader[reader];
                if numbers.len() <= number {
                    numbers.resize(number + 1, UNNAMED);
                }
                numbers[number] = id;
                Some(id)
            }
            None => self.by_reader[reader]
                .get(number)
                .copied()
                .filter(|&id| id != UNNAMED),
        }
    }

    fn intern(&mut self, arm: PackedArm) -> u32 {
        self.table
            .intern(arm, |arm| ShardKey::new(arm.tenant(), arm.city()))
    }
}

/// The totals of the shards one worker owns, per file so that a bad file can take its counts
/// back (one file, 0, when files need not be told apart).
#[derive(Default)]
struct ShardTotals {
    arms: OwnedArms,
    files: FxHashMap<u32, Cells>,
    /// Cells that came before their arm's names: timely keeps no order between a reader's
    /// messages, so the names may come later.
    unnamed: Vec<BackfillCell>,
}

impl ShardTotals {
    fn add(&mut self, cell: BackfillCell) -> Result<(), DataflowError> {
        match self.arms.id_of(&cell.arm) {
            Some(arm) => self.add_to(arm, &cell),
            None => {
                self.unnamed.push(cell);
                Ok(())
            }
        }
    }

    fn add_to(&mut self, arm: u32, cell: &BackfillCell) -> Result<(), DataflowError> {
        let bucket = match cell.bucket {
            None => FOLDED,
            Some(b) => u32::try_from(b)
                .ok()
                .filter(|&b| b != FOLDED)
                .ok_or_else(|| {
                    DataflowError::Config(format!(
                        "bucket {b} of {} is out of range",
                        self.arms.table.arm(arm).unpack()
                    ))
                })?,
        };
        self.files.entry(cell.file).or_default().push(Cell {
            arm,
            bucket,
            counts: cell.counts,
        });
        Ok(())
    }

    /// Adds the cells that came before their arm's names, once every cell is in.
    fn add_unnamed(&mut self) -> Result<(), DataflowError> {
        for cell in std::mem::take(&mut self.unnamed) {
            let arm = self.arms.id_of(&cell.arm).ok_or_else(|| {
                DataflowError::Timely(format!(
                    "reader {} sent cells of its arm {} without ever naming it",
                    cell.arm.reader, cell.arm.number
                ))
            })?;
            self.add_to(arm, &cell)?;
        }
        Ok(())
    }

    /// Takes back every count of a bad file and sums the files of each (arm, bucket).
    fn finish(&mut self, bad_files: &FxHashSet<u32>) -> Cells {
        let mut files: Vec<Cells> = std::mem::take(&mut self.files)
            .into_iter()
            .filter(|(file, _)| !bad_files.contains(file))
            .map(|(_, cells)| cells)
            .collect();
        files.sort_by_key(|c| std::cmp::Reverse(c.cells.len()));
        let mut all = files.pop().unwrap_or_default();
        for cells in files {
            all.extend(cells);
        }
        all.merge();
        all.cells.shrink_to_fit();
        all
    }

    /// The shards' rows, all-time and per bucket, grouped by shard in shard order and each
    /// arm's rows together, handed to `write` in groups of about [`WRITE_ROWS`] rows (a shard
    /// larger than that is split between arms). `cells` are [`ShardTotals::finish`]'s.
    fn write_in_groups(&self, cells: &Cells, mut write: impl FnMut(Vec<ShardWrite>)) {
        let arms = &self.arms.table;
        let runs: Vec<&[Cell]> = cells.cells.chunk_by(|a, b| a.arm == b.arm).collect();
        let mut shard_order: Vec<u32> = (0..arms.shard_count() as u32).collect();
        shard_order.sort_by(|&a, &b| arms.shard(a).cmp(arms.shard(b)));
        let mut runs_by_shard: Vec<Vec<u32>> = vec![Vec::new(); arms.shard_count()];
        for (run, cells) in runs.iter().enumerate() {
            runs_by_shard[arms.shard_of(cells[0].arm) as usize].push(run as u32);
        }
        let mut group: Vec<ShardWrite> = Vec::new();
        let mut group_rows = 0;
        for shard in shard_order {
            let mut current = ShardWrite::new(arms.shard(shard).clone());
            for &run in &runs_by_shard[shard as usize] {
                let cells = runs[run as usize];
                let arm = Arc::new(arms.arm(cells[0].arm).unpack());
                let mut all_time = Counts::ZERO;
                for cell in cells {
                    all_time = all_time.saturating_add(cell.counts);
                    if cell.bucket != FOLDED && !cell.counts.is_zero() {
                        let key = CountKey {
                            arm: arm.clone(),
                            bucket: i64::from(cell.bucket),
                        };
                        current.rows.push((key, cell.counts));
                    }
                }
                if !all_time.is_zero() {
                    let key = CountKey {
                        arm,
                        bucket: ALL_TIME,
                    };
                    current.rows.push((key, all_time));
                }
                if group_rows + current.rows.len() >= WRITE_ROWS {
                    let shard = current.shard.clone();
                    group.push(std::mem::replace(&mut current, ShardWrite::new(shard)));
                    write(std::mem::take(&mut group));
                    group_rows = 0;
                }
            }
            if !current.rows.is_empty() {
                group_rows += current.rows.len();
                group.push(current);
            }
        }
        if !group.is_empty() {
            write(group);
        }
    }
}

/// Totals `cells` per (arm, bucket) on the worker that owns each arm's shard and, once every
/// worker has read everything, writes them: each arm's all-time row (every cell of the arm,
/// folded ones too) and its bucket rows, in groups of whole arms, unsynced (the job syncs at its
/// end). With `skip_bad_files`, a file in `bad_files` (from any worker) takes back all its
/// counts first. The probe passes an epoch once every owner has received it. When the job keeps
/// priors, the all-time row of every arm written gathers in the returned vector.
pub(super) fn total_and_sink<'s>(
    cells: StreamVec<'s, u64, BackfillCell>,
    bad_files: StreamVec<'s, u64, u32>,
    spec: SinkSpec,
) -> (ProbeHandle<u64>, Rc<RefCell<Vec<AllTime>>>) {
    let placement = spec.placement;
    let totals: Rc<RefCell<ShardTotals>> = Rc::default();
    let all_time: Rc<RefCell<Vec<AllTime>>> = Rc::default();
    let written_all_time = all_time.clone();
    let stream = cells.binary_frontier::<_, CapacityContainerBuilder<Vec<()>>, _, _, _, _>(
        bad_files.broadcast(),
        Exchange::new(move |c: &BackfillCell| placement.exchange_key_of_hash(c.arm.shard_hash)),
        Pipeline,
        "Totals",
        move |_cap, _info| {
            let mut bad: FxHashSet<u32> = FxHashSet::default();
            let mut written = false;
            move |(cells, cells_frontier), (files, files_frontier), _output| {
                cells.for_each(|_cap, data| {
                    let mut totals = totals.borrow_mut();
                    for cell in data.drain(..) {
                        if let Err(e) = totals.add(cell) {
                            spec.failure.set(e);
                        }
                    }
                });
                files.for_each(|_cap, data| bad.extend(data.drain(..)));
                if written || !cells_frontier.is_empty() || !files_frontier.is_empty() {
                    return;
                }
                written = true;
                let mut totals = totals.borrow_mut();
                let Some(store) = spec.store.as_ref() else {
                    return;
                };
                if let Err(e) = totals.add_unnamed() {
                    spec.failure.set(e);
                }
                if spec.failure.is_set() {
                    return;
                }
                let cells = totals.finish(&bad);
                totals.write_in_groups(&cells, |writes| {
                    if spec.failure.is_set() {
                        return;
                    }
                    spec.write(store.as_ref(), &writes, false);
                    if spec.priors.is_some() {
                        let rows = writes.iter().flat_map(|w| &w.rows);
                        written_all_time.borrow_mut().extend(
                            rows.filter(|(key, _)| key.is_all_time())
                                .map(|(key, c)| (key.arm.clone(), *c)),
                        );
                    }
                });
                *totals = ShardTotals::default();
            }
        },
    );
    let (probe, _) = stream.probe();
    (probe, all_time)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that names arms by banner and city (tenant t1, slot hero).
    struct Reader {
        sent: SentArms,
        names: FxHashMap<String, u32>,
    }

    impl Default for Reader {
        fn default() -> Self {
            Self::numbered(0)
        }
    }

    impl Reader {
        fn numbered(index: usize) -> Self {
            Self {
                sent: SentArms::new(index),
                names: FxHashMap::default(),
            }
        }

        fn id(&mut self, name: &str) -> u32 {
            let next = self.names.len() as u32;
            *self.names.entry(name.to_string()).or_insert(next)
        }

        fn arm(&mut self, banner: &str, city: &str) -> SentArm {
            let ids = [0, 0, self.id(city), self.id(banner)];
            self.sent.arm(packed_ids(ids), || {
                PackedArm::new("t1", "hero", city, banner)
            })
        }

        fn cell(
            &mut self,
            file: u32,
            banner: &str,
            city: &str,
            bucket: Option<i64>,
            imp: u64,
        ) -> BackfillCell {
            BackfillCell {
                file,
                arm: self.arm(banner, city),
                bucket,
                counts: Counts::new(imp, imp / 2),
            }
        }
    }

    fn written(totals: &mut ShardTotals, bad: &[u32]) -> Vec<Vec<ShardWrite>> {
        let cells = totals.finish(&bad.iter().copied().collect());
        let mut groups = Vec::new();
        totals.write_in_groups(&cells, |g| groups.push(g));
        groups
    }

    fn rows(groups: &[Vec<ShardWrite>]) -> Vec<(ShardKey, String, i64, Counts)> {
        groups
            .iter()
            .flatten()
            .flat_map(|w| {
                w.rows
                    .iter()
                    .map(|(k, c)| (w.shard.clone(), k.arm.banner.clone(), k.bucket, *c))
            })
            .collect()
    }

    #[test]
    fn cells_of_one_arm_and_bucket_are_summed_and_folded_ones_count_only_all_time() {
        let mut totals = ShardTotals::default();
        let mut reader = Reader::default();
        let mut cell = |f, b, c, bucket, imp| reader.cell(f, b, c, bucket, imp);
        for c in [
            cell(0, "b1", "pune", Some(10), 4),
            cell(1, "b1", "pune", Some(10), 6),
            cell(0, "b1", "pune", None, 20),
            cell(0, "b1", "pune", Some(11), 2),
            cell(0, "b2", "delhi", Some(10), 8),
        ] {
            totals.add(c).unwrap();
        }
        let groups = written(&mut totals, &[]);
        assert_eq!(groups.len(), 1);
        let delhi = ShardKey::new("t1", "delhi");
        let pune = ShardKey::new("t1", "pune");
        assert_eq!(
            rows(&groups),
            vec![
                (delhi.clone(), "b2".into(), 10, Counts::new(8, 4)),
                (delhi, "b2".into(), ALL_TIME, Counts::new(8, 4)),
                (pune.clone(), "b1".into(), 10, Counts::new(10, 5)),
                (pune.clone(), "b1".into(), 11, Counts::new(2, 1)),
                (pune, "b1".into(), ALL_TIME, Counts::new(32, 16)),
            ]
        );
    }

    #[test]
    fn a_bad_file_takes_back_every_count_it_contributed() {
        let mut totals = ShardTotals::default();
        let mut reader = Reader::default();
        let mut cell = |f, b, c, bucket, imp| reader.cell(f, b, c, bucket, imp);
        for c in [
            cell(0, "b1", "pune", Some(10), 4),
            cell(1, "b1", "pune", Some(10), 6),
            cell(1, "b1", "pune", None, 6),
            cell(1, "b2", "pune", Some(12), 6),
        ] {
            totals.add(c).unwrap();
        }
        let pune = ShardKey::new("t1", "pune");
        assert_eq!(
            rows(&written(&mut totals, &[1])),
            vec![
                (pune.clone(), "b1".into(), 10, Counts::new(4, 2)),
                (pune, "b1".into(), ALL_TIME, Counts::new(4, 2)),
            ]
        );
    }

    #[test]
    fn a_bucket_outside_the_cells_range_is_refused() {
        let mut totals = ShardTotals::default();
        let mut reader = Reader::default();
        for bucket in [-5, i64::from(u32::MAX), i64::MAX] {
            let e = totals
                .add(reader.cell(0, "b1", "pune", Some(bucket), 1))
                .unwrap_err();
            assert!(e.to_string().contains(&format!("bucket {bucket}")), "{e}");
        }
    }

    proptest::proptest! {
        /// In any order of asking, sorted passes or not, an arm keeps the number it was first
        /// given, and only its first sending carries its names.
        #[test]
        fn a_reader_numbers_each_arm_once_however_it_is_asked(
            passes in proptest::collection::vec(
                (
                    proptest::collection::vec([0u32..3, 0u32..2, 0u32..20, 0u32..9], 0..200),
                    proptest::bool::ANY,
                ),
                1..8,
            ),
        ) {
            let mut sent = SentArms::new(1);
            let mut numbers: FxHashMap<ArmIds, u32> = FxHashMap::default();
            for (mut ids, sorted) in passes {
                if sorted {
                    ids.sort();
                }
                for ids in ids {
                    let [tenant, slot, city, banner] = [("t", 0), ("s", 1), ("c", 2), ("b", 3)]
                        .map(|(prefix, i)| format!("{prefix}{}", ids[i]));
                    let arm = sent.arm(packed_ids(ids), || {
                        PackedArm::new(&tenant, &slot, &city, &banner)
                    });
                    proptest::prop_assert_eq!(arm.reader, 1);
                    let next = numbers.len() as u32;
                    let number = *numbers.entry(ids).or_insert(next);
                    proptest::prop_assert_eq!(arm.number, number);
                    proptest::prop_assert_eq!(arm.names.is_some(), number == next);
                    let shard_hash = crate::model::shard_hash(&tenant, &city);
                    proptest::prop_assert_eq!(arm.shard_hash, shard_hash);
                }
            }
        }
    }

    proptest::proptest! {
        /// However pushes, merges and appended vectors interleave, the merged cells are the
        /// recount: sorted by (arm, bucket), each key once with its sum.
        #[test]
        fn merged_cells_are_the_sums_of_what_was_pushed(
            parts in proptest::collection::vec(
                proptest::collection::vec(
                    (0u32..40, 0u32..6, 0u64..1000, proptest::bool::ANY),
                    0..300,
                ),
                1..4,
            ),
        ) {
            let mut expected: std::collections::BTreeMap<u64, Counts> = Default::default();
            let mut all = Cells::default();
            for (n, part) in parts.iter().enumerate() {
                let mut cells = Cells::default();
                for &(arm, bucket, imp, merge_now) in part {
                    let cell = Cell { arm, bucket, counts: Counts::new(imp, imp / 3) };
                    let sum = expected.entry(cell.key()).or_insert(Counts::ZERO);
                    *sum = sum.saturating_add(cell.counts);
                    cells.push(cell);
                    if merge_now {
                        cells.merge();
                    }
                }
                if n == 0 {
                    all = cells;
                } else {
                    all.extend(cells);
                }
            }
            all.merge();
            let got: Vec<(u64, Counts)> =
                all.cells.iter().map(|c| (c.key(), c.counts)).collect();
            let want: Vec<(u64, Counts)> = expected.into_iter().collect();
            proptest::prop_assert_eq!(got, want);
            proptest::prop_assert_eq!(all.sorted, all.cells.len());
        }
    }

    #[test]
    fn many_cells_merge_as_they_grow_and_are_written_in_bounded_groups_of_whole_arms() {
        let mut totals = ShardTotals::default();
        let mut reader = Reader::default();
        let (arms, buckets) = (3_000u32, 60i64);
        for round in 0..2 {
            for arm in 0..arms {
                for bucket in 0..buckets {
                    let city = format!("c{}", arm % 7);
                    totals
                        .add(reader.cell(round, &format!("b{arm}"), &city, Some(bucket), 2))
                        .unwrap();
                }
            }
        }
        let groups = written(&mut totals, &[]);
        assert!(groups.len() > 1);
        for group in &groups {
            let rows: usize = group.iter().map(|w| w.rows.len()).sum();
            assert!(rows < WRITE_ROWS + buckets as usize + 1, "{rows}");
        }
        let rows = rows(&groups);
        assert_eq!(rows.len(), arms as usize * (buckets as usize + 1));
        assert!(rows.iter().all(|(_, _, b, c)| *c
            == if *b == ALL_TIME {
                Counts::new(240, 120)
            } else {
                Counts::new(4, 2)
            }));
        // Shards come in order, each arm's rows together.
        let shards: Vec<&ShardKey> = rows.iter().map(|r| &r.0).collect();
        assert!(shards.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn arms_numbered_by_several_readers_meet_even_when_their_names_come_after_their_cells() {
        let mut totals = ShardTotals::default();
        let (mut first, mut second) = (Reader::default(), Reader::numbered(1));
        // The second reader numbers b2 0 and b1 1; the first, b1 0.
        let b2_named = second.cell(0, "b2", "pune", Some(10), 2);
        let b1_named = second.cell(0, "b1", "pune", Some(10), 4);
        let b1_again = second.cell(0, "b1", "pune", Some(11), 6);
        totals
            .add(first.cell(0, "b1", "pune", Some(10), 8))
            .unwrap();
        totals.add(b1_again).unwrap();
        totals.add(b2_named).unwrap();
        assert_eq!(totals.unnamed.len(), 1);
        totals.add(b1_named).unwrap();
        totals.add_unnamed().unwrap();
        let pune = ShardKey::new("t1", "pune");
        let mut rows = rows(&written(&mut totals, &[]));
        rows.sort_by(|a, b| (&a.1, a.2).cmp(&(&b.1, b.2)));
        assert_eq!(
            rows,
            vec![
                (pune.clone(), "b1".into(), ALL_TIME, Counts::new(18, 9)),
                (pune.clone(), "b1".into(), 10, Counts::new(12, 6)),
                (pune.clone(), "b1".into(), 11, Counts::new(6, 3)),
                (pune.clone(), "b2".into(), ALL_TIME, Counts::new(2, 1)),
                (pune, "b2".into(), 10, Counts::new(2, 1)),
            ]
        );
    }

    #[test]
    fn a_cell_whose_arm_is_never_named_fails_the_job() {
        let mut totals = ShardTotals::default();
        let mut reader = Reader::default();
        reader.cell(0, "b1", "pune", Some(10), 1);
        totals
            .add(reader.cell(0, "b1", "pune", Some(11), 1))
            .unwrap();
        let e = totals.add_unnamed().unwrap_err();
        assert!(e.to_string().contains("without ever naming it"), "{e}");
    }
}
