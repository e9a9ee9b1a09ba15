//! Spin-then-park for the two hand-offs on a batch's path: a worker waiting for its next
//! batch and a producer waiting for its answer.
//!
//! One batch at a time, each hand-off wakes a parked thread, and on a GPU host waking a
//! parked thread on an idle CPU can cost far more than the dispatch itself. So a waiter
//! first polls for [`SPIN_BEFORE_PARK`] and only then parks. For the first `busy` of
//! that window it polls with CPU spin hints only (the engine's busy wait,
//! `EngineBuilder::busy_wait`: on by default where the machine has a core to spare for
//! each waiter); after that it yields between polls, so on a busy machine the CPU goes
//! to whoever has work. A yield is a system call, and on a virtual machine whose host is
//! busy one can take tens of microseconds: a waiter inside one notices its hand-off
//! late. Under loom this is compiled out: the models see only the blocking protocol.

use std::time::{Duration, Instant};

/// How long a waiter polls before it parks.
pub(crate) const SPIN_BEFORE_PARK: Duration = Duration::from_micros(100);

/// Polls `poll` until it gives a value or [`SPIN_BEFORE_PARK`] has passed: the first
/// polls back off with CPU spin hints (a hand-off that is about to happen costs no
/// system call), then, until `busy` has passed, polls follow each other with a few spin
/// hints between; later ones yield the CPU. The clock is read every eighth poll, and
/// not at all when the first poll gives a value (under a backlog, the usual case).
pub(crate) fn spin_until<T>(mut poll: impl FnMut() -> Option<T>, busy: Duration) -> Option<T> {
    const SPIN_ROUNDS: u32 = 6;
    /// Spin hints between two polls of the busy phase (about a microsecond).
    const BUSY_HINTS: u32 = 32;
    if let Some(value) = poll() {
        return Some(value);
    }
    let start = Instant::now();
    let mut round = 0u32;
    let mut busy_phase = !busy.is_zero();
    loop {
        if let Some(value) = poll() {
            return Some(value);
        }
        if round < SPIN_ROUNDS {
            for _ in 0..(1u32 << round) {
                std::hint::spin_loop();
            }
        } else if busy_phase {
            for _ in 0..BUSY_HINTS {
                std::hint::spin_loop();
            }
        } else {
            std::thread::yield_now();
        }
        round = round.wrapping_add(1);
        if round % 8 == 0 {
            let waited = start.elapsed();
            if waited >= SPIN_BEFORE_PARK {
                return None;
            }
            busy_phase = busy_phase && waited < busy;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gives_up_after_the_spin_window() {
        for busy in [Duration::ZERO, Duration::from_micros(50), Duration::MAX] {
            let start = Instant::now();
            assert_eq!(spin_until(|| None::<()>, busy), None);
            assert!(start.elapsed() >= SPIN_BEFORE_PARK);
        }
    }

    #[test]
    fn returns_what_the_poll_gives() {
        for busy in [Duration::ZERO, Duration::from_micros(50)] {
            let mut calls = 0;
            let got = spin_until(
                || {
                    calls += 1;
                    (calls == 3).then_some(calls)
                },
                busy,
            );
            assert_eq!(got, Some(3));
        }
    }
}
