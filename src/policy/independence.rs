//! D2: arm independence — whether two kernel dispatches (the two arms of a race, or any
//! two queued kernels) may run concurrently, judged from the binding slots they read and
//! write.

use std::collections::BTreeSet;
use std::fmt;

/// The binding slots (descriptor set 0) one kernel dispatch reads and writes.
///
/// A slot both read and written belongs in both sets. The sets are ordered, so a
/// hazard is always reported on the lowest conflicting slot and checks allocate nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ArmBindingSummary {
    /// Slots the kernel may read.
    pub reads: BTreeSet<u32>,
    /// Slots the kernel may write.
    pub writes: BTreeSet<u32>,
}

impl ArmBindingSummary {
    /// A summary from the slots read and the slots written.
    ///
    /// ```
    /// use photofinish::policy::ArmBindingSummary;
    /// let arm = ArmBindingSummary::new([0, 1], [2]);
    /// assert!(arm.touches(1) && arm.touches(2) && !arm.touches(3));
    /// ```
    pub fn new(
        reads: impl IntoIterator<Item = u32>,
        writes: impl IntoIterator<Item = u32>,
    ) -> Self {
        ArmBindingSummary {
            reads: reads.into_iter().collect(),
            writes: writes.into_iter().collect(),
        }
    }

    /// True when the kernel reads or writes `slot`.
    #[must_use]
    pub fn touches(&self, slot: u32) -> bool {
        self.reads.contains(&slot) || self.writes.contains(&slot)
    }
}

/// The kind of data hazard that forces two dispatches to serialize, named from arm `a`'s
/// access followed by arm `b`'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BindingHazard {
    /// Both arms write the slot.
    WriteWrite,
    /// Arm `a` writes a slot arm `b` reads.
    ReadAfterWrite,
    /// Arm `a` reads a slot arm `b` writes.
    WriteAfterRead,
}

impl fmt::Display for BindingHazard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BindingHazard::WriteWrite => "write-write",
            BindingHazard::ReadAfterWrite => "read-after-write",
            BindingHazard::WriteAfterRead => "write-after-read",
        })
    }
}

/// The D2 verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArmIndependenceVerdict {
    /// No slot is written by one arm and touched by the other: dispatch concurrently.
    Independent,
    /// The arms conflict: dispatch them one after the other.
    SerializeRequired {
        /// The first hazard found, in the order write-write, read-after-write,
        /// write-after-read.
        hazard: BindingHazard,
        /// The lowest slot with that hazard.
        slot: u32,
    },
}

impl fmt::Display for ArmIndependenceVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArmIndependenceVerdict::Independent => f.write_str("independent"),
            ArmIndependenceVerdict::SerializeRequired { hazard, slot } => {
                write!(f, "serialize:{hazard}@{slot}")
            }
        }
    }
}

/// Decides whether two dispatches may run concurrently (SPEC §1, D2).
///
/// Checked in this order: a slot both write (write-write), a slot `a` writes and `b`
/// reads (read-after-write), a slot `a` reads and `b` writes (write-after-read). Sharing
/// a slot both only read is independent.
///
/// ```
/// use photofinish::policy::{
///     can_dispatch_concurrently, ArmBindingSummary, ArmIndependenceVerdict, BindingHazard,
/// };
/// let a = ArmBindingSummary::new([0], [1]);
/// let b = ArmBindingSummary::new([0], [2]);
/// assert_eq!(can_dispatch_concurrently(&a, &b), ArmIndependenceVerdict::Independent);
/// let c = ArmBindingSummary::new([1], [3]);
/// assert_eq!(
///     can_dispatch_concurrently(&a, &c),
///     ArmIndependenceVerdict::SerializeRequired { hazard: BindingHazard::ReadAfterWrite, slot: 1 },
/// );
/// ```
#[must_use]
pub fn can_dispatch_concurrently(
    a: &ArmBindingSummary,
    b: &ArmBindingSummary,
) -> ArmIndependenceVerdict {
    let checks = [
        (BindingHazard::WriteWrite, &a.writes, &b.writes),
        (BindingHazard::ReadAfterWrite, &a.writes, &b.reads),
        (BindingHazard::WriteAfterRead, &a.reads, &b.writes),
    ];
    for (hazard, first, second) in checks {
        if let Some(&slot) = first.intersection(second).next() {
            return ArmIndependenceVerdict::SerializeRequired { hazard, slot };
        }
    }
    ArmIndependenceVerdict::Independent
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serialize(hazard: BindingHazard, slot: u32) -> ArmIndependenceVerdict {
        ArmIndependenceVerdict::SerializeRequired { hazard, slot }
    }

    #[test]
    fn empty_arms_are_independent() {
        let empty = ArmBindingSummary::default();
        assert_eq!(
            can_dispatch_concurrently(&empty, &empty),
            ArmIndependenceVerdict::Independent
        );
    }

    #[test]
    fn shared_reads_are_independent() {
        let a = ArmBindingSummary::new([0, 1, u32::MAX], [2]);
        let b = ArmBindingSummary::new([0, 1, u32::MAX], [3]);
        assert_eq!(
            can_dispatch_concurrently(&a, &b),
            ArmIndependenceVerdict::Independent
        );
    }

    #[test]
    fn write_write_is_found_first() {
        // Slot 5 is write-write, slot 1 is read-after-write and slot 0 is
        // write-after-read: write-write wins although its slot is the highest.
        let a = ArmBindingSummary::new([0], [1, 5]);
        let b = ArmBindingSummary::new([1], [0, 5]);
        assert_eq!(
            can_dispatch_concurrently(&a, &b),
            serialize(BindingHazard::WriteWrite, 5)
        );
    }

    #[test]
    fn read_after_write_comes_before_write_after_read() {
        let a = ArmBindingSummary::new([0], [7]);
        let b = ArmBindingSummary::new([7], [0]);
        assert_eq!(
            can_dispatch_concurrently(&a, &b),
            serialize(BindingHazard::ReadAfterWrite, 7)
        );
        // Swapped, the same conflict reads the other way round and the order still
        // puts read-after-write (now on slot 0) first.
        assert_eq!(
            can_dispatch_concurrently(&b, &a),
            serialize(BindingHazard::ReadAfterWrite, 0)
        );
    }

    #[test]
    fn write_after_read_alone() {
        let a = ArmBindingSummary::new([u32::MAX], []);
        let b = ArmBindingSummary::new([], [u32::MAX]);
        assert_eq!(
            can_dispatch_concurrently(&a, &b),
            serialize(BindingHazard::WriteAfterRead, u32::MAX)
        );
        assert_eq!(
            can_dispatch_concurrently(&b, &a),
            serialize(BindingHazard::ReadAfterWrite, u32::MAX)
        );
    }

    #[test]
    fn lowest_conflicting_slot_is_reported() {
        let a = ArmBindingSummary::new([], [9, 3, 6]);
        let b = ArmBindingSummary::new([], [6, 9, 3]);
        assert_eq!(
            can_dispatch_concurrently(&a, &b),
            serialize(BindingHazard::WriteWrite, 3)
        );
    }

    #[test]
    fn an_arm_that_reads_and_writes_a_slot_conflicts_with_itself() {
        let a = ArmBindingSummary::new([4], [4]);
        assert_eq!(
            can_dispatch_concurrently(&a, &a),
            serialize(BindingHazard::WriteWrite, 4)
        );
    }

    #[test]
    fn touches_and_display() {
        let a = ArmBindingSummary::new([1], [2]);
        assert!(a.touches(1));
        assert!(a.touches(2));
        assert!(!a.touches(0));
        assert_eq!(
            ArmIndependenceVerdict::Independent.to_string(),
            "independent"
        );
        assert_eq!(
            serialize(BindingHazard::WriteWrite, 3).to_string(),
            "serialize:write-write@3"
        );
        assert_eq!(
            BindingHazard::ReadAfterWrite.to_string(),
            "read-after-write"
        );
        assert_eq!(
            BindingHazard::WriteAfterRead.to_string(),
            "write-after-read"
        );
    }
}
