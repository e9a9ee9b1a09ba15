//! Who else dispatches on a device while a race runs.
//!
//! A race's two arm times are only as clean as the device was quiet: on an H200 an
//! 11 µs arm measured 1.4 ms while a 35 ms global-atomics histogram ran on another
//! queue, and two such samples swung a window of means into rejecting a 3.7× faster
//! variant. Every backend call goes through a [`DeviceLoad`] watch, so a race knows
//! afterwards whether any other call ran on its device at some moment during its own
//! (see `registry::ArmHistory` for what it does with a contended sample).
//!
//! The protocol: one atomic word per device holds the number of calls begun (high 32
//! bits, wrapping) and the number running (low 32 bits). `begin` adds one to both and
//! keeps what it saw; `finish` subtracts one from the running count and sees how many
//! began since. Each side is a single read-modify-write, so of two calls either one
//! finished before the other began — and neither reports contention — or they
//! overlapped and both do (loom model: `loom-tests/tests/contention.rs`).

use crate::sync::{AtomicU64, Ordering};

/// One call begun, in the high half of the word.
const BEGUN: u64 = 1 << 32;
/// One call running, in the low half.
const RUNNING: u64 = 1;

/// The backend calls in progress on one device.
#[derive(Debug)]
pub struct DeviceLoad {
    /// Calls begun so far (high 32 bits, wrapping) and calls running now (low 32).
    word: AtomicU64,
}

impl DeviceLoad {
    /// An empty load.
    pub fn new() -> Self {
        DeviceLoad {
            word: AtomicU64::new(0),
        }
    }

    /// Counts a backend call in until the watch finishes or drops (a panicking call
    /// is counted out by the drop).
    pub fn begin(&self) -> Watch<'_> {
        let seen = self.word.fetch_add(BEGUN + RUNNING, Ordering::AcqRel);
        Watch {
            load: self,
            ticket: begun(seen),
            others: running(seen),
            finished: false,
        }
    }

    /// Calls running now.
    pub fn active(&self) -> u32 {
        running(self.word.load(Ordering::Acquire))
    }
}

impl Default for DeviceLoad {
    fn default() -> Self {
        Self::new()
    }
}

fn begun(word: u64) -> u32 {
    (word >> 32) as u32
}

fn running(word: u64) -> u32 {
    word as u32
}

/// One backend call on a device, counted in until it finishes.
#[derive(Debug)]
pub struct Watch<'a> {
    load: &'a DeviceLoad,
    /// Calls begun before this one.
    ticket: u32,
    /// Calls running when this one began.
    others: u32,
    finished: bool,
}

impl Watch<'_> {
    /// Counts the call out; true when another call ran on the device at some moment
    /// while this one did.
    pub fn finish(mut self) -> bool {
        self.finished = true;
        let seen = self.load.word.fetch_sub(RUNNING, Ordering::AcqRel);
        self.others > 0 || begun(seen) != self.ticket.wrapping_add(1)
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.load.word.fetch_sub(RUNNING, Ordering::AcqRel);
        }
    }
}

#[cfg(all(test, not(photofinish_loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_call_alone_is_not_contended() {
        let load = DeviceLoad::new();
        assert!(!load.begin().finish());
        assert!(
            !load.begin().finish(),
            "an earlier, finished call is no contention"
        );
        assert_eq!(load.active(), 0);
    }

    #[test]
    fn overlapping_calls_both_see_each_other() {
        let load = DeviceLoad::new();
        let first = load.begin();
        let second = load.begin();
        assert_eq!(load.active(), 2);
        assert!(first.finish(), "a call began while the first ran");
        assert!(
            second.finish(),
            "the first was running when the second began"
        );
        assert_eq!(load.active(), 0);
    }

    #[test]
    fn a_call_that_came_and_went_inside_ours_is_seen() {
        let load = DeviceLoad::new();
        let ours = load.begin();
        assert!(load.begin().finish());
        assert!(ours.finish());
    }

    #[test]
    fn a_dropped_watch_is_counted_out() {
        let load = DeviceLoad::new();
        let result = std::panic::catch_unwind(|| {
            let _watch = load.begin();
            panic!("the backend call panicked");
        });
        assert!(result.is_err());
        assert_eq!(load.active(), 0);
        assert!(!load.begin().finish());
    }
}
