//! The text table `photofinish run` prints at the end: one row per kernel with its
//! verdict, samples to verdict, both variants' mean times, the speedup and how many
//! answers were verified. Formatting only: it renders a [`RunReport`] into a string.

use std::fmt::Write as _;

use super::args::format_bytes;
use super::report::{KernelReport, RunReport};

const HEADERS: [&str; 7] = [
    "kernel",
    "verdict",
    "samples to verdict",
    "conservative mean",
    "speculative mean",
    "speedup",
    "verified",
];

/// A duration in the unit that keeps 3 significant digits readable.
pub(crate) fn format_ns(ns: u64) -> String {
    let n = ns as f64;
    if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.1} µs", n / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2} ms", n / 1e6)
    } else {
        format!("{:.2} s", n / 1e9)
    }
}

/// The verdict cell: the verdict and, where it says something, why.
fn verdict_cell(k: &KernelReport) -> String {
    if k.verdict_reason.is_empty() {
        k.verdict.as_str().to_string()
    } else {
        format!("{} ({})", k.verdict.as_str(), k.verdict_reason)
    }
}

fn row(k: &KernelReport) -> [String; 7] {
    let opt_ns = |v: Option<u64>| v.map_or_else(|| "-".to_string(), format_ns);
    [
        k.kernel.clone(),
        verdict_cell(k),
        match (k.samples_to_verdict, k.from_cache) {
            (Some(n), _) => n.to_string(),
            (None, true) => "cached".to_string(),
            (None, false) => "-".to_string(),
        },
        opt_ns(k.conservative_mean_ns),
        opt_ns(k.speculative_mean_ns),
        k.speedup
            .map_or_else(|| "-".to_string(), |s| format!("{s:.2}x")),
        format!("{}/{}", k.verified, k.batches),
    ]
}

/// The whole table with a one-line heading naming the backend and the run's size.
pub(crate) fn render(report: &RunReport) -> String {
    let rows: Vec<[String; 7]> = report.kernels.iter().map(row).collect();
    let mut widths = HEADERS.map(|h| h.chars().count());
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = writeln!(
        out,
        "backend: {} ({}) — {} workers, {} batches of {} per kernel",
        report.backend,
        report.devices.join(", "),
        report.workers,
        report.batches,
        format_bytes(u128::from(report.size_bytes)),
    );
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            let pad = w.saturating_sub(cell.chars().count());
            // Text left, numbers right.
            if i < 2 {
                s.push_str(cell);
                s.extend(std::iter::repeat_n(' ', pad));
            } else {
                s.extend(std::iter::repeat_n(' ', pad));
                s.push_str(cell);
            }
        }
        s.trim_end().to_string()
    };
    let _ = writeln!(out, "{}", line(&HEADERS.map(String::from)));
    let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
    let _ = writeln!(out, "{}", "-".repeat(total));
    for r in &rows {
        let _ = writeln!(out, "{}", line(r));
    }
    for k in report.kernels.iter().filter(|k| k.mismatches_caught > 0) {
        let _ = writeln!(
            out,
            "{}: the speculative variant disagreed {} time(s); its answers were discarded",
            k.kernel, k.mismatches_caught
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::report::{ArmName, KernelTally, Verdict};
    use super::*;

    fn report() -> RunReport {
        let mut adopted = KernelTally::new("reduce", "reduce/scalar", "reduce/vec4");
        for _ in 0..8 {
            adopted.push(Some(2_000), Some(1_000), ArmName::Conservative, true, true);
        }
        adopted.verdict(Verdict::Adopted, "measured", false);
        let mut cached = KernelTally::new("scan", "scan/check", "scan/fused");
        cached.started_from_cache(Verdict::Rejected);
        cached.push(Some(1_500_000), None, ArmName::Conservative, false, true);
        cached.reverified();
        cached.mismatch_caught();
        RunReport {
            backend: "cpu".into(),
            backend_reason: "asked for".into(),
            devices: vec!["cpu (rayon)".into()],
            workers: 2,
            batches: 8,
            size_bytes: 64 * 1024,
            autotune_file: None,
            kernels: vec![adopted.finish(), cached.finish()],
        }
    }

    #[test]
    fn durations_pick_a_readable_unit() {
        assert_eq!(format_ns(999), "999 ns");
        assert_eq!(format_ns(1_500), "1.5 µs");
        assert_eq!(format_ns(2_345_678), "2.35 ms");
        assert_eq!(format_ns(3_000_000_000), "3.00 s");
    }

    #[test]
    fn the_table_has_a_row_per_kernel_with_every_fact() {
        let text = render(&report());
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("backend: cpu") && lines[0].contains("64KiB"));
        for h in HEADERS {
            assert!(lines[1].contains(h), "header {h} in {}", lines[1]);
        }
        let reduce = lines.iter().find(|l| l.starts_with("reduce")).expect("row");
        for cell in [
            "adopted (measured)",
            " 8 ",
            "2.0 µs",
            "1.0 µs",
            "2.00x",
            "8/8",
        ] {
            assert!(reduce.contains(cell), "{cell:?} in {reduce:?}");
        }
        let scan = lines.iter().find(|l| l.starts_with("scan")).expect("row");
        for cell in [
            "rejected (from cache, re-verified)",
            "cached",
            "1.50 ms",
            "1/1",
        ] {
            assert!(scan.contains(cell), "{cell:?} in {scan:?}");
        }
        assert!(text.contains("scan: the speculative variant disagreed 1 time(s)"));
    }

    #[test]
    fn columns_line_up() {
        let text = render(&report());
        let lines: Vec<&str> = text.lines().skip(1).collect();
        // The "verified" column is right-aligned, so every row ends at the same width.
        let widths: Vec<usize> = lines[2..4].iter().map(|l| l.chars().count()).collect();
        assert_eq!(widths[0], widths[1]);
        assert_eq!(lines[1].chars().count(), widths[0]);
    }
}
