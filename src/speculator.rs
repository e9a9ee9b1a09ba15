//! The adaptive speculator (being written).

/// How many fused-kernel tiles committed and how many rolled back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SpeculationReport {
    /// Tiles whose speculative result was kept.
    pub committed_tiles: u32,
    /// Tiles that rolled back to the serial path.
    pub rolled_back_tiles: u32,
}
