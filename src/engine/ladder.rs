//! Which speculative variant of a kernel is in play: the ladder.
//!
//! A kernel with several speculative variants races them one at a time against the
//! conservative one. Each variant has its own verdict cell; the ladder says which one
//! batches race or run now: the first undecided variant; once none is undecided, the
//! adopted one with the lowest cost (its speculative ÷ conservative mean); with none
//! adopted, play stays where it is (a rejected variant in play means the conservative
//! variant runs).
//!
//! The protocol: workers read `in_play` lock-free when they choose a batch's arms.
//! Whoever changes a verdict calls [`Ladder::settle`] after its change; settles are
//! serialised by a mutex and each recomputes play from the verdicts as they are then.
//! So the last settle sees every change made before it, and play always ends where the
//! final verdicts put it. A settle that computed outside the lock could store a choice
//! from verdicts that had since changed — after the newer settle — and leave a rejected
//! variant in play while another is adopted (the `should_panic` model in
//! `loom-tests/tests/ladder.rs` finds exactly that).

use crate::sync::{AtomicUsize, Mutex, Ordering};

use super::events::KernelVerdict;

/// The speculative variant in play, and the lock its moves take.
#[derive(Debug)]
pub struct Ladder {
    in_play: AtomicUsize,
    moving: Mutex<()>,
}

impl Ladder {
    /// A ladder with variant `first` in play.
    pub fn new(first: usize) -> Self {
        Ladder {
            in_play: AtomicUsize::new(first),
            moving: Mutex::new(()),
        }
    }

    /// The speculative variant in play (lock-free).
    pub fn in_play(&self) -> usize {
        self.in_play.load(Ordering::Acquire)
    }

    /// Recomputes play over variants `1..=variants` from `verdict` and `cost` (see
    /// [`choose`]), under the lock. Returns the new variant in play when it moved.
    pub fn settle(
        &self,
        variants: usize,
        verdict: impl Fn(usize) -> KernelVerdict,
        cost: impl Fn(usize) -> u64,
    ) -> Option<usize> {
        let _one_at_a_time = self.moving.lock().unwrap_or_else(|p| p.into_inner());
        let next = choose(variants, verdict, cost)?;
        let before = self.in_play.swap(next, Ordering::AcqRel);
        (before != next).then_some(next)
    }
}

/// Where play belongs over speculative variants `1..=variants`: the first undecided
/// one; else the adopted one of lowest `cost` (the first of equals); else `None` (play
/// stays).
pub fn choose(
    variants: usize,
    verdict: impl Fn(usize) -> KernelVerdict,
    cost: impl Fn(usize) -> u64,
) -> Option<usize> {
    let all = 1..=variants;
    all.clone()
        .find(|&v| verdict(v) == KernelVerdict::Undecided)
        .or_else(|| {
            all.filter(|&v| verdict(v) == KernelVerdict::Adopted)
                .min_by_key(|&v| cost(v))
        })
}

#[cfg(all(test, not(photofinish_loom)))]
mod tests {
    use super::*;
    use KernelVerdict::{Adopted as A, Rejected as R, Undecided as U};

    fn pick(verdicts: &[KernelVerdict], costs: &[u64]) -> Option<usize> {
        choose(verdicts.len(), |v| verdicts[v - 1], |v| costs[v - 1])
    }

    #[test]
    fn the_first_undecided_variant_plays_first() {
        assert_eq!(pick(&[U, U, U], &[0, 0, 0]), Some(1));
        assert_eq!(pick(&[R, A, U], &[9, 1, 0]), Some(3));
    }

    #[test]
    fn once_all_are_decided_the_cheapest_adopted_one_plays() {
        assert_eq!(pick(&[R, A, A, A], &[0, 900, 100, 500]), Some(3));
        assert_eq!(pick(&[A, A], &[7, 7]), Some(1), "the first of equals");
    }

    #[test]
    fn with_none_adopted_play_stays() {
        assert_eq!(pick(&[R, R], &[0, 0]), None);
        let ladder = Ladder::new(2);
        assert_eq!(ladder.settle(2, |_| R, |_| 0), None);
        assert_eq!(ladder.in_play(), 2);
    }

    #[test]
    fn settle_reports_a_move_once() {
        let ladder = Ladder::new(1);
        let verdicts = [R, U];
        assert_eq!(ladder.settle(2, |v| verdicts[v - 1], |_| 0), Some(2));
        assert_eq!(ladder.settle(2, |v| verdicts[v - 1], |_| 0), None);
        assert_eq!(ladder.in_play(), 2);
    }
}
