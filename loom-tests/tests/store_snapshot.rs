//! loom model of the autotune store's snapshot publication (`AutotuneStore::publish` /
//! `snapshot`), run on the crate's own code: under `photofinish_loom` the store's map and
//! its published cell are the loom-visible stand-ins `SharedMap` / `SwapCell` of
//! `src/sync.rs`, and its publisher lock is loom's `Mutex`.
//!
//! What must hold in every interleaving (at the preemption bound `scripts/loom` sets):
//! - a reader never sees the published generation go backwards;
//! - a snapshot never misses a `put` that happened-before the `publish` that made it;
//! - a snapshot of generation `g` holds at least the puts of the first `g` publishers
//!   (publishers are serialised, so the last one holds everything put before it).
//!
//! `naive_publication_goes_backwards` runs the same reader against a copy of the design
//! without the publisher lock (generation taken from an atomic counter, snapshot stored
//! afterwards) and must fail: it shows the model can catch the race the lock prevents.
#![cfg(photofinish_loom)]

use std::collections::HashMap;

use loom::sync::atomic::{AtomicU64, Ordering};
use loom::sync::{Arc, Mutex};
use loom::thread;
use photofinish::autotune::{
    AutotuneKey, AutotuneRecord, AutotuneSnapshot, AutotuneStore, SpecCacheKey,
};

fn key(shader_hash: u64) -> AutotuneKey {
    let cache_key = SpecCacheKey {
        shader_hash,
        binding_sig: 0,
        workgroup_size: [64, 1, 1],
        spec_hash: 0,
    };
    AutotuneKey::new(&cache_key, "loom")
}

fn record(unroll: u32) -> AutotuneRecord {
    AutotuneRecord {
        workgroup_size: [64, 1, 1],
        unroll,
        tile: [1, 1, 1],
        recorded_at: String::new(),
    }
}

/// The invariants every snapshot must meet, whoever produced it.
fn check(snapshot: &AutotuneSnapshot) {
    let g = snapshot.generation;
    assert!(g <= 2, "only two publishes ran, saw generation {g}");
    // Each publisher puts before it publishes, and publishers are serialised: the
    // generation-g snapshot was taken after at least g puts had returned.
    assert!(
        snapshot.len() as u64 >= g,
        "generation {g} holds only {} entries",
        snapshot.len()
    );
}

/// One publisher puts then publishes; the main thread reads twice while it runs.
#[test]
fn reader_sees_generations_in_order_and_every_put_before_the_publish() {
    loom::model(|| {
        let store = Arc::new(AutotuneStore::default());
        let writer = {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                store.put(key(1), record(4));
                let published = store.publish();
                assert_eq!(published.generation, 1);
                assert_eq!(published.get(&key(1)).map(|r| r.unroll), Some(4));
            })
        };
        let first = store.snapshot();
        let second = store.snapshot();
        check(&first);
        check(&second);
        assert!(first.generation <= second.generation);
        if second.generation == 1 {
            assert_eq!(second.get(&key(1)).map(|r| r.unroll), Some(4));
        }
        writer.join().expect("the writer thread does not panic");
        let last = store.snapshot();
        assert_eq!(last.generation, 1);
        assert_eq!(last.get(&key(1)).map(|r| r.unroll), Some(4));
    });
}

/// Two publishers, each putting its own key; a reader between them. The last
/// generation holds both keys; each publish holds its own put.
#[test]
fn concurrent_publishers_land_in_order_and_the_last_holds_everything() {
    loom::model(|| {
        let store = Arc::new(AutotuneStore::default());
        let publishers: Vec<_> = [1u64, 2]
            .into_iter()
            .map(|shader| {
                let store = Arc::clone(&store);
                thread::spawn(move || {
                    store.put(key(shader), record(shader as u32));
                    let published = store.publish();
                    assert!(published.get(&key(shader)).is_some());
                    check(&published);
                    published.generation
                })
            })
            .collect();
        let seen = store.snapshot();
        check(&seen);
        let mut generations: Vec<u64> = publishers
            .into_iter()
            .map(|p| p.join().expect("publishers do not panic"))
            .collect();
        generations.sort_unstable();
        assert_eq!(generations, [1, 2], "each publish gets its own generation");
        let last = store.snapshot();
        assert!(seen.generation <= last.generation);
        assert_eq!(last.generation, 2);
        assert!(last.get(&key(1)).is_some() && last.get(&key(2)).is_some());
    });
}

/// A copy of the publication without the publisher lock: the generation comes from an
/// atomic counter and the snapshot is stored after it is built. Correct alone, racy
/// with two publishers: the later generation can be overwritten by the earlier one.
#[derive(Default)]
struct NaiveStore {
    entries: Mutex<HashMap<u64, u32>>,
    counter: AtomicU64,
    published: Mutex<std::sync::Arc<(u64, usize)>>,
}

impl NaiveStore {
    fn publish(&self) {
        let generation = self.counter.fetch_add(1, Ordering::AcqRel) + 1;
        let len = self.entries.lock().expect("no panics while held").len();
        *self.published.lock().expect("no panics while held") =
            std::sync::Arc::new((generation, len));
    }

    fn generation(&self) -> u64 {
        self.published.lock().expect("no panics while held").0
    }
}

#[test]
#[should_panic(expected = "generation went backwards")]
fn naive_publication_goes_backwards() {
    loom::model(|| {
        let store = Arc::new(NaiveStore::default());
        let publishers: Vec<_> = [1u64, 2]
            .into_iter()
            .map(|shader| {
                let store = Arc::clone(&store);
                thread::spawn(move || {
                    store.entries.lock().expect("unpoisoned").insert(shader, 1);
                    store.publish();
                })
            })
            .collect();
        for p in publishers {
            p.join().expect("publishers do not panic");
        }
        // Both publishes are done: the published generation must be the newest.
        assert!(store.generation() == 2, "generation went backwards");
    });
}
