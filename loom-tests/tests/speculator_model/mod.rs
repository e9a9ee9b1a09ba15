//! The check both speculator models run: two concurrent `record`s and a reader thread
//! against a speculator design, asserting linearizability of the outcome.
//!
//! A sequential run of the two records passes through three states (start, after the
//! first, after the second), and the two orders give two such paths. The final state
//! must end one of them, every snapshot the reader takes must lie on that same path, in
//! order, and where the design reports each record's before/after states, they must be
//! consecutive states of that path. Any violation panics with "not a sequential state".

use loom::sync::Arc;
use loom::thread;
use photofinish::speculator::{
    AdaptiveSpeculator, RecordOutcome, SpeculationReport, SpeculatorSnapshot,
};

/// The threshold (percent) the models run at.
pub const THRESHOLD_PCT: u32 = 15;
/// Recorded once before the threads start: the EMA goes from 150 000 to 112 500, right on
/// the disable edge, so the next report decides the flag.
pub const PRIME: SpeculationReport = SpeculationReport::from_counts(0, 4);
/// Pulls the EMA down (to 84 375 from the primed state): disables.
pub const PULL_DOWN: SpeculationReport = SpeculationReport::from_counts(0, 4);
/// Pushes the EMA up (to 334 375 from the primed state).
pub const PUSH_UP: SpeculationReport = SpeculationReport::from_counts(4, 0);

/// A speculator design under test.
pub trait Design: Send + Sync + 'static {
    /// A fresh speculator at [`THRESHOLD_PCT`].
    fn fresh() -> Self;
    /// Records one report; `Some` where the design reports what its step did.
    fn record(&self, report: SpeculationReport) -> Option<RecordOutcome>;
    /// Reads the three values.
    fn snapshot(&self) -> SpeculatorSnapshot;
}

/// The design under test: one packed word, updated by one CAS.
impl Design for AdaptiveSpeculator {
    fn fresh() -> Self {
        AdaptiveSpeculator::new(THRESHOLD_PCT)
    }

    fn record(&self, report: SpeculationReport) -> Option<RecordOutcome> {
        Some(AdaptiveSpeculator::record(self, report))
    }

    fn snapshot(&self) -> SpeculatorSnapshot {
        AdaptiveSpeculator::snapshot(self)
    }
}

fn primed<D: Design>() -> D {
    let d = D::fresh();
    d.record(PRIME);
    d
}

/// The states a sequential run of `first` then `second` passes through.
pub fn sequential_path<D: Design>(
    first: SpeculationReport,
    second: SpeculationReport,
) -> [SpeculatorSnapshot; 3] {
    let d = primed::<D>();
    let start = d.snapshot();
    d.record(first);
    let middle = d.snapshot();
    d.record(second);
    [start, middle, d.snapshot()]
}

/// One execution of the model: run it inside `loom::model`.
pub fn two_records_and_a_reader<D: Design>() {
    let down_up = sequential_path::<D>(PULL_DOWN, PUSH_UP);
    let up_down = sequential_path::<D>(PUSH_UP, PULL_DOWN);
    // The model only has teeth if the two orders are told apart everywhere but the start.
    assert_ne!(down_up[1], up_down[1]);
    assert_ne!(down_up[2], up_down[2]);

    let spec = Arc::new(primed::<D>());
    let recorder = |report| {
        let spec = Arc::clone(&spec);
        thread::spawn(move || spec.record(report))
    };
    let down = recorder(PULL_DOWN);
    let up = recorder(PUSH_UP);
    let reader = {
        let spec = Arc::clone(&spec);
        thread::spawn(move || [spec.snapshot(), spec.snapshot()])
    };
    let down = down.join().expect("recording thread panicked");
    let up = up.join().expect("recording thread panicked");
    let seen = reader.join().expect("reader thread panicked");
    let end = spec.snapshot();

    let (path, first, second) = if end == down_up[2] {
        (&down_up, down, up)
    } else if end == up_down[2] {
        (&up_down, up, down)
    } else {
        panic!(
            "not a sequential state: the two records ended at {end:?}, but a sequential \
             replay ends at {:?} or {:?}",
            down_up[2], up_down[2]
        );
    };
    let mut at = 0;
    for snapshot in seen {
        match path[at..].iter().position(|s| *s == snapshot) {
            Some(step) => at += step,
            None => panic!(
                "not a sequential state: the reader saw {snapshot:?}, which is not on the \
                 sequential path {path:?} at or after step {at}"
            ),
        }
    }
    for (index, outcome) in [(0, first), (1, second)] {
        if let Some(outcome) = outcome {
            let step = (path[index], path[index + 1]);
            assert_eq!(
                (outcome.before, outcome.after),
                step,
                "not a sequential state: record #{index} reported a step off the path"
            );
        }
    }
}
