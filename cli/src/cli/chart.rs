//! The convergence chart of one kernel, or of one tuning key of it: both variants'
//! kernel time per sample, with the point where the verdict came marked, drawn as SVG
//! with plotters. It renders a [`KernelReport`] (or one of its [`KeyReport`]s) into an
//! SVG string; writing the file is the caller's business.

use plotters::prelude::*;

use super::report::{KernelReport, KeyReport, Verdict};

/// Width and height of a chart in pixels.
pub(crate) const CHART_SIZE: (u32, u32) = (900, 500);

const CONSERVATIVE: RGBColor = RGBColor(31, 119, 180);
const SPECULATIVE: RGBColor = RGBColor(255, 127, 14);
const VERDICT: RGBColor = RGBColor(214, 39, 40);

/// Why a chart could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("drawing the chart of `{kernel}` failed: {reason}; rerun without `--report`, or report this as a bug")]
pub(crate) struct ChartError {
    kernel: String,
    reason: String,
}

/// The SVG document of `kernel`'s chart: x is the sample index, y the kernel time in
/// microseconds; a line per variant (points where a sample has a time), a vertical line
/// at `samples_to_verdict` labelled with the verdict.
pub(crate) fn render_svg(kernel: &KernelReport) -> Result<String, ChartError> {
    let view = View {
        title: format!(
            "{}: {} vs {}",
            kernel.kernel, kernel.conservative_variant, kernel.speculative_variant
        ),
        conservative_variant: &kernel.conservative_variant,
        speculative_variant: &kernel.speculative_variant,
        points: kernel
            .samples
            .iter()
            .map(|s| (s.index, s.conservative_ns, s.speculative_ns))
            .collect(),
        verdict: kernel.verdict,
        verdict_at: kernel.samples_to_verdict,
    };
    render_view(&kernel.kernel, &view)
}

/// The SVG document of the chart of one key of `kernel`: x is the sample index among
/// that key's batches. The verdict line stands at the key's race sample that decided
/// it (`samples_to_verdict`, counted among the key's samples with both arms' times).
pub(crate) fn render_key_svg(kernel: &KernelReport, key: &KeyReport) -> Result<String, ChartError> {
    let mine = kernel
        .samples
        .iter()
        .filter(|s| s.key.as_deref() == Some(key.key.as_str()));
    let points: Vec<(u32, Option<u64>, Option<u64>)> = (1u32..)
        .zip(mine)
        .map(|(i, s)| (i, s.conservative_ns, s.speculative_ns))
        .collect();
    let verdict_at = key.samples_to_verdict.map(|n| {
        points
            .iter()
            .filter(|(_, c, s)| c.is_some() && s.is_some())
            .nth(n.saturating_sub(1) as usize)
            .map_or(n, |&(i, _, _)| i)
    });
    let view = View {
        title: format!(
            "{} at {}: {} vs {}",
            kernel.kernel, key.key, kernel.conservative_variant, kernel.speculative_variant
        ),
        conservative_variant: &kernel.conservative_variant,
        speculative_variant: &kernel.speculative_variant,
        points,
        verdict: key.verdict,
        verdict_at,
    };
    render_view(&format!("{} at {}", kernel.kernel, key.key), &view)
}

/// What a chart draws.
struct View<'a> {
    title: String,
    conservative_variant: &'a str,
    speculative_variant: &'a str,
    /// (x, conservative time, speculative time) per sample.
    points: Vec<(u32, Option<u64>, Option<u64>)>,
    verdict: Verdict,
    verdict_at: Option<u32>,
}

fn render_view(name: &str, view: &View<'_>) -> Result<String, ChartError> {
    let mut svg = String::new();
    draw(view, &mut svg).map_err(|reason| ChartError {
        kernel: name.to_string(),
        reason,
    })?;
    Ok(svg)
}

fn draw(k: &View<'_>, svg: &mut String) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let us = |ns: u64| ns as f64 / 1_000.0;
    let conservative: Vec<(u32, f64)> = k
        .points
        .iter()
        .filter_map(|&(x, c, _)| c.map(|ns| (x, us(ns))))
        .collect();
    let speculative: Vec<(u32, f64)> = k
        .points
        .iter()
        .filter_map(|&(x, _, s)| s.map(|ns| (x, us(ns))))
        .collect();
    let y_max = conservative
        .iter()
        .chain(&speculative)
        .map(|&(_, y)| y)
        .fold(0.0f64, f64::max);
    // Headroom above the highest sample; a 1 µs axis when there are no times at all.
    let y_top = if y_max > 0.0 { y_max * 1.1 } else { 1.0 };
    let x_last = k.points.iter().map(|p| p.0).max().unwrap_or(0).max(1);

    let root = SVGBackend::with_string(svg, CHART_SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&k.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0u32..x_last + 1, 0f64..y_top)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("sample")
        .y_desc("kernel time (µs)")
        .draw()
        .map_err(|e| err(&e))?;

    for (points, color, label) in [
        (&conservative, CONSERVATIVE, k.conservative_variant),
        (&speculative, SPECULATIVE, k.speculative_variant),
    ] {
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(
                points
                    .iter()
                    .map(|&(x, y)| Circle::new((x, y), 3, color.filled())),
            )
            .map_err(|e| err(&e))?;
    }

    if let Some(at) = k.verdict_at {
        let label = format!("{} after {at} samples", k.verdict.as_str());
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(at, 0.0), (at, y_top)],
                VERDICT.stroke_width(2),
            )))
            .map_err(|e| err(&e))?
            .label(label)
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], VERDICT));
    }

    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::report::{ArmName, KernelTally, Verdict};
    use super::*;

    fn kernel(samples: u32, verdict_at: Option<u32>) -> KernelReport {
        let mut t = KernelTally::new("histogram", "histogram/global", "histogram/private");
        for i in 0..samples {
            t.push(
                Some(2_000 + u64::from(i)),
                Some(1_000),
                ArmName::Conservative,
                true,
                true,
            );
            if Some(i + 1) == verdict_at {
                t.verdict(Verdict::Adopted, "measured", false);
            }
        }
        t.finish()
    }

    #[test]
    fn the_chart_is_an_svg_document_with_both_variants_and_the_verdict() {
        let svg = render_svg(&kernel(12, Some(8))).expect("draws");
        assert!(svg.trim_start().starts_with("<svg"), "{}", &svg[..80]);
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("histogram/global") && svg.contains("histogram/private"));
        assert!(svg.contains("adopted after 8 samples"));
        // A point per sample per variant.
        assert!(svg.matches("<circle").count() >= 24);
    }

    #[test]
    fn an_undecided_kernel_has_no_verdict_line() {
        let svg = render_svg(&kernel(3, None)).expect("draws");
        assert!(!svg.contains("samples</text>"));
        assert!(svg.contains("<svg"));
    }

    #[test]
    fn a_kernel_without_samples_still_draws_an_empty_chart() {
        let k = KernelTally::new("scan", "scan/check", "scan/fused").finish();
        let svg = render_svg(&k).expect("draws");
        assert!(svg.contains("scan: scan/check vs scan/fused"));
        assert_eq!(svg.matches("<circle").count(), 0);
    }
}
