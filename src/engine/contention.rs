//! Who else dispatches on a device while a race runs.
//!
//! A race's two arm times are only as clean as the device was quiet: on an H200 an
//! 11 µs arm measured 1.4 ms while a 35 ms global-atomics histogram ran on another
//! queue, and two such samples swung a window of means into rejecting a 3.7× faster
//! variant. Every backend call goes through a [`DeviceLoad`] watch, so a race knows
//! afterwards whether any other call ran on its device at some moment during its own
//! (see `registry::ArmHistory` for what it does with a contended sample).
//!
//! The protocol: one atomic word per queue of the device, each on cache lines of its
//! own, holds the calls begun on that queue (high 32 bits, wrapping) and the calls
//! running there (low 32 bits). Every backend call adds one to both on its queue's word
//! and takes one off the running count when it ends: one read-modify-write each, on a
//! line that no other queue's worker writes. A race's call also *watches*: after
//! counting itself in it reads every queue's word, and again before it counts itself
//! out; it was contended when any call but itself was running at the first read, or
//! any call began between the two reads. Every step is a sequentially consistent
//! read-modify-write (the reads are `fetch_add(0)`), so all fall in one order, and a
//! call that overlaps the watch's window either runs at its first read or begins before
//! its second (loom model: `loom-tests/tests/contention.rs`).
//!
//! Until commit bbad666 every call of a device counted itself in and out on one
//! shared word, so that each call could learn about the others; but only a race reads
//! the answer, and that word cost every batch two read-modify-writes on a line all the
//! device's workers wrote (on the H200 host's 16 CPU queues, part of what kept the
//! engine's per-batch cost above an actor framework's).

use crossbeam_utils::CachePadded;

use crate::sync::{padded_words, AtomicU64, Ordering};

/// One call begun, in the high half of a word.
const BEGUN: u64 = 1 << 32;
/// One call running, in the low half.
const RUNNING: u64 = 1;

/// The backend calls in progress on one device, counted per queue.
#[derive(Debug)]
pub struct DeviceLoad {
    /// Per queue: calls begun so far (high 32 bits, wrapping) and running now (low 32).
    queues: Box<[CachePadded<AtomicU64>]>,
}

impl DeviceLoad {
    /// An empty load for a device of `queues` queues (at least one word).
    pub fn new(queues: usize) -> Self {
        DeviceLoad {
            queues: padded_words(queues),
        }
    }

    /// Counts a backend call on queue `queue` (its index among the device's queues; one
    /// out of range counts on the last) in until the call finishes or drops (a
    /// panicking call is counted out by the drop).
    pub fn begin(&self, queue: usize) -> Call<'_> {
        let word = &self.queues[queue.min(self.queues.len() - 1)];
        word.fetch_add(BEGUN + RUNNING, Ordering::SeqCst);
        Call {
            word,
            counted_in: true,
        }
    }

    /// Counts a call on `queue` in, like [`begin`](Self::begin), and watches the device
    /// for other calls until it finishes.
    pub fn watch(&self, queue: usize) -> Watch<'_> {
        let call = self.begin(queue);
        let (running, begun) = self.read();
        Watch {
            load: self,
            call,
            // This call is one of those running.
            others_running: running > 1,
            begun,
        }
    }

    /// Calls running now.
    #[cfg(any(test, photofinish_loom))]
    pub fn active(&self) -> u32 {
        self.queues
            .iter()
            .map(|w| running(w.load(Ordering::SeqCst)))
            .fold(0, u32::wrapping_add)
    }

    /// The calls running on all queues and a wrapping sum of the calls begun, each
    /// word read with a read-modify-write.
    fn read(&self) -> (u32, u32) {
        self.queues.iter().fold((0, 0), |(run, begun_sum), w| {
            let word = w.fetch_add(0, Ordering::SeqCst);
            (
                run.wrapping_add(running(word)),
                begun_sum.wrapping_add(begun(word)),
            )
        })
    }
}

fn begun(word: u64) -> u32 {
    (word >> 32) as u32
}

fn running(word: u64) -> u32 {
    word as u32
}

/// One backend call on a queue, counted in until it finishes.
#[derive(Debug)]
pub struct Call<'a> {
    word: &'a AtomicU64,
    counted_in: bool,
}

impl Call<'_> {
    /// Counts the call out.
    pub fn finish(mut self) {
        self.count_out();
    }

    fn count_out(&mut self) {
        if std::mem::take(&mut self.counted_in) {
            self.word.fetch_sub(RUNNING, Ordering::SeqCst);
        }
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        self.count_out();
    }
}

/// A race's backend call, counted in, watching the device's other calls.
#[derive(Debug)]
pub struct Watch<'a> {
    load: &'a DeviceLoad,
    call: Call<'a>,
    /// Another call was running when this one began.
    others_running: bool,
    /// The wrapping sum of calls begun, read after this one counted itself in.
    begun: u32,
}

impl Watch<'_> {
    /// Counts the call out; true when another call ran on the device at some moment
    /// while this one did.
    pub fn finish(self) -> bool {
        let (_, begun) = self.load.read();
        self.call.finish();
        self.others_running || begun != self.begun
    }
}

#[cfg(all(test, not(photofinish_loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_call_alone_is_not_contended() {
        let load = DeviceLoad::new(4);
        assert!(!load.watch(0).finish());
        assert!(
            !load.watch(0).finish(),
            "an earlier, finished call is no contention"
        );
        load.begin(2).finish();
        assert!(
            !load.watch(1).finish(),
            "nor is one that finished on another queue"
        );
        assert_eq!(load.active(), 0);
    }

    #[test]
    fn a_call_running_on_another_queue_or_the_same_is_seen() {
        let load = DeviceLoad::new(4);
        for queue in [3, 0] {
            let other = load.begin(queue);
            let ours = load.watch(0);
            assert_eq!(load.active(), 2);
            other.finish();
            assert!(ours.finish(), "queue {queue}'s call was running");
        }
        assert_eq!(load.active(), 0);
    }

    #[test]
    fn a_call_that_came_and_went_inside_ours_is_seen() {
        let load = DeviceLoad::new(2);
        let ours = load.watch(0);
        load.begin(1).finish();
        assert!(ours.finish());
        let ours = load.watch(1);
        assert!(load.watch(0).finish(), "a watch sees the watch it began in");
        assert!(ours.finish());
    }

    #[test]
    fn a_queue_out_of_range_counts_on_the_last() {
        let load = DeviceLoad::new(2);
        let stray = load.begin(7);
        assert_eq!(load.active(), 1);
        assert!(load.watch(1).finish());
        stray.finish();
        assert_eq!(load.active(), 0);
        assert_eq!(
            DeviceLoad::new(0).active(),
            0,
            "a device of no queues has one word"
        );
    }

    #[test]
    fn a_dropped_call_or_watch_is_counted_out() {
        let load = DeviceLoad::new(2);
        let result = std::panic::catch_unwind(|| {
            let _call = load.begin(0);
            let _watch = load.watch(1);
            panic!("the backend call panicked");
        });
        assert!(result.is_err());
        assert_eq!(load.active(), 0);
        assert!(!load.watch(0).finish());
    }
}
