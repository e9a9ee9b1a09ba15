//! loom model of the ladder (`engine::ladder`): which of a kernel's speculative variants
//! is in play. Two workers change two variants' verdicts at once — one adopts variant
//! 1, the other rejects variant 2 — and each settles after its change. Whatever the
//! interleaving, play must end where the final verdicts put it: on variant 1, the only
//! adopted one (a rejected variant left in play would run the conservative variant
//! although a faster one was adopted).
#![cfg(photofinish_loom)]

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

use photofinish::protocol::{choose_in_play, Ladder, VerdictCell};
use photofinish::KernelVerdict;

/// The two variants' verdict cells.
type Cells = Arc<[VerdictCell; 2]>;

fn verdict(cells: &Cells, v: usize) -> KernelVerdict {
    cells[v - 1].get()
}

#[test]
fn play_ends_where_the_final_verdicts_put_it() {
    loom::model(|| {
        let cells: Cells = Arc::new([VerdictCell::default(), VerdictCell::default()]);
        let ladder = Arc::new(Ladder::new(1));
        let adopter = {
            let (cells, ladder) = (Arc::clone(&cells), Arc::clone(&ladder));
            thread::spawn(move || {
                assert!(cells[0].adopt());
                ladder.settle(2, |v| verdict(&cells, v), |_| 0);
            })
        };
        assert!(cells[1].reject().is_some());
        ladder.settle(2, |v| verdict(&cells, v), |_| 0);
        adopter.join().unwrap();
        assert_eq!(ladder.in_play(), 1, "play left on a rejected variant");
    });
}

/// The same ladder with the choice computed before the lock is taken (here: a plain
/// atomic store after an unlocked computation).
struct UnlockedLadder {
    in_play: AtomicUsize,
}

impl UnlockedLadder {
    fn settle(&self, cells: &Cells) {
        if let Some(next) = choose_in_play(2, |v| verdict(cells, v), |_| 0) {
            self.in_play.store(next, Ordering::Release);
        }
    }
}

#[test]
#[should_panic(expected = "play left on a rejected variant")]
fn an_unlocked_settle_is_caught_leaving_play_on_a_rejected_variant() {
    loom::model(|| {
        let cells: Cells = Arc::new([VerdictCell::default(), VerdictCell::default()]);
        let ladder = Arc::new(UnlockedLadder {
            in_play: AtomicUsize::new(1),
        });
        let adopter = {
            let (cells, ladder) = (Arc::clone(&cells), Arc::clone(&ladder));
            thread::spawn(move || {
                assert!(cells[0].adopt());
                ladder.settle(&cells);
            })
        };
        assert!(cells[1].reject().is_some());
        ladder.settle(&cells);
        adopter.join().unwrap();
        assert_eq!(
            ladder.in_play.load(Ordering::Acquire),
            1,
            "play left on a rejected variant"
        );
    });
}
