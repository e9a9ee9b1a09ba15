//! The text table `photofinish run` prints at the end: one row per (kernel, tuning
//! key) with the key's verdict, the prior it started from, its races, samples to
//! verdict, both variants' mean times, the speedup and how many of its answers were
//! verified. A kernel without keys (a report of an older run) gets one row of its
//! summary. Formatting only: it renders a [`RunReport`] into a string.

use std::fmt::Write as _;

use super::args::format_bytes;
use super::report::{KernelReport, KeyReport, RunReport, Verdict};

const COLUMNS: usize = 10;

const HEADERS: [&str; COLUMNS] = [
    "kernel",
    "key",
    "verdict",
    "prior",
    "races",
    "samples to verdict",
    "conservative mean",
    "speculative mean",
    "speedup",
    "verified",
];

/// Columns printed left-aligned (text); the others are numbers, right-aligned.
const TEXT_COLUMNS: usize = 4;

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

/// The verdict and, where it says something, why.
fn verdict_cell(verdict: Verdict, reason: &str) -> String {
    if reason.is_empty() {
        verdict.as_str().to_string()
    } else {
        format!("{} ({reason})", verdict.as_str())
    }
}

fn opt_ns(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), format_ns)
}

fn speedup_cell(s: Option<f64>) -> String {
    s.map_or_else(|| "-".to_string(), |s| format!("{s:.2}x"))
}

/// The summary row of a kernel that has no keys.
fn kernel_row(k: &KernelReport) -> [String; COLUMNS] {
    [
        k.kernel.clone(),
        "-".to_string(),
        verdict_cell(k.verdict, &k.verdict_reason),
        "-".to_string(),
        k.raced.to_string(),
        match (k.samples_to_verdict, k.from_cache) {
            (Some(n), _) => n.to_string(),
            (None, true) => "cached".to_string(),
            (None, false) => "-".to_string(),
        },
        opt_ns(k.conservative_mean_ns),
        opt_ns(k.speculative_mean_ns),
        speedup_cell(k.speedup),
        format!("{}/{}", k.verified, k.batches),
    ]
}

/// The row of one key of `k`.
fn key_row(k: &KernelReport, key: &KeyReport) -> [String; COLUMNS] {
    let decided = key.verdict != Verdict::Undecided;
    [
        k.kernel.clone(),
        key.key.clone(),
        verdict_cell(key.verdict, &key.verdict_reason),
        key.prior.clone(),
        key.races.to_string(),
        match (key.samples_to_verdict, key.prior_source.as_deref()) {
            (Some(n), _) => n.to_string(),
            (None, Some("file" | "fleet")) if decided => "cached".to_string(),
            (None, Some(_)) if decided => "prior".to_string(),
            _ => "-".to_string(),
        },
        opt_ns(key.conservative_mean_ns),
        opt_ns(key.speculative_mean_ns),
        speedup_cell(key.speedup),
        format!("{}/{}", key.verified, key.batches),
    ]
}

/// The run's sizes: `64KiB`, or `4KiB, 8MiB`.
fn sizes_text(report: &RunReport) -> String {
    if report.sizes_bytes.is_empty() {
        return format_bytes(u128::from(report.size_bytes));
    }
    let sizes: Vec<String> = report
        .sizes_bytes
        .iter()
        .map(|&b| format_bytes(u128::from(b)))
        .collect();
    sizes.join(", ")
}

/// The whole table with a one-line heading naming the backend and the run's sizes.
pub(crate) fn render(report: &RunReport) -> String {
    let rows: Vec<[String; COLUMNS]> = report
        .kernels
        .iter()
        .flat_map(|k| {
            if k.keys.is_empty() {
                vec![kernel_row(k)]
            } else {
                k.keys.iter().map(|key| key_row(k, key)).collect()
            }
        })
        .collect();
    let mut widths = HEADERS.map(|h| h.chars().count());
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let batches = if report.sizes_bytes.len() > 1 {
        format!(
            "{} batches per kernel, sizes {} in turn",
            report.batches,
            sizes_text(report)
        )
    } else {
        format!(
            "{} batches of {} per kernel",
            report.batches,
            sizes_text(report)
        )
    };
    // Writing into a String cannot fail.
    let _ = writeln!(
        out,
        "backend: {} ({}) — {} workers, {batches}",
        report.backend,
        report.devices.join(", "),
        report.workers,
    );
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            let pad = w.saturating_sub(cell.chars().count());
            if i < TEXT_COLUMNS {
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
            sizes_bytes: vec![64 * 1024],
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
    fn a_kernel_with_keys_gets_a_row_per_key() {
        use super::super::report::KeyReport;
        let key = |name: &str, verdict: Verdict, prior: &str| KeyReport {
            key: name.into(),
            size_class_bytes: 4096,
            app_key: None,
            verdict,
            verdict_reason: String::new(),
            variant: 1,
            races: 8,
            from_prior: prior != "-",
            prior_source: (prior != "-").then(|| "neighbour".into()),
            prior_key: None,
            prior: prior.into(),
            reraces: 0,
            samples_to_verdict: (prior == "-").then_some(8),
            batches: 4,
            raced: 4,
            verified: 4,
            conservative_mean_ns: Some(2_000),
            speculative_mean_ns: Some(1_000),
            speedup: Some(2.0),
        };
        let mut run = report();
        run.sizes_bytes = vec![4096, 8 << 20];
        run.kernels[0].keys = vec![
            key("4KiB", Verdict::Rejected, "-"),
            key("8MiB", Verdict::Adopted, "neighbour 4KiB"),
        ];
        let text = render(&run);
        assert!(text
            .lines()
            .next()
            .is_some_and(|l| l.contains("sizes 4KiB, 8MiB in turn")));
        let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("reduce")).collect();
        assert_eq!(rows.len(), 2, "{text}");
        assert!(
            rows[0].contains("4KiB") && rows[0].contains("rejected"),
            "{text}"
        );
        assert!(
            rows[1].contains("8MiB")
                && rows[1].contains("neighbour 4KiB")
                && rows[1].contains("prior"),
            "{text}"
        );
        assert!(rows.iter().all(|r| r.ends_with("4/4")), "{text}");
        // The kernel without keys keeps its summary row.
        // (Its mismatch note below the table starts with "scan:".)
        let scan_rows = text
            .lines()
            .filter(|l| l.split_whitespace().next() == Some("scan"))
            .count();
        assert_eq!(scan_rows, 1, "{text}");
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
