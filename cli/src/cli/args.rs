//! The options of `photofinish run` and their validation: byte sizes such as `64KiB`,
//! batch counts, workload names. Parsing only: nothing here opens a device or a file.

use std::fmt;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

/// The built-in workloads `run` knows by name.
pub(crate) const WORKLOAD_NAMES: [&str; 4] = ["histogram", "reduce", "scan", "sum"];

/// The largest `--size` a built-in workload accepts (2 GiB, the library's
/// `kernels::MAX_INPUT_BYTES`).
pub(crate) const MAX_SIZE_BYTES: u64 = 1 << 31;

/// The most batches one `run` submits per workload.
pub(crate) const MAX_BATCHES: u32 = 1_000_000;

/// Options of `photofinish run`.
#[derive(Debug, Clone, Args)]
pub(crate) struct RunArgs {
    /// Which built-in workloads to run (repeat or comma-separate; `all` for every one).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
    pub(crate) workload: Vec<WorkloadArg>,

    /// Batches to submit per workload (1 to 1000000).
    // `allow_negative_numbers`: `--batches -3` reaches `parse_batches` and its message,
    // rather than clap's "unexpected argument '-3'".
    #[arg(long, default_value_t = 64, value_parser = parse_batches, allow_negative_numbers = true)]
    pub(crate) batches: u32,

    /// Input bytes per batch: a number with an optional unit, e.g. `4096`, `64KiB`,
    /// `16MiB`, `1GiB` (binary) or `64KB`, `16MB` (decimal); at most 2GiB, and at most
    /// what the device takes in one storage buffer (checked before the run).
    // `allow_hyphen_values`: `--size -5` reaches `parse_size` and its message.
    #[arg(long, default_value = "1MiB", value_parser = parse_size, allow_hyphen_values = true)]
    pub(crate) size: u64,

    /// Several input sizes, comma-separated (e.g. `4KiB,256KiB,8MiB`): one trace per
    /// workload whose batches take the sizes in turn, so the engine learns a verdict
    /// per tuning key (size class). Each size is written and checked as `--size` is;
    /// `--batches` counts the batches of all sizes together. Not with `--size`.
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = parse_sizes_entry,
        allow_hyphen_values = true,
        conflicts_with = "size",
    )]
    pub(crate) sizes: Option<Vec<u64>>,

    /// Print the results as JSON on stdout instead of progress bars and a table.
    #[arg(long)]
    pub(crate) json: bool,

    /// Write `report.json` and one SVG chart per kernel into this directory (created if
    /// missing, and checked writable before the run).
    #[arg(long, value_name = "DIR")]
    pub(crate) report: Option<PathBuf>,

    /// Where verdicts persist: a directory (created if missing) holding one autotune
    /// file per device. Stored verdicts are loaded at the start, re-verified by a race
    /// before they are trusted, and saved as they change, merged with what other
    /// processes saved there. The directory is checked writable before the run; a save
    /// that fails (full disk, a file of a newer photofinish) makes the run exit
    /// non-zero after its table. Without it nothing persists.
    #[arg(long, value_name = "PATH")]
    pub(crate) autotune_file: Option<PathBuf>,

    /// Share verdicts with other hosts through the fleet store at this Redis URL
    /// (`redis://host:port/db`, or `redis+cluster://host:port,host:port`): a verdict
    /// another host reached is a prior here (an adopted one re-verified by this run's
    /// races before it is trusted, a rejected one not raced), and this run's verdicts
    /// are published. Overrides `PHOTOFINISH_FLEET_URL`. A Redis that does not answer
    /// is not fatal: the run goes on with its local verdicts.
    #[arg(long, value_name = "URL")]
    pub(crate) fleet: Option<String>,

    /// Seed of the generated inputs (the same seed gives the same inputs).
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
}

impl RunArgs {
    /// The input sizes of the trace, in the order batches take them: `--sizes` when
    /// given (each once, first occurrence kept), else `--size` alone.
    pub(crate) fn trace_sizes(&self) -> Vec<u64> {
        match &self.sizes {
            Some(sizes) if !sizes.is_empty() => {
                let mut once = Vec::with_capacity(sizes.len());
                for &size in sizes {
                    if !once.contains(&size) {
                        once.push(size);
                    }
                }
                once
            }
            _ => vec![self.size],
        }
    }

    /// The option the sizes came from, for messages: `--sizes` or `--size`.
    pub(crate) fn size_option(&self) -> &'static str {
        if self.sizes.is_some() {
            "--sizes"
        } else {
            "--size"
        }
    }

    /// The workload names to run, in the canonical order, each once (`fsum`, which
    /// `all` leaves out, last).
    pub(crate) fn workload_names(&self) -> Vec<&'static str> {
        let all = self.workload.contains(&WorkloadArg::All);
        WORKLOAD_NAMES
            .iter()
            .chain(&["fsum"])
            .copied()
            .filter(|name| {
                (all && *name != "fsum") || self.workload.iter().any(|w| w.name() == Some(*name))
            })
            .collect()
    }
}

/// A `--workload` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum WorkloadArg {
    /// Every built-in workload.
    All,
    /// 256-bin histogram: global atomics vs workgroup-shared privatisation.
    Histogram,
    /// Sum of u32: scalar loads vs packed vec4 loads.
    Reduce,
    /// Find every occurrence of a byte pattern: per-position check vs fused tiled
    /// prefilter + confirm.
    Scan,
    /// Sum of u32 whose winner flips with the batch's size: a fixed wide grid vs one
    /// workgroup.
    Sum,
    /// Sum of f32 compared within a tolerance: sequential vs reassociated (`all` leaves
    /// it out).
    Fsum,
}

impl WorkloadArg {
    /// The workload's library name (`None` for `all`).
    pub(crate) fn name(self) -> Option<&'static str> {
        match self {
            WorkloadArg::All => None,
            WorkloadArg::Histogram => Some("histogram"),
            WorkloadArg::Reduce => Some("reduce"),
            WorkloadArg::Scan => Some("scan"),
            WorkloadArg::Sum => Some("sum"),
            WorkloadArg::Fsum => Some("fsum"),
        }
    }
}

/// Why a `--size` or `--batches` value was refused; clap prints it after the option.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ArgError {
    /// Not a number with a known unit.
    #[error(
        "`{0}` is not a size; write a number with an optional unit, e.g. 4096, 64KiB, 16MiB, 1GiB"
    )]
    NotASize(String),
    /// A unit that is not one of B, KiB, MiB, GiB, KB, MB, GB (K, M, G).
    #[error(
        "unknown unit `{unit}` in `{input}`; use B, KiB, MiB, GiB (binary) or KB, MB, GB (decimal)"
    )]
    UnknownUnit {
        /// The whole value.
        input: String,
        /// The unit part.
        unit: String,
    },
    /// Zero bytes or zero batches.
    #[error("{what} must be at least 1")]
    Zero {
        /// Which option.
        what: &'static str,
    },
    /// Beyond the maximum.
    #[error("{what} {value} is too large; the most is {max}")]
    TooLarge {
        /// Which option.
        what: &'static str,
        /// The value given (bytes for a size).
        value: ByteCount,
        /// The maximum.
        max: ByteCount,
    },
}

/// A number printed as bytes with a binary unit where it divides evenly, or as a plain
/// count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ByteCount {
    /// Bytes.
    Bytes(u128),
    /// A plain count.
    Count(u128),
}

impl fmt::Display for ByteCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ByteCount::Count(n) => write!(f, "{n}"),
            ByteCount::Bytes(n) => f.write_str(&format_bytes(n)),
        }
    }
}

/// `n` bytes as the largest binary unit that divides it evenly (`64KiB`, `3MiB`,
/// `1000B`).
pub(crate) fn format_bytes(n: u128) -> String {
    for (unit, scale) in [("GiB", 1u128 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if n >= scale && n % scale == 0 {
            return format!("{}{unit}", n / scale);
        }
    }
    format!("{n}B")
}

/// Parses a byte size: digits, optional spaces, an optional unit (case-insensitive):
/// `B`; `K`, `KiB`, `M`, `MiB`, `G`, `GiB` (powers of 1024); `KB`, `MB`, `GB` (powers
/// of 1000). Refuses 0, anything above 2 GiB, and anything else with a message that
/// says what to write.
pub(crate) fn parse_size(input: &str) -> Result<u64, ArgError> {
    parse_size_for(input, "--size")
}

/// Parses one entry of `--sizes` as [`parse_size`] does; its messages name `--sizes`.
pub(crate) fn parse_sizes_entry(input: &str) -> Result<u64, ArgError> {
    parse_size_for(input, "--sizes")
}

fn parse_size_for(input: &str, what: &'static str) -> Result<u64, ArgError> {
    let trimmed = input.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(digits_end);
    if digits.is_empty() {
        return Err(ArgError::NotASize(input.to_string()));
    }
    // Digits only, so the one failure left is overflow: too large by any measure.
    let number: u128 = digits.parse().unwrap_or(u128::MAX);
    let unit = unit.trim();
    let scale: u128 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => {
            return Err(ArgError::UnknownUnit {
                input: input.to_string(),
                unit: unit.to_string(),
            })
        }
    };
    let bytes = number.saturating_mul(scale);
    if bytes == 0 {
        return Err(ArgError::Zero { what });
    }
    if bytes > u128::from(MAX_SIZE_BYTES) {
        return Err(ArgError::TooLarge {
            what,
            value: ByteCount::Bytes(bytes),
            max: ByteCount::Bytes(u128::from(MAX_SIZE_BYTES)),
        });
    }
    u64::try_from(bytes).map_err(|_| ArgError::NotASize(input.to_string()))
}

/// Parses `--batches`: a whole number from 1 to [`MAX_BATCHES`].
pub(crate) fn parse_batches(input: &str) -> Result<u32, String> {
    let trimmed = input.trim();
    if trimmed.is_empty() || !trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "`{input}` is not a whole number of batches; write e.g. 64"
        ));
    }
    let n: u128 = trimmed.parse().unwrap_or(u128::MAX);
    if n == 0 {
        return Err(ArgError::Zero { what: "--batches" }.to_string());
    }
    if n > u128::from(MAX_BATCHES) {
        return Err(ArgError::TooLarge {
            what: "--batches",
            value: ByteCount::Count(n),
            max: ByteCount::Count(u128::from(MAX_BATCHES)),
        }
        .to_string());
    }
    u32::try_from(n).map_err(|_| format!("`{input}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_with_binary_and_decimal_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(64 * 1024));
        assert_eq!(parse_size("64kib"), Ok(64 * 1024));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("16 M"), Ok(16 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("64KB"), Ok(64_000));
        assert_eq!(parse_size("3MB"), Ok(3_000_000));
        assert_eq!(parse_size(" 7B "), Ok(7));
    }

    #[test]
    fn zero_sizes_are_refused() {
        assert_eq!(parse_size("0"), Err(ArgError::Zero { what: "--size" }));
        assert_eq!(parse_size("0KiB"), Err(ArgError::Zero { what: "--size" }));
    }

    #[test]
    fn nonsense_sizes_are_refused_with_what_to_write() {
        for bad in ["", "KiB", "-5", "1.5MiB", "abc", " "] {
            let err = parse_size(bad).expect_err(bad);
            assert!(err.to_string().contains("64KiB") || err.to_string().contains("KiB"));
        }
        assert!(matches!(
            parse_size("12 parsecs"),
            Err(ArgError::UnknownUnit { ref unit, .. }) if unit == "parsecs"
        ));
    }

    #[test]
    fn sizes_beyond_two_gib_are_refused_without_overflow() {
        let err = parse_size("3GiB").expect_err("3GiB");
        assert_eq!(
            err.to_string(),
            "--size 3GiB is too large; the most is 2GiB"
        );
        assert!(parse_size("99999999999999999999999999999999999999999999GiB").is_err());
        assert_eq!(parse_size("2147483648"), Ok(MAX_SIZE_BYTES));
        assert!(parse_size("2147483649").is_err());
    }

    #[test]
    fn batches_are_whole_positive_and_bounded() {
        assert_eq!(parse_batches("1"), Ok(1));
        assert_eq!(parse_batches("1000000"), Ok(MAX_BATCHES));
        assert!(parse_batches("0").is_err_and(|e| e.contains("at least 1")));
        assert!(parse_batches("1000001").is_err_and(|e| e.contains("too large")));
        assert!(parse_batches("-3").is_err());
        assert!(parse_batches("ten").is_err_and(|e| e.contains("whole number")));
        assert!(parse_batches("99999999999999999999999999999999999999999999").is_err());
    }

    #[test]
    fn byte_counts_print_in_the_largest_even_unit() {
        assert_eq!(format_bytes(64 * 1024), "64KiB");
        assert_eq!(format_bytes(16 << 20), "16MiB");
        assert_eq!(format_bytes(1 << 31), "2GiB");
        assert_eq!(format_bytes(1000), "1000B");
        assert_eq!(format_bytes(1536), "1536B");
    }

    #[test]
    fn workload_selection_keeps_the_canonical_order_once() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Wrap {
            #[command(flatten)]
            run: RunArgs,
        }
        let names = |argv: &[&str]| {
            Wrap::try_parse_from(std::iter::once("run").chain(argv.iter().copied()))
                .map(|w| w.run.workload_names())
        };
        assert_eq!(names(&[]).ok(), Some(WORKLOAD_NAMES.to_vec()));
        assert_eq!(
            names(&["--workload", "scan,histogram,scan"]).ok(),
            Some(vec!["histogram", "scan"])
        );
        assert_eq!(
            names(&["--workload", "reduce", "--workload", "all"]).ok(),
            Some(WORKLOAD_NAMES.to_vec())
        );
        assert_eq!(
            names(&["--workload", "fsum,all"]).ok(),
            Some(vec!["histogram", "reduce", "scan", "sum", "fsum"])
        );
        assert!(names(&["--workload", "sort"]).is_err());
        assert!(names(&["--size", "0"]).is_err());
        assert!(names(&["--batches", "0"]).is_err());
    }

    #[test]
    fn sizes_parse_as_a_list_and_exclude_size() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Wrap {
            #[command(flatten)]
            run: RunArgs,
        }
        let parse = |argv: &[&str]| {
            Wrap::try_parse_from(std::iter::once("run").chain(argv.iter().copied()))
        };
        let run = parse(&["--sizes", "4KiB,256KiB,8MiB,4KiB"])
            .expect("parses")
            .run;
        assert_eq!(run.trace_sizes(), [4 << 10, 256 << 10, 8 << 20]);
        assert_eq!(run.size_option(), "--sizes");
        let run = parse(&["--size", "64KiB"]).expect("parses").run;
        assert_eq!(run.trace_sizes(), [64 << 10]);
        assert_eq!(run.size_option(), "--size");
        let err = parse(&["--sizes", "4KiB", "--size", "8KiB"]).expect_err("both");
        let message = err.to_string();
        assert!(
            message.contains("--sizes") && message.contains("--size "),
            "{message}"
        );
        let err = parse(&["--sizes", "4KiB,0,8MiB"]).expect_err("a zero entry");
        assert!(
            err.to_string().contains("--sizes must be at least 1"),
            "{err}"
        );
        let err = parse(&["--sizes", "4KiB,lots"]).expect_err("a bad entry");
        assert!(err.to_string().contains("`lots` is not a size"), "{err}");
    }
}
