//! loom model of the race join's concurrent half: the verdict cell that several
//! workers finishing races of the same kernel update at once. A rejection (mismatch)
//! is never lost to a concurrent adoption, adoption only moves Undecided → Adopted,
//! and every move is reported to exactly one thread (so it is published once).
#![cfg(photofinish_loom)]

use loom::sync::Arc;
use loom::thread;

use photofinish::protocol::VerdictCell;
use photofinish::KernelVerdict;

#[test]
fn rejection_wins_over_a_concurrent_adoption() {
    loom::model(|| {
        let cell = Arc::new(VerdictCell::default());
        let adopter = {
            let cell = Arc::clone(&cell);
            thread::spawn(move || cell.adopt())
        };
        let rejecter = {
            let cell = Arc::clone(&cell);
            thread::spawn(move || cell.reject())
        };
        let adopted = adopter.join().unwrap();
        let replaced = rejecter.join().unwrap();
        assert_eq!(cell.get(), KernelVerdict::Rejected);
        // The rejecter replaced whatever the adopter left: both moves are reported
        // once each, in one consistent order.
        match (adopted, replaced) {
            (true, Some(KernelVerdict::Adopted)) | (false, Some(KernelVerdict::Undecided)) => {}
            other => panic!("inconsistent moves: {other:?}"),
        }
    });
}

#[test]
fn two_concurrent_rejections_are_reported_once() {
    loom::model(|| {
        let cell = Arc::new(VerdictCell::new(KernelVerdict::Adopted));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let cell = Arc::clone(&cell);
                thread::spawn(move || cell.reject())
            })
            .collect();
        let moved: Vec<_> = threads
            .into_iter()
            .filter_map(|t| t.join().unwrap())
            .collect();
        assert_eq!(moved, vec![KernelVerdict::Adopted]);
        assert_eq!(cell.get(), KernelVerdict::Rejected);
        assert!(!cell.adopt(), "a rejected kernel is never adopted again");
    });
}
