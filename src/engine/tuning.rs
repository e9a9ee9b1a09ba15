//! Tuning keys (SPEC §8): the kind of batch a verdict belongs to, and the bounded table
//! of a kernel's keys.
//!
//! A batch's key is its *size class* — the bytes of its input (or of a pair's buffers)
//! rounded up to a power of two, everything up to [`MIN_SIZE_CLASS_BYTES`] one class —
//! and an optional application key ([`Batch::with_tuning_key`](crate::Batch::with_tuning_key)).
//!
//! [`KeyTable`] holds a kernel's per-key state. Lookups are lock-free reads of a
//! snapshot (a [`SwapCell`]); a new key is added under a writers' lock, which re-reads
//! the snapshot first, so two workers meeting one new key at once get one state (loom:
//! `loom-tests/tests/tuning_keys.rs`). The table is bounded: adding a key to a full
//! table forgets the least recently used one in memory (its verdict stays in the
//! store). "Recently" is coarse on purpose: a lookup writes its entry's stamp only when
//! the table's clock moved since that entry was last stamped, and the clock moves only
//! when a key is added — so a hot key's lookups write nothing shared, and the key
//! forgotten is one not looked up since the most keys were added.

use std::fmt;
use std::sync::Arc;

use crate::sync::{AtomicU64, Mutex, Ordering, SwapCell};

/// The smallest size class: every batch of at most this many bytes is in it.
pub const MIN_SIZE_CLASS_BYTES: u64 = 4096;

/// The most keys a kernel keeps in memory by default
/// ([`EngineBuilder::max_keys_per_kernel`](crate::EngineBuilder::max_keys_per_kernel)).
pub const DEFAULT_MAX_KEYS_PER_KERNEL: usize = 64;

const MIN_CLASS_LOG2: u8 = MIN_SIZE_CLASS_BYTES.trailing_zeros() as u8;

/// The kind of batch a verdict belongs to: a size class and an optional application
/// key. `Display`s as `64KiB` or `64KiB/app:7`.
///
/// Keys order by application key, then size class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TuningKey {
    app: Option<u64>,
    class_log2: u8,
}

impl TuningKey {
    /// The key of a batch of `bytes` bytes with application key `app`: the size class
    /// is `bytes` rounded up to a power of two, at least [`MIN_SIZE_CLASS_BYTES`] (and
    /// at most 2^63).
    pub fn for_bytes(bytes: u64, app: Option<u64>) -> Self {
        let class_log2 = match bytes.checked_next_power_of_two() {
            Some(p) => (p.trailing_zeros() as u8).max(MIN_CLASS_LOG2),
            None => 63,
        };
        TuningKey { app, class_log2 }
    }

    /// The size class in bytes (a power of two, at least [`MIN_SIZE_CLASS_BYTES`]).
    pub fn size_class_bytes(&self) -> u64 {
        1 << self.class_log2
    }

    /// log2 of the size class.
    pub(crate) fn class_log2(&self) -> u8 {
        self.class_log2
    }

    /// The key of the same application key `step` size classes up (down when
    /// negative); `None` past the smallest class or 2^63.
    pub(crate) fn stepped(&self, step: i8) -> Option<TuningKey> {
        let class_log2 = i16::from(self.class_log2) + i16::from(step);
        let class_log2 = u8::try_from(class_log2).ok()?;
        (MIN_CLASS_LOG2..=63)
            .contains(&class_log2)
            .then_some(TuningKey {
                app: self.app,
                class_log2,
            })
    }

    /// The application key, if the batch carried one.
    pub fn app_key(&self) -> Option<u64> {
        self.app
    }

    /// How many size classes apart two keys with the same application key are; `None`
    /// when their application keys differ (no verdict transfers between them).
    pub fn distance(&self, other: &TuningKey) -> Option<u32> {
        (self.app == other.app).then(|| u32::from(self.class_log2.abs_diff(other.class_log2)))
    }

    /// A stable, non-zero 64-bit name of the key: the `spec_hash` of its entries in
    /// the autotune store (0 is the kernel-wide entry of files before tuning keys).
    pub fn hash64(&self) -> u64 {
        const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
        let (flag, app) = match self.app {
            Some(app) => (1u8, app),
            None => (0, 0),
        };
        let bytes = [self.class_log2, flag].into_iter().chain(app.to_le_bytes());
        let hash = bytes.fold(FNV_OFFSET, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
        });
        hash.max(1)
    }
}

impl fmt::Display for TuningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let log2 = self.class_log2;
        let (value, unit) = match log2 {
            0..=19 => (1u64 << (log2 - 10), "KiB"),
            20..=29 => (1 << (log2 - 20), "MiB"),
            30..=39 => (1 << (log2 - 30), "GiB"),
            _ => (1 << (log2 - 40), "TiB"),
        };
        write!(f, "{value}{unit}")?;
        if let Some(app) = self.app {
            write!(f, "/app:{app}")?;
        }
        Ok(())
    }
}

/// One key of a [`KeyTable`]: its state and when it was last looked up.
#[derive(Debug)]
pub struct Entry<V> {
    key: TuningKey,
    stamp: AtomicU64,
    value: Arc<V>,
}

impl<V> Entry<V> {
    /// The key.
    pub fn key(&self) -> TuningKey {
        self.key
    }

    /// The key's state.
    pub fn value(&self) -> &Arc<V> {
        &self.value
    }
}

/// A kernel's per-key states, bounded, least recently used forgotten first.
#[derive(Debug)]
pub struct KeyTable<V> {
    entries: SwapCell<Vec<Arc<Entry<V>>>>,
    writers: Mutex<()>,
    clock: AtomicU64,
    capacity: usize,
}

impl<V> KeyTable<V> {
    /// An empty table holding at most `capacity` keys (at least one).
    pub fn new(capacity: usize) -> Self {
        KeyTable {
            entries: SwapCell::new(Arc::new(Vec::new())),
            writers: Mutex::new(()),
            clock: AtomicU64::new(0),
            capacity: capacity.max(1),
        }
    }

    /// The state of `key` when the table holds it (a lock-free read).
    pub fn get(&self, key: &TuningKey) -> Option<Arc<V>> {
        self.entries.read(|entries| {
            let entry = entries.iter().find(|e| e.key == *key)?;
            self.touch(entry);
            Some(Arc::clone(&entry.value))
        })
    }

    /// The state of `key`, made by `make` when the table does not hold it. `make` sees
    /// the table's other entries (to start from a neighbour's verdict) and runs once
    /// per added key, under the writers' lock, so it must not look the table up. The
    /// second value is the entry forgotten to make room, if any.
    pub fn get_or_insert(
        &self,
        key: TuningKey,
        make: impl FnOnce(&[Arc<Entry<V>>]) -> V,
    ) -> (Arc<V>, Option<Arc<Entry<V>>>) {
        if let Some(found) = self.get(&key) {
            return (found, None);
        }
        let _one_writer = self.writers.lock().unwrap_or_else(|p| p.into_inner());
        let entries = self.entries.load();
        if let Some(entry) = entries.iter().find(|e| e.key == key) {
            return (Arc::clone(&entry.value), None);
        }
        let value = Arc::new(make(&entries));
        // The new entry is stamped one tick before the clock: a key looked up after
        // this insertion is more recent than this one until this one is looked up.
        let now = self.clock.fetch_add(2, Ordering::AcqRel) + 1;
        let mut next = Vec::with_capacity(entries.len() + 1);
        let mut evicted = None;
        if entries.len() >= self.capacity {
            let oldest = entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.stamp.load(Ordering::Acquire))
                .map(|(i, _)| i);
            for (i, entry) in entries.iter().enumerate() {
                if Some(i) == oldest {
                    evicted = Some(Arc::clone(entry));
                } else {
                    next.push(Arc::clone(entry));
                }
            }
        } else {
            next.extend(entries.iter().cloned());
        }
        next.push(Arc::new(Entry {
            key,
            stamp: AtomicU64::new(now),
            value: Arc::clone(&value),
        }));
        self.entries.store(Arc::new(next));
        (value, evicted)
    }

    /// Every entry, in the order they were added (a snapshot).
    pub fn entries(&self) -> Arc<Vec<Arc<Entry<V>>>> {
        self.entries.load()
    }

    /// The most keys the table holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Keys held now.
    #[cfg(any(test, photofinish_loom))]
    pub fn len(&self) -> usize {
        self.entries.read(Vec::len)
    }

    /// True when no key is held.
    #[cfg(photofinish_loom)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stamps `entry` with the clock when the clock moved since its last stamp (a read
    /// otherwise: see the module docs).
    fn touch(&self, entry: &Entry<V>) {
        let now = self.clock.load(Ordering::Acquire);
        if entry.stamp.load(Ordering::Relaxed) != now {
            entry.stamp.store(now, Ordering::Release);
        }
    }
}

#[cfg(all(test, not(photofinish_loom)))]
mod tests {
    use super::*;

    #[test]
    fn size_classes_round_up_to_powers_of_two_from_four_kib() {
        for (bytes, class) in [
            (0, 4096),
            (1, 4096),
            (4096, 4096),
            (4097, 8192),
            (256 << 10, 256 << 10),
            ((8 << 20) - 3, 8 << 20),
            (u64::MAX, 1 << 63),
        ] {
            assert_eq!(TuningKey::for_bytes(bytes, None).size_class_bytes(), class);
        }
    }

    #[test]
    fn keys_display_as_the_spec_writes_them() {
        assert_eq!(TuningKey::for_bytes(100, None).to_string(), "4KiB");
        assert_eq!(
            TuningKey::for_bytes(64 << 10, Some(7)).to_string(),
            "64KiB/app:7"
        );
        assert_eq!(TuningKey::for_bytes(8 << 20, None).to_string(), "8MiB");
        assert_eq!(TuningKey::for_bytes(3 << 30, None).to_string(), "4GiB");
    }

    #[test]
    fn hashes_differ_by_class_and_app_key_and_are_never_zero() {
        let keys = [
            TuningKey::for_bytes(4096, None),
            TuningKey::for_bytes(8192, None),
            TuningKey::for_bytes(4096, Some(0)),
            TuningKey::for_bytes(4096, Some(1)),
        ];
        for (i, a) in keys.iter().enumerate() {
            assert_ne!(a.hash64(), 0);
            for b in &keys[i + 1..] {
                assert_ne!(a.hash64(), b.hash64(), "{a} and {b}");
            }
        }
    }

    #[test]
    fn distance_counts_classes_only_between_equal_app_keys() {
        let small = TuningKey::for_bytes(4096, None);
        let large = TuningKey::for_bytes(8 << 20, None);
        assert_eq!(small.distance(&large), Some(11));
        assert_eq!(small.distance(&TuningKey::for_bytes(4096, Some(3))), None);
    }

    #[test]
    fn a_full_table_forgets_the_key_least_recently_used() {
        let table = KeyTable::new(2);
        let key = |kib: u64| TuningKey::for_bytes(kib << 10, None);
        let (_, gone) = table.get_or_insert(key(4), |_| 4);
        assert!(gone.is_none());
        table.get_or_insert(key(8), |_| 8);
        // 4 KiB looked up after 8 KiB was added: 8 KiB is now the least recent.
        assert_eq!(table.get(&key(4)).as_deref(), Some(&4));
        let (_, gone) = table.get_or_insert(key(16), |others| {
            assert_eq!(others.len(), 2);
            16
        });
        assert_eq!(gone.map(|e| e.key()), Some(key(8)));
        assert_eq!(table.len(), 2);
        assert!(table.get(&key(8)).is_none());
        let (again, _) = table.get_or_insert(key(16), |_| unreachable!("held"));
        assert_eq!(*again, 16);
    }
}
