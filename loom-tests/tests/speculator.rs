//! loom model of `AdaptiveSpeculator`: two concurrent `record`s and a reader. Every
//! interleaving (at the preemption bound scripts/loom sets) must end in a state a
//! sequential replay produces, with the reader and each record's reported step on that
//! same sequential path.
#![cfg(photofinish_loom)]

mod speculator_model;

use photofinish::speculator::AdaptiveSpeculator;

#[test]
fn concurrent_records_are_linearizable() {
    loom::model(speculator_model::two_records_and_a_reader::<AdaptiveSpeculator>);
}

#[test]
fn the_models_reports_move_the_flag_as_the_spec_says() {
    loom::model(|| {
        let down_up = speculator_model::sequential_path::<AdaptiveSpeculator>(
            speculator_model::PULL_DOWN,
            speculator_model::PUSH_UP,
        );
        // Primed at the disable edge; pulling down flips it off, pushing up flips it on.
        assert_eq!(
            (down_up[0].commit_rate_ppm, down_up[0].enabled),
            (112_500, true)
        );
        assert_eq!(
            (down_up[1].commit_rate_ppm, down_up[1].enabled),
            (84_375, false)
        );
        assert!(down_up[2].enabled);
    });
}
