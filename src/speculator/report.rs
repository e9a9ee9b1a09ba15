//! What one fused dispatch says about itself: the tile counts and the 8-byte counter tail
//! a fused kernel appends to its output buffer. Pure data and parsing; no shared state.

/// Bytes a fused speculative kernel appends to one output buffer: `committed` then
/// `rolled_back`, each a little-endian u32.
pub const COUNTER_TAIL_BYTES: usize = 8;

/// How many fused-kernel tiles committed and how many rolled back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SpeculationReport {
    /// Tiles whose speculative result was kept.
    pub committed_tiles: u32,
    /// Tiles that rolled back to the serial path.
    pub rolled_back_tiles: u32,
}

impl SpeculationReport {
    /// A report of `committed` kept tiles and `rolled_back` tiles redone serially.
    pub const fn from_counts(committed: u32, rolled_back: u32) -> Self {
        Self {
            committed_tiles: committed,
            rolled_back_tiles: rolled_back,
        }
    }

    /// A report of no tiles at all; the speculator ignores it.
    pub const fn empty() -> Self {
        Self::from_counts(0, 0)
    }

    /// Whether no tile was attempted.
    pub const fn is_empty(&self) -> bool {
        self.committed_tiles == 0 && self.rolled_back_tiles == 0
    }

    /// Committed plus rolled-back tiles, saturating at `u32::MAX`.
    pub const fn attempted_tiles(&self) -> u32 {
        self.committed_tiles.saturating_add(self.rolled_back_tiles)
    }

    /// `floor(committed * 10^6 / attempted)`: the commit rate in parts per million, 0 for
    /// an empty report.
    ///
    /// The denominator is the exact sum in u64, not the saturating
    /// [`attempted_tiles`](Self::attempted_tiles), so the rate stays exact for counts
    /// near `u32::MAX`. The result is at most 1 000 000.
    ///
    /// ```
    /// use photofinish::speculator::SpeculationReport;
    /// assert_eq!(SpeculationReport::from_counts(1, 2).commit_rate_ppm(), 333_333);
    /// assert_eq!(SpeculationReport::from_counts(u32::MAX, u32::MAX).commit_rate_ppm(), 500_000);
    /// assert_eq!(SpeculationReport::empty().commit_rate_ppm(), 0);
    /// ```
    pub fn commit_rate_ppm(&self) -> u32 {
        let committed = u64::from(self.committed_tiles);
        let attempted = committed + u64::from(self.rolled_back_tiles);
        if attempted == 0 {
            return 0;
        }
        // committed <= attempted, so the quotient is <= 10^6 and fits u32; the product is
        // below 2^32 * 10^6 < 2^52.
        (committed * 1_000_000 / attempted) as u32
    }

    /// The commit rate in whole percent: `commit_rate_ppm() / 10_000`.
    pub fn commit_rate_pct(&self) -> u32 {
        self.commit_rate_ppm() / 10_000
    }

    /// Whether the commit rate reaches `threshold_pct` percent:
    /// `commit_rate_ppm() >= threshold_pct * 10^4`, computed in u64 so no threshold
    /// overflows. An empty report (rate 0) is worthwhile only at threshold 0.
    pub fn worthwhile(&self, threshold_pct: u32) -> bool {
        u64::from(self.commit_rate_ppm()) >= u64::from(threshold_pct) * 10_000
    }
}

/// The 8-byte counter tail a fused kernel writes for `report`: `committed` then
/// `rolled_back`, each a little-endian u32.
pub fn encode_counter_tail(report: SpeculationReport) -> [u8; COUNTER_TAIL_BYTES] {
    let mut tail = [0u8; COUNTER_TAIL_BYTES];
    tail[..4].copy_from_slice(&report.committed_tiles.to_le_bytes());
    tail[4..].copy_from_slice(&report.rolled_back_tiles.to_le_bytes());
    tail
}

/// Reads the counter tail from the last [`COUNTER_TAIL_BYTES`] of `buffer`.
///
/// `None` when the buffer is shorter than the tail or its length is not a multiple of 4
/// (a fused kernel's output is whole u32 words, so such a buffer is not one).
///
/// ```
/// use photofinish::speculator::{encode_counter_tail, parse_counter_tail, SpeculationReport};
/// let report = SpeculationReport::from_counts(7, 1);
/// let mut buffer = vec![0u8; 16];
/// buffer.extend_from_slice(&encode_counter_tail(report));
/// assert_eq!(parse_counter_tail(&buffer), Some(report));
/// assert_eq!(parse_counter_tail(&buffer[1..]), None);
/// ```
pub fn parse_counter_tail(buffer: &[u8]) -> Option<SpeculationReport> {
    split_counter_tail(buffer).map(|(_, report)| report)
}

/// Splits `buffer` into the kernel's payload and the report in its counter tail, with
/// the same refusals as [`parse_counter_tail`].
pub fn split_counter_tail(buffer: &[u8]) -> Option<(&[u8], SpeculationReport)> {
    if buffer.len() < COUNTER_TAIL_BYTES || buffer.len() % 4 != 0 {
        return None;
    }
    let (payload, tail) = buffer.split_at(buffer.len() - COUNTER_TAIL_BYTES);
    let (committed, rolled_back) = tail.split_at(4);
    let word = |bytes: &[u8]| <[u8; 4]>::try_from(bytes).ok().map(u32::from_le_bytes);
    Some((
        payload,
        SpeculationReport::from_counts(word(committed)?, word(rolled_back)?),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rates_of_typical_reports() {
        let r = SpeculationReport::from_counts(3, 1);
        assert_eq!(r.attempted_tiles(), 4);
        assert_eq!(r.commit_rate_ppm(), 750_000);
        assert_eq!(r.commit_rate_pct(), 75);
        assert!(r.worthwhile(75));
        assert!(!r.worthwhile(76));
        assert_eq!(SpeculationReport::from_counts(0, 9).commit_rate_ppm(), 0);
        assert_eq!(
            SpeculationReport::from_counts(9, 0).commit_rate_ppm(),
            1_000_000
        );
    }

    #[test]
    fn empty_report_has_rate_zero() {
        let e = SpeculationReport::empty();
        assert!(e.is_empty());
        assert_eq!(e, SpeculationReport::default());
        assert_eq!(e.attempted_tiles(), 0);
        assert_eq!(e.commit_rate_ppm(), 0);
        assert!(e.worthwhile(0));
        assert!(!e.worthwhile(1));
    }

    #[test]
    fn extreme_counts_neither_panic_nor_skew() {
        let r = SpeculationReport::from_counts(u32::MAX, 1);
        assert_eq!(r.attempted_tiles(), u32::MAX);
        assert_eq!(r.commit_rate_ppm(), 999_999);
        assert!(!r.worthwhile(u32::MAX));
        assert!(SpeculationReport::from_counts(1, 0).worthwhile(100));
        assert!(!SpeculationReport::from_counts(1, 0).worthwhile(101));
    }

    #[test]
    fn counter_tail_layout_is_committed_then_rolled_back_le() {
        let tail = encode_counter_tail(SpeculationReport::from_counts(0x0403_0201, 0x0807_0605));
        assert_eq!(tail, [1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn counter_tail_refusals() {
        assert_eq!(parse_counter_tail(&[]), None);
        assert_eq!(parse_counter_tail(&[0; 4]), None);
        assert_eq!(parse_counter_tail(&[0; 7]), None);
        assert_eq!(parse_counter_tail(&[0; 10]), None);
        assert_eq!(
            parse_counter_tail(&[0; 8]),
            Some(SpeculationReport::empty())
        );
    }

    #[test]
    fn split_keeps_the_payload() {
        let mut buffer = vec![9u8; 12];
        buffer.extend_from_slice(&encode_counter_tail(SpeculationReport::from_counts(2, 5)));
        let (payload, report) = split_counter_tail(&buffer).expect("valid buffer");
        assert_eq!(payload, &[9u8; 12][..]);
        assert_eq!(report, SpeculationReport::from_counts(2, 5));
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_obeys_the_refusals(buffer in proptest::collection::vec(any::<u8>(), 0..64)) {
            let parsed = parse_counter_tail(&buffer);
            let acceptable = buffer.len() >= COUNTER_TAIL_BYTES && buffer.len() % 4 == 0;
            prop_assert_eq!(parsed.is_some(), acceptable);
            if let Some(report) = parsed {
                prop_assert_eq!(&encode_counter_tail(report)[..], &buffer[buffer.len() - 8..]);
            }
        }

        #[test]
        fn encode_then_parse_round_trips(
            committed in any::<u32>(),
            rolled_back in any::<u32>(),
            payload_words in 0usize..8,
        ) {
            let report = SpeculationReport::from_counts(committed, rolled_back);
            let mut buffer = vec![0xA5u8; payload_words * 4];
            buffer.extend_from_slice(&encode_counter_tail(report));
            prop_assert_eq!(parse_counter_tail(&buffer), Some(report));
            let (payload, split) = split_counter_tail(&buffer).expect("valid buffer");
            prop_assert_eq!(payload.len(), payload_words * 4);
            prop_assert_eq!(split, report);
        }

        #[test]
        fn rate_is_bounded_and_consistent(committed in any::<u32>(), rolled_back in any::<u32>(), pct in any::<u32>()) {
            let r = SpeculationReport::from_counts(committed, rolled_back);
            let ppm = r.commit_rate_ppm();
            prop_assert!(ppm <= 1_000_000);
            prop_assert_eq!(r.commit_rate_pct(), ppm / 10_000);
            prop_assert_eq!(r.worthwhile(pct), u128::from(ppm) >= u128::from(pct) * 10_000);
        }
    }
}
