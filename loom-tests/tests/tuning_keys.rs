//! loom models of a kernel's tuning-key table (`engine::tuning::KeyTable`) and of a
//! re-race reopening a rejected verdict (`VerdictCell::reopen`).
//!
//! 1. Two workers meet one new key at once: the table must make its state once and
//!    hand both the same state (two states would split the key's races between two
//!    windows, and two verdicts could be published for one key).
//! 2. A full table: one worker adds a key, which forgets the least recently used one,
//!    while another looks that one up and keeps using its state — the state it holds
//!    stays whole, and the table ends bounded.
//! 3. A re-race reopens a rejected variant while a mismatch rejects it for good: the
//!    variant must end rejected by the next batch whatever the order (a reopen that
//!    overwrote the mismatch's rejection would race a variant known to answer
//!    wrongly); without `race::choose`'s check of the broken flag, it does not.
#![cfg(photofinish_loom)]

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

use photofinish::protocol::{KeyTable, VerdictCell};
use photofinish::{KernelVerdict, TuningKey};

fn key(kib: u64) -> TuningKey {
    TuningKey::for_bytes(kib << 10, None)
}

#[test]
fn two_workers_meeting_one_new_key_share_one_state() {
    loom::model(|| {
        let table = Arc::new(KeyTable::<usize>::new(4));
        let made = Arc::new(AtomicUsize::new(0));
        let other = {
            let (table, made) = (Arc::clone(&table), Arc::clone(&made));
            thread::spawn(move || {
                let (state, _) =
                    table.get_or_insert(key(64), |_| made.fetch_add(1, Ordering::SeqCst));
                state
            })
        };
        let (mine, _) = table.get_or_insert(key(64), |_| made.fetch_add(1, Ordering::SeqCst));
        let theirs = other.join().unwrap();
        assert_eq!(
            made.load(Ordering::SeqCst),
            1,
            "the key's state was made twice"
        );
        assert!(
            std::sync::Arc::ptr_eq(&mine, &theirs),
            "two states for one key"
        );
        assert_eq!(table.len(), 1);
    });
}

#[test]
fn a_key_forgotten_while_in_use_stays_whole_for_its_user() {
    loom::model(|| {
        let table = Arc::new(KeyTable::<u64>::new(1));
        table.get_or_insert(key(4), |_| 4);
        let adder = {
            let table = Arc::clone(&table);
            thread::spawn(move || {
                let (state, gone) = table.get_or_insert(key(8), |_| 8);
                assert_eq!(*state, 8);
                gone.map(|e| e.key())
            })
        };
        // Looked up before or after it was forgotten: a whole state, or none.
        if let Some(state) = table.get(&key(4)) {
            assert_eq!(*state, 4);
        }
        let gone = adder.join().unwrap();
        assert_eq!(gone, Some(key(4)), "the full table forgot nothing");
        assert_eq!(table.len(), 1, "the table outgrew its bound");
        assert_eq!(table.get(&key(8)).as_deref(), Some(&8));
    });
}

/// The re-race and the mismatch as the engine runs them: `record::rerace_due` reopens
/// only a variant not marked broken; a mismatch marks it broken, then rejects it; the
/// next batch's `race::choose` rejects a broken variant it finds undecided. `check`:
/// whether that last step runs.
fn rerace_against_a_mismatch(check: bool) {
    loom::model(move || {
        let cell = Arc::new(VerdictCell::new(KernelVerdict::Rejected));
        let broken = Arc::new(loom::sync::atomic::AtomicBool::new(false));
        let rerace = {
            let (cell, broken) = (Arc::clone(&cell), Arc::clone(&broken));
            thread::spawn(move || {
                if !broken.load(Ordering::Acquire) {
                    cell.reopen();
                }
            })
        };
        broken.store(true, Ordering::Release);
        cell.reject();
        rerace.join().unwrap();
        // The next batch of the key.
        if check && broken.load(Ordering::Acquire) && cell.get() != KernelVerdict::Rejected {
            cell.reject();
        }
        assert_eq!(
            cell.get(),
            KernelVerdict::Rejected,
            "a variant that answered wrongly is raced again"
        );
    });
}

#[test]
fn a_rerace_never_races_a_variant_that_answered_wrongly() {
    rerace_against_a_mismatch(true);
}

/// Without `choose`'s check, a reopen that read `broken` before the mismatch set it
/// lands after the rejection: the model finds it.
#[test]
#[should_panic(expected = "raced again")]
fn without_the_check_in_choose_a_rerace_can_undo_the_mismatch() {
    rerace_against_a_mismatch(false);
}
