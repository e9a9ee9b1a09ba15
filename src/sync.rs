//! The one place the crate takes its synchronisation primitives from.
//!
//! Under `--cfg photofinish_loom` the atomics, `Arc`, `Mutex` and `Condvar` are loom's,
//! so the loom models in `loom-tests/` explore every interleaving of the protocols built
//! on them. loom cannot see inside crossbeam-channel, dashmap or arc-swap; protocols that
//! need to be modelled use the stand-ins below instead of those crates under loom.
//! This module must never hold logic of its own beyond such stand-ins.
#![allow(unused_imports, dead_code, unreachable_pub)]

#[cfg(not(photofinish_loom))]
pub(crate) use std::sync::{
    atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
    Arc, Condvar, Mutex, MutexGuard,
};

#[cfg(photofinish_loom)]
pub(crate) use loom::sync::{
    atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
    Arc, Condvar, Mutex, MutexGuard,
};

/// A cell shared between threads under a protocol that gives one of them access at a
/// time: std's `UnsafeCell` normally, loom's (which checks that the protocol does)
/// under the models. Only `with_mut`, loom's way in.
#[cfg(not(photofinish_loom))]
#[derive(Debug, Default)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(photofinish_loom))]
impl<T> UnsafeCell<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(std::cell::UnsafeCell::new(value))
    }

    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

#[cfg(photofinish_loom)]
pub(crate) use loom::cell::UnsafeCell;

/// Spawns a thread: a real OS thread normally, a loom thread under the model.
#[cfg(not(photofinish_loom))]
pub(crate) use std::thread;

#[cfg(photofinish_loom)]
pub(crate) use loom::thread;

/// A concurrent hash map with the few operations the crate needs: dashmap normally, a
/// `Mutex<HashMap>` under loom (which cannot see inside dashmap). Values are cloned out,
/// so no caller ever holds a shard lock.
#[cfg(not(photofinish_loom))]
#[derive(Debug)]
pub(crate) struct SharedMap<K: Eq + std::hash::Hash, V>(dashmap::DashMap<K, V>);

#[cfg(not(photofinish_loom))]
impl<K: std::hash::Hash + Eq + Clone, V: Clone> SharedMap<K, V> {
    /// An empty map.
    pub(crate) fn new() -> Self {
        Self(dashmap::DashMap::new())
    }

    /// Inserts, returning the previous value.
    pub(crate) fn insert(&self, key: K, value: V) -> Option<V> {
        self.0.insert(key, value)
    }

    /// A clone of the value under `key`.
    pub(crate) fn get_cloned(&self, key: &K) -> Option<V> {
        self.0.get(key).map(|v| v.value().clone())
    }

    /// Runs `f` on the value under `key` in place; false when there is none.
    pub(crate) fn update(&self, key: &K, f: impl FnOnce(&mut V)) -> bool {
        match self.0.get_mut(key) {
            Some(mut v) => {
                f(v.value_mut());
                true
            }
            None => false,
        }
    }

    /// How many entries.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// A clone of every entry. This is not one atomic cut across dashmap's shards: each
    /// entry is a value it really held, and an insert that returned before the call
    /// began is always included.
    pub(crate) fn cloned_entries(&self) -> Vec<(K, V)> {
        self.0
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect()
    }
}

/// The loom stand-in for [`SharedMap`]: one loom-visible mutex around a `HashMap`.
#[cfg(photofinish_loom)]
#[derive(Debug)]
pub(crate) struct SharedMap<K, V>(Mutex<std::collections::HashMap<K, V>>);

#[cfg(photofinish_loom)]
impl<K: std::hash::Hash + Eq + Clone, V: Clone> SharedMap<K, V> {
    pub(crate) fn new() -> Self {
        Self(Mutex::new(std::collections::HashMap::new()))
    }

    fn locked(&self) -> MutexGuard<'_, std::collections::HashMap<K, V>> {
        // Poison only means another model thread panicked; every operation below is a
        // single HashMap call, so the map is still consistent.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn insert(&self, key: K, value: V) -> Option<V> {
        self.locked().insert(key, value)
    }

    pub(crate) fn get_cloned(&self, key: &K) -> Option<V> {
        self.locked().get(key).cloned()
    }

    pub(crate) fn update(&self, key: &K, f: impl FnOnce(&mut V)) -> bool {
        self.locked().get_mut(key).map(f).is_some()
    }

    pub(crate) fn len(&self) -> usize {
        self.locked().len()
    }

    pub(crate) fn cloned_entries(&self) -> Vec<(K, V)> {
        self.locked()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// `n` (at least one) zeroed atomic words, each on cache lines of its own: per-queue and
/// per-thread counters that would otherwise share a line among all their writers.
pub(crate) fn padded_words(n: usize) -> Box<[crossbeam_utils::CachePadded<AtomicU64>]> {
    (0..n.max(1))
        .map(|_| crossbeam_utils::CachePadded::new(AtomicU64::new(0)))
        .collect()
}

/// An atomically replaceable `Arc<T>`: arc-swap normally. The `Arc` handed out is always
/// std's, so readers may keep it as long as they like without blocking a writer.
#[cfg(not(photofinish_loom))]
#[derive(Debug)]
pub(crate) struct SwapCell<T>(arc_swap::ArcSwap<T>);

#[cfg(not(photofinish_loom))]
impl<T> SwapCell<T> {
    /// A cell holding `value`.
    pub(crate) fn new(value: std::sync::Arc<T>) -> Self {
        Self(arc_swap::ArcSwap::new(value))
    }

    /// The value published last.
    pub(crate) fn load(&self) -> std::sync::Arc<T> {
        self.0.load_full()
    }

    /// `f` of the value published last, without taking a count on its `Arc` (a
    /// count every reader would write): for short reads on hot paths.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.0.load())
    }

    /// Publishes `value`.
    pub(crate) fn store(&self, value: std::sync::Arc<T>) {
        self.0.store(value)
    }
}

/// The loom stand-in for [`SwapCell`]: a loom-visible `Mutex<Arc<T>>`.
#[cfg(photofinish_loom)]
#[derive(Debug)]
pub(crate) struct SwapCell<T>(Mutex<std::sync::Arc<T>>);

#[cfg(photofinish_loom)]
impl<T> SwapCell<T> {
    pub(crate) fn new(value: std::sync::Arc<T>) -> Self {
        Self(Mutex::new(value))
    }

    pub(crate) fn load(&self) -> std::sync::Arc<T> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub(crate) fn store(&self, value: std::sync::Arc<T>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = value;
    }
}

/// Channels: crossbeam normally (the event bus's per-subscriber channels).
#[cfg(not(photofinish_loom))]
pub(crate) mod channel {
    pub(crate) use crossbeam_channel::{bounded, unbounded, Receiver, Sender, TrySendError};
}

/// The loom stand-in for a crossbeam channel: a loom-visible
/// `Mutex<VecDeque>` with a capacity, and a flag the receiver clears when dropped. Only
/// the non-blocking operations the event bus uses exist.
#[cfg(photofinish_loom)]
pub mod channel {
    use super::{Arc, AtomicBool, Mutex, Ordering};
    use std::collections::VecDeque;
    use std::fmt;

    struct Chan<T> {
        queue: Mutex<VecDeque<T>>,
        capacity: usize,
        receiver_alive: AtomicBool,
    }

    /// The sending half.
    pub struct Sender<T>(Arc<Chan<T>>);

    /// The receiving half.
    pub struct Receiver<T>(Arc<Chan<T>>);

    /// Why `try_send` gave the value back.
    #[derive(Debug)]
    pub enum TrySendError<T> {
        /// The channel holds `capacity` values.
        Full(T),
        /// The receiver is gone.
        Disconnected(T),
    }

    /// A channel of `capacity` values.
    pub fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
        let chan = Arc::new(Chan {
            queue: Mutex::new(VecDeque::new()),
            capacity,
            receiver_alive: AtomicBool::new(true),
        });
        (Sender(Arc::clone(&chan)), Receiver(chan))
    }

    /// A channel without a bound.
    pub fn unbounded<T>() -> (Sender<T>, Receiver<T>) {
        bounded(usize::MAX)
    }

    impl<T> Sender<T> {
        /// Queues `value` unless the channel is full or its receiver gone.
        pub fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
            if !self.0.receiver_alive.load(Ordering::Acquire) {
                return Err(TrySendError::Disconnected(value));
            }
            let mut queue = self.0.queue.lock().unwrap_or_else(|e| e.into_inner());
            if queue.len() >= self.0.capacity {
                return Err(TrySendError::Full(value));
            }
            queue.push_back(value);
            Ok(())
        }

        /// Values queued now.
        pub fn len(&self) -> usize {
            self.0.queue.lock().unwrap_or_else(|e| e.into_inner()).len()
        }
    }

    impl<T> Receiver<T> {
        /// The oldest queued value, if any.
        pub fn try_recv(&self) -> Option<T> {
            self.0
                .queue
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front()
        }
    }

    impl<T> Drop for Receiver<T> {
        fn drop(&mut self) {
            self.0.receiver_alive.store(false, Ordering::Release);
        }
    }

    impl<T> fmt::Debug for Sender<T> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("Sender").finish_non_exhaustive()
        }
    }

    impl<T> fmt::Debug for Receiver<T> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("Receiver").finish_non_exhaustive()
        }
    }
}
