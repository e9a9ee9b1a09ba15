//! The verdict cell: a kernel's Undecided / Adopted / Rejected state as one atomic
//! word, shared by every worker that races the kernel.
//!
//! This is the half of the race join that is concurrent: two workers may finish races
//! of the same kernel at once, one measuring "adopt" while the other catches a
//! mismatch. The rule: a rejection always wins and is never lost (it retries its CAS
//! until the word says Rejected); an adoption only ever moves Undecided → Adopted; and
//! each move is reported to exactly one caller, so each change is published once. Its
//! atomic comes from `crate::sync`, so `loom-tests/tests/race_join.rs` models it.

use crate::sync::{AtomicU32, Ordering};

use super::events::KernelVerdict;

const UNDECIDED: u32 = 0;
const ADOPTED: u32 = 1;
const REJECTED: u32 = 2;

fn code(v: KernelVerdict) -> u32 {
    match v {
        KernelVerdict::Undecided => UNDECIDED,
        KernelVerdict::Adopted => ADOPTED,
        KernelVerdict::Rejected => REJECTED,
    }
}

fn verdict(code: u32) -> KernelVerdict {
    match code {
        ADOPTED => KernelVerdict::Adopted,
        REJECTED => KernelVerdict::Rejected,
        _ => KernelVerdict::Undecided,
    }
}

/// One kernel's verdict.
#[derive(Debug)]
pub struct VerdictCell {
    word: AtomicU32,
}

impl Default for VerdictCell {
    fn default() -> Self {
        Self::new(KernelVerdict::Undecided)
    }
}

impl VerdictCell {
    /// A cell holding `initial`.
    pub fn new(initial: KernelVerdict) -> Self {
        VerdictCell {
            word: AtomicU32::new(code(initial)),
        }
    }

    /// The verdict now.
    pub fn get(&self) -> KernelVerdict {
        verdict(self.word.load(Ordering::Acquire))
    }

    /// Undecided → Adopted. Returns true for the one caller that made the move.
    pub fn adopt(&self) -> bool {
        self.word
            .compare_exchange(UNDECIDED, ADOPTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Anything → Rejected; never lost to a concurrent adoption. Returns the verdict
    /// it replaced for the one caller that made the move, `None` when it was already
    /// Rejected.
    pub fn reject(&self) -> Option<KernelVerdict> {
        let mut current = self.word.load(Ordering::Acquire);
        loop {
            if current == REJECTED {
                return None;
            }
            match self.word.compare_exchange_weak(
                current,
                REJECTED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(verdict(current)),
                Err(seen) => current = seen,
            }
        }
    }

    /// Rejected → Undecided, to race a rejected variant again (a re-race, SPEC §8).
    /// Returns true for the one caller that made the move; false when it was not
    /// Rejected (an adoption or another reopen came first).
    pub fn reopen(&self) -> bool {
        self.word
            .compare_exchange(REJECTED, UNDECIDED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}
