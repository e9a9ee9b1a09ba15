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
    atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
    Arc, Condvar, Mutex, MutexGuard,
};

#[cfg(photofinish_loom)]
pub(crate) use loom::sync::{
    atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
    Arc, Condvar, Mutex, MutexGuard,
};

/// Spawns a thread: a real OS thread normally, a loom thread under the model.
#[cfg(not(photofinish_loom))]
pub(crate) use std::thread;

#[cfg(photofinish_loom)]
pub(crate) use loom::thread;
