//! `photofinish run`: the main job. It runs the built-in workloads through the engine
//! (a thin client of the library's public API: it builds an [`photofinish::Engine`],
//! registers, submits, waits and listens to events, as any embedding application
//! could), then prints a table with a row per (kernel, tuning key), or JSON, and
//! optionally writes a report directory with `report.json` and an SVG convergence
//! chart per (kernel, tuning key).
//!
//! - `args`: the options and their validation (`--size 64KiB`, `--sizes`, `--batches`).
//! - `report`: the one model every output is a view of.
//! - `table`, `chart`: the text table and the SVG chart.
//! - `driver`: submitting batches and collecting samples from answers and events.
//!
//! Nothing here panics on bad input: every failure is a [`RunError`] whose message says
//! what to do, printed as one line with a non-zero exit. What can be checked before the
//! run is: the `--report` and `--autotune-file` directories are created and written to
//! (a probe file), and every `--size`/`--sizes` size is checked against every device's
//! storage-buffer limit.
//! A file the user asked for that could not be written after the run (the report, an
//! autotune save) is an error too, after the table: nothing fails silently.

pub(crate) mod args;
mod chart;
mod driver;
mod report;
mod table;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

pub(crate) use args::RunArgs;
pub(crate) use report::RunReport;

/// Runs `photofinish run`: the workloads through the engine, then the table or JSON on
/// stdout and, with `--report`, the report directory.
pub(crate) fn run(args: &RunArgs, backend: photofinish::BackendChoice) -> Result<(), RunError> {
    if let Some(dir) = &args.report {
        check_writable_dir(dir).map_err(|(path, source)| RunError::ReportDir { path, source })?;
    }
    let progress = if args.json {
        driver::Progress::Quiet
    } else {
        driver::Progress::Bars
    };
    let ran = driver::run(args, backend, progress)?;
    let report = &ran.report;
    let mut out = std::io::stdout().lock();
    print_report(&mut out, report, args.json)?;
    let written = args.report.as_ref().map(|dir| {
        write_report_dir(dir, report).and_then(|files| {
            if !args.json {
                writeln!(out, "report: {} files in {}", files.len(), dir.display())?;
            }
            Ok(())
        })
    });
    // Every failure is told: the report's (or the last autotune one) as the error,
    // the others each on a line of their own first.
    let mut failures: Vec<RunError> = ran
        .unsaved
        .into_iter()
        .map(|u| RunError::AutotuneSave {
            path: u.path,
            error: u.error,
        })
        .collect();
    let error = match written {
        Some(Err(report_error)) => Some(report_error),
        _ => failures.pop(),
    };
    for other in failures {
        let _ = writeln!(std::io::stderr(), "photofinish: error: {other}");
    }
    error.map_or(Ok(()), Err)
}

/// Creates `dir` if missing and writes (then removes) a small probe file in it, so a
/// directory that cannot take files fails before the run rather than after it. The
/// error names the path that failed.
pub(crate) fn check_writable_dir(dir: &Path) -> Result<(), (PathBuf, std::io::Error)> {
    fs::create_dir_all(dir).map_err(|e| (dir.to_path_buf(), e))?;
    let probe = dir.join(format!(".photofinish-probe-{}", std::process::id()));
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .and_then(|mut file| {
            file.write_all(b"photofinish checks this directory takes files\n")?;
            file.sync_all()
        });
    // Best effort: the probe may not exist (creation failed).
    let _ = fs::remove_file(&probe);
    written.map_err(|e| (probe, e))
}

/// Why `photofinish run` failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    /// The engine could not run the workloads.
    #[error(transparent)]
    Driver(#[from] driver::DriverError),
    /// The report directory or a file in it could not be written.
    #[error("cannot write {path}: {source}; pass a writable directory to `--report`")]
    ReportDir {
        /// The path.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// An autotune save failed, so this run's verdicts are not in the file the user
    /// asked for (`--autotune-file`).
    #[error("could not save this run's verdicts to {path} (`--autotune-file`): {error}")]
    AutotuneSave {
        /// The autotune file.
        path: PathBuf,
        /// Why (the last save's error).
        error: std::sync::Arc<photofinish::autotune::AutotuneError>,
    },
    /// A chart could not be drawn.
    #[error(transparent)]
    Chart(#[from] chart::ChartError),
    /// JSON encoding failed.
    #[error("encoding the report as JSON failed: {0}")]
    Json(#[from] serde_json::Error),
    /// Writing to stdout failed.
    #[error("writing the output failed: {0}")]
    Output(#[from] std::io::Error),
}

/// The report as pretty JSON (what `--json` prints and `report.json` holds).
pub(crate) fn report_json(report: &RunReport) -> Result<String, RunError> {
    Ok(serde_json::to_string_pretty(report)?)
}

/// Prints the report: JSON with `--json`, else the table.
pub(crate) fn print_report(
    out: &mut impl Write,
    report: &RunReport,
    json: bool,
) -> Result<(), RunError> {
    if json {
        writeln!(out, "{}", report_json(report)?)?;
    } else {
        write!(out, "{}", table::render(report))?;
    }
    Ok(())
}

/// The file name of a kernel's chart: its name with anything but `[A-Za-z0-9_-]`
/// replaced, so a kernel name can never leave the report directory.
pub(crate) fn chart_file_name(kernel: &str) -> String {
    format!("{}.svg", safe_name(kernel))
}

/// The file name of the chart of one tuning key of a kernel: `reduce-4KiB.svg`,
/// `reduce-64KiB_app_7.svg` (`/` and `:` replaced like anything else unsafe).
pub(crate) fn key_chart_file_name(kernel: &str, key: &str) -> String {
    format!("{}-{}.svg", safe_name(kernel), safe_name(key))
}

fn safe_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes `report.json` and one chart per (kernel, tuning key) into `dir` (created if
/// missing); a kernel without keys gets one chart under its own name.
/// Returns the files written. Each file is written whole to a temporary name and then
/// renamed, so a reader never sees half a file; a write that fails (a full disk)
/// removes its temporary file.
pub(crate) fn write_report_dir(dir: &Path, report: &RunReport) -> Result<Vec<PathBuf>, RunError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RunError::ReportDir { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let mut written = Vec::with_capacity(report.kernels.len() + 1);
    let json_path = dir.join("report.json");
    write_whole(&json_path, report_json(report)?.as_bytes()).map_err(io(&json_path))?;
    written.push(json_path);
    for kernel in &report.kernels {
        let charts = if kernel.keys.is_empty() {
            vec![(chart_file_name(&kernel.kernel), chart::render_svg(kernel)?)]
        } else {
            let mut charts = Vec::with_capacity(kernel.keys.len());
            for key in &kernel.keys {
                charts.push((
                    key_chart_file_name(&kernel.kernel, &key.key),
                    chart::render_key_svg(kernel, key)?,
                ));
            }
            charts
        };
        for (name, svg) in charts {
            let path = dir.join(name);
            write_whole(&path, svg.as_bytes()).map_err(io(&path))?;
            written.push(path);
        }
    }
    Ok(written)
}

fn write_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let written = fs::write(&tmp, bytes).and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        // Best effort: the temporary file may not exist (creation failed).
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::report::{ArmName, KernelTally, Verdict};
    use super::*;

    fn report() -> RunReport {
        let mut k = KernelTally::new("reduce", "reduce/scalar", "reduce/vec4");
        for _ in 0..10 {
            k.push(Some(900), Some(400), ArmName::Conservative, true, true);
        }
        k.verdict(Verdict::Adopted, "measured", false);
        RunReport {
            backend: "cpu".into(),
            backend_reason: "asked for".into(),
            devices: vec!["cpu".into()],
            workers: 1,
            batches: 10,
            size_bytes: 1024,
            sizes_bytes: vec![1024],
            autotune_file: None,
            kernels: vec![k.finish()],
        }
    }

    #[test]
    fn chart_names_cannot_escape_the_directory() {
        assert_eq!(chart_file_name("histogram"), "histogram.svg");
        assert_eq!(chart_file_name("../etc/passwd"), "___etc_passwd.svg");
        assert_eq!(chart_file_name("a b/c"), "a_b_c.svg");
        assert_eq!(key_chart_file_name("reduce", "4KiB"), "reduce-4KiB.svg");
        assert_eq!(
            key_chart_file_name("reduce", "64KiB/app:7"),
            "reduce-64KiB_app_7.svg"
        );
        assert_eq!(key_chart_file_name("../x", "../y"), "___x-___y.svg");
    }

    #[test]
    fn the_report_directory_holds_json_and_a_chart_per_kernel() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("nested/report");
        let files = write_report_dir(&target, &report()).expect("writes");
        assert_eq!(
            files,
            [target.join("report.json"), target.join("reduce.svg")]
        );
        let json = fs::read_to_string(&files[0]).expect("reads");
        let back: RunReport = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, report());
        let svg = fs::read_to_string(&files[1]).expect("reads");
        assert!(svg.contains("adopted after 10 samples"));
        let leftovers: Vec<_> = fs::read_dir(&target)
            .expect("lists")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn an_unwritable_report_directory_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("a-file");
        fs::write(&file, b"x").expect("writes");
        let err = write_report_dir(&file.join("sub"), &report()).expect_err("a file is in the way");
        let message = err.to_string();
        assert!(
            message.contains("a-file") && message.contains("--report"),
            "{message}"
        );
    }

    #[test]
    fn json_and_table_tell_the_same_verdict() {
        let mut json = Vec::new();
        print_report(&mut json, &report(), true).expect("prints");
        let value: serde_json::Value = serde_json::from_slice(&json).expect("parses");
        assert_eq!(value["kernels"][0]["verdict"], "adopted");
        assert_eq!(value["kernels"][0]["samples_to_verdict"], 10);
        let mut text = Vec::new();
        print_report(&mut text, &report(), false).expect("prints");
        let text = String::from_utf8(text).expect("utf-8");
        assert!(text.contains("adopted (measured)"));
    }
}
