//! D3: copy overlap — whether a buffer copy may run on a transfer queue while a kernel
//! runs, judged from the copy's destination slot and the kernel's bindings.

use std::fmt;

use super::ArmBindingSummary;

/// The D3 verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CopyOverlapDecision {
    /// The kernel does not touch the copy's destination: run them concurrently.
    Overlap,
    /// The kernel reads or writes the destination: the copy waits for it.
    Serialize,
}

impl fmt::Display for CopyOverlapDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CopyOverlapDecision::Overlap => "overlap",
            CopyOverlapDecision::Serialize => "serialize",
        })
    }
}

/// Decides whether a copy into `dst_slot` may overlap the kernel `arm` (SPEC §1, D3):
/// Serialize iff the kernel reads or writes `dst_slot`.
///
/// ```
/// use photofinish::policy::{can_overlap_copy_with_kernel, ArmBindingSummary, CopyOverlapDecision};
/// let arm = ArmBindingSummary::new([0], [1]);
/// assert_eq!(can_overlap_copy_with_kernel(2, &arm), CopyOverlapDecision::Overlap);
/// assert_eq!(can_overlap_copy_with_kernel(0, &arm), CopyOverlapDecision::Serialize);
/// ```
#[must_use]
pub fn can_overlap_copy_with_kernel(dst_slot: u32, arm: &ArmBindingSummary) -> CopyOverlapDecision {
    if arm.touches(dst_slot) {
        CopyOverlapDecision::Serialize
    } else {
        CopyOverlapDecision::Overlap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untouched_slot_overlaps() {
        let arm = ArmBindingSummary::new([0, 2], [4]);
        for slot in [1, 3, 5, u32::MAX] {
            assert_eq!(
                can_overlap_copy_with_kernel(slot, &arm),
                CopyOverlapDecision::Overlap,
                "slot {slot}"
            );
        }
        assert_eq!(
            can_overlap_copy_with_kernel(0, &ArmBindingSummary::default()),
            CopyOverlapDecision::Overlap
        );
    }

    #[test]
    fn read_slot_serializes() {
        let arm = ArmBindingSummary::new([u32::MAX], []);
        assert_eq!(
            can_overlap_copy_with_kernel(u32::MAX, &arm),
            CopyOverlapDecision::Serialize
        );
    }

    #[test]
    fn written_slot_serializes() {
        let arm = ArmBindingSummary::new([], [0]);
        assert_eq!(
            can_overlap_copy_with_kernel(0, &arm),
            CopyOverlapDecision::Serialize
        );
    }

    #[test]
    fn display() {
        assert_eq!(CopyOverlapDecision::Overlap.to_string(), "overlap");
        assert_eq!(CopyOverlapDecision::Serialize.to_string(), "serialize");
    }
}
