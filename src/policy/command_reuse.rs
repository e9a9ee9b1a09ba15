//! D4: command reuse — whether to record a dispatch sequence once into a command buffer
//! and replay it, rather than re-issuing it launch by launch.

use std::fmt;

/// What a repeated dispatch sequence costs issued plainly versus recorded and replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CommandReuseInputs {
    /// How many times the sequence runs.
    pub repeat_count: u32,
    /// Cost of issuing the sequence plainly, once, ns.
    pub per_launch_overhead_ns: u64,
    /// One-time cost of recording the sequence, ns.
    pub record_overhead_ns: u64,
    /// Cost of replaying the recorded sequence, once, ns.
    pub replay_overhead_ns: u64,
}

/// The D4 verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandReuseDecision {
    /// Issue every repeat plainly.
    PlainLaunches,
    /// Record once, replay every repeat.
    RecordAndReplay {
        /// `repeat * (launch - replay) - record`, ns (clamped to `u64::MAX`).
        savings_ns: u64,
    },
}

impl CommandReuseDecision {
    /// The saving when record-and-replay is chosen, `None` for plain launches.
    #[must_use]
    pub fn savings_ns(&self) -> Option<u64> {
        match *self {
            CommandReuseDecision::PlainLaunches => None,
            CommandReuseDecision::RecordAndReplay { savings_ns } => Some(savings_ns),
        }
    }
}

impl fmt::Display for CommandReuseDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandReuseDecision::PlainLaunches => f.write_str("plain-launches"),
            CommandReuseDecision::RecordAndReplay { savings_ns } => {
                write!(f, "record-and-replay:{savings_ns}")
            }
        }
    }
}

/// Decides between plain launches and record-and-replay (SPEC §1, D4).
///
/// PlainLaunches when the sequence runs at most once, a replay costs at least as much as
/// a plain launch, or `repeat * (launch - replay) <= record` (u128); otherwise
/// RecordAndReplay saving that product minus the recording cost.
///
/// ```
/// use photofinish::policy::{decide_command_reuse, CommandReuseDecision, CommandReuseInputs};
/// let inputs = CommandReuseInputs {
///     repeat_count: 100,
///     per_launch_overhead_ns: 3_000,
///     record_overhead_ns: 50_000,
///     replay_overhead_ns: 1_000,
/// };
/// assert_eq!(
///     decide_command_reuse(inputs),
///     CommandReuseDecision::RecordAndReplay { savings_ns: 150_000 },
/// );
/// ```
#[must_use]
pub fn decide_command_reuse(inputs: CommandReuseInputs) -> CommandReuseDecision {
    let Some(per_repeat_saving) = inputs
        .per_launch_overhead_ns
        .checked_sub(inputs.replay_overhead_ns)
    else {
        return CommandReuseDecision::PlainLaunches;
    };
    // A zero per-repeat saving (replay == launch) is rejected by the helper.
    match super::amortized_saving(
        inputs.repeat_count,
        per_repeat_saving,
        inputs.record_overhead_ns,
    ) {
        Some(savings_ns) => CommandReuseDecision::RecordAndReplay { savings_ns },
        None => CommandReuseDecision::PlainLaunches,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(repeat: u32, launch: u64, record: u64, replay: u64) -> CommandReuseInputs {
        CommandReuseInputs {
            repeat_count: repeat,
            per_launch_overhead_ns: launch,
            record_overhead_ns: record,
            replay_overhead_ns: replay,
        }
    }

    fn replay(savings_ns: u64) -> CommandReuseDecision {
        CommandReuseDecision::RecordAndReplay { savings_ns }
    }

    const PLAIN: CommandReuseDecision = CommandReuseDecision::PlainLaunches;

    #[test]
    fn repeat_of_one_is_plain_and_two_replays() {
        assert_eq!(decide_command_reuse(inputs(0, 100, 0, 0)), PLAIN);
        assert_eq!(decide_command_reuse(inputs(1, 100, 0, 0)), PLAIN);
        assert_eq!(decide_command_reuse(inputs(2, 100, 0, 0)), replay(200));
    }

    #[test]
    fn replay_at_or_above_launch_cost_is_plain() {
        assert_eq!(decide_command_reuse(inputs(u32::MAX, 100, 0, 100)), PLAIN);
        assert_eq!(decide_command_reuse(inputs(u32::MAX, 100, 0, 101)), PLAIN);
        assert_eq!(
            decide_command_reuse(inputs(u32::MAX, 0, 0, u64::MAX)),
            PLAIN
        );
        assert_eq!(
            decide_command_reuse(inputs(u32::MAX, 100, 0, 99)),
            replay(u64::from(u32::MAX))
        );
    }

    #[test]
    fn product_equal_to_record_is_plain_and_one_more_replays() {
        // 10 * (100 - 40) = 600.
        assert_eq!(decide_command_reuse(inputs(10, 100, 600, 40)), PLAIN);
        assert_eq!(decide_command_reuse(inputs(10, 100, 599, 40)), replay(1));
        assert_eq!(decide_command_reuse(inputs(11, 100, 600, 40)), replay(60));
    }

    #[test]
    fn extremes_are_widened_not_wrapped() {
        assert_eq!(
            decide_command_reuse(inputs(u32::MAX, u64::MAX, u64::MAX, 0)),
            replay(u64::MAX)
        );
        assert_eq!(
            decide_command_reuse(inputs(u32::MAX, u64::MAX, u64::MAX, u64::MAX - 1)),
            PLAIN
        );
        assert_eq!(
            decide_command_reuse(inputs(u32::MAX, u64::MAX, 0, u64::MAX - 1)),
            replay(u64::from(u32::MAX))
        );
    }

    #[test]
    fn savings_accessor_and_display() {
        assert_eq!(PLAIN.savings_ns(), None);
        assert_eq!(replay(9).savings_ns(), Some(9));
        assert_eq!(PLAIN.to_string(), "plain-launches");
        assert_eq!(replay(9).to_string(), "record-and-replay:9");
    }
}
