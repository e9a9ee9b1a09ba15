//! `photofinish run` as a user runs it: the real binary, its exit codes, its table, its
//! JSON, its report directory (JSON + well-formed SVG), a second run that starts from
//! the autotune file, a mixed-size trace (`--sizes`: a row, a JSON entry and a chart
//! per tuning key), a second host that starts from the fleet (`--fleet`, against a
//! real redis-server), and bad arguments. Small runs on the CPU backend, and one on
//! Vulkan (lavapipe here).

#[path = "../../tests/support/vulkan.rs"]
mod no_vulkan;
#[cfg(feature = "redis")]
#[path = "../../tests/support/redis.rs"]
mod redis_support;

use std::path::Path;
use std::process::{Command, Output};

fn photofinish(args: &[&str]) -> Output {
    match Command::new(env!("CARGO_BIN_EXE_photofinish"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
    {
        Ok(out) => out,
        Err(e) => panic!("cannot start photofinish: {e}"),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs and requires exit 0; gives stdout.
fn run_ok(args: &[&str]) -> String {
    let out = photofinish(args);
    assert!(
        out.status.success(),
        "photofinish {args:?} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs and requires a non-zero exit with a message and no panic; gives stderr.
fn run_fails(args: &[&str]) -> String {
    let out = photofinish(args);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "photofinish {args:?} should fail");
    assert_ne!(out.status.code(), Some(101), "a panic exits 101: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.trim().is_empty(), "no message for {args:?}");
    stderr
}

const SMALL: [&str; 5] = ["--backend", "cpu", "--batches", "12", "--size=16KiB"];

fn small(extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["run"]
        .iter()
        .chain(&SMALL)
        .map(|s| s.to_string())
        .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The kernels a run's JSON report shows decided; fails when there is none.
fn decided_kernels(report: &serde_json::Value) -> Vec<&str> {
    let decided: Vec<&str> = report["kernels"]
        .as_array()
        .expect("kernels")
        .iter()
        .filter(|k| k["verdict"] != "undecided")
        .filter_map(|k| k["kernel"].as_str())
        .collect();
    assert!(!decided.is_empty(), "no verdict on the first run: {report}");
    decided
}

fn json(stdout: &str) -> serde_json::Value {
    match serde_json::from_str(stdout) {
        Ok(v) => v,
        Err(e) => panic!("stdout is not JSON ({e}):\n{stdout}"),
    }
}

#[test]
fn run_on_the_cpu_prints_a_table_row_per_kernel() {
    let stdout = run_ok(&refs(&small(&[])));
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("backend: cpu"), "{stdout}");
    for header in [
        "verdict",
        "samples to verdict",
        "conservative mean",
        "speedup",
        "verified",
    ] {
        assert!(lines[1].contains(header), "{header}: {stdout}");
    }
    for kernel in ["histogram", "reduce", "scan", "sum"] {
        let row = lines
            .iter()
            .find(|l| l.starts_with(kernel))
            .unwrap_or_else(|| panic!("no row for {kernel}:\n{stdout}"));
        // Every answer was checked against the CPU reference and matched.
        assert!(row.trim_end().ends_with("12/12"), "{row}");
        assert!(
            ["undecided", "adopted", "rejected"]
                .iter()
                .any(|v| row.contains(v)),
            "{row}"
        );
    }
}

#[test]
fn json_holds_the_same_facts_as_the_table() {
    let stdout = run_ok(&refs(&small(&["--workload", "reduce", "--json"])));
    let value = json(&stdout);
    assert_eq!(value["backend"], "cpu");
    assert_eq!(value["size_bytes"], 16 * 1024);
    let kernels = value["kernels"].as_array().expect("kernels is an array");
    assert_eq!(kernels.len(), 1);
    let k = &kernels[0];
    assert_eq!(k["kernel"], "reduce");
    assert_eq!(k["batches"], 12);
    assert_eq!(k["verified"], 12);
    assert_eq!(k["samples"].as_array().map(Vec::len), Some(12));
    let verdict = k["verdict"].as_str().expect("verdict is a string");
    assert!(["undecided", "adopted", "rejected"].contains(&verdict));
    // A decided verdict needs at least MIN_DISPATCHES_FOR_VERDICT paired samples,
    // unless a mismatch decided it.
    if let Some(at) = k["samples_to_verdict"].as_u64() {
        assert!((1..=12).contains(&at), "{k}");
    }
    // A raced sample has the time of the arm that answered it; a decided kernel's
    // single-arm runs are timed only one in TIMED_SINGLE_PERIOD (the others are null).
    let samples = k["samples"].as_array().expect("samples");
    for s in samples {
        let arm_time = match s["answered_by"].as_str() {
            Some("conservative") => &s["conservative_ns"],
            Some("speculative") => &s["speculative_ns"],
            other => panic!("answered_by {other:?}"),
        };
        if s["raced"] == true {
            assert!(arm_time.is_u64(), "{s}");
        } else {
            assert!(arm_time.is_u64() || arm_time.is_null(), "{s}");
        }
    }
    // Raced samples carry both arms' times (from the engine's race samples).
    assert!(
        samples
            .iter()
            .filter(|s| s["raced"] == true)
            .any(|s| s["conservative_ns"].is_u64() && s["speculative_ns"].is_u64()),
        "{k}"
    );
    let mean = |v: &str| k[v].as_u64();
    if let (Some(c), Some(s), Some(speedup)) = (
        mean("conservative_mean_ns"),
        mean("speculative_mean_ns"),
        k["speedup"].as_f64(),
    ) {
        assert!((speedup - c as f64 / s as f64).abs() < 1e-9, "{k}");
    }
}

fn assert_well_formed_svg(path: &Path) {
    let body = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc = roxmltree::Document::parse(&body)
        .unwrap_or_else(|e| panic!("{} is not well-formed XML: {e}", path.display()));
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let lines = doc
        .descendants()
        .filter(|n| n.has_tag_name("polyline") || n.has_tag_name("path"))
        .count();
    assert!(lines >= 1, "{} draws no series", path.display());
}

#[test]
fn report_dir_gets_json_and_a_well_formed_svg_per_kernel() {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = dir.path().join("out");
    let report_arg = report.display().to_string();
    let stdout = run_ok(&refs(&small(&["--report", &report_arg])));
    assert!(stdout.contains("report: 5 files"), "{stdout}");
    let body = std::fs::read_to_string(report.join("report.json")).expect("report.json");
    let value = json(&body);
    assert_eq!(value["kernels"].as_array().map(Vec::len), Some(4));
    // One size, so one tuning key per kernel: one chart each, named with the key.
    for kernel in ["histogram", "reduce", "scan", "sum"] {
        assert_well_formed_svg(&report.join(format!("{kernel}-16KiB.svg")));
    }
}

/// The sizes of the mixed-size runs below: two tuning keys per kernel.
const TWO_SIZES: [&str; 6] = [
    "run",
    "--backend",
    "cpu",
    "--batches",
    "16",
    "--sizes=4KiB,1MiB",
];

#[test]
fn sizes_give_a_table_row_per_kernel_and_key() {
    let stdout = run_ok(&TWO_SIZES);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].contains("4KiB, 1MiB"), "{stdout}");
    for header in ["key", "verdict", "prior", "races", "speedup", "verified"] {
        assert!(lines[1].contains(header), "{header}: {stdout}");
    }
    for kernel in ["histogram", "reduce", "scan", "sum"] {
        let rows: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.split_whitespace().next() == Some(kernel))
            .collect();
        assert_eq!(rows.len(), 2, "two keys for {kernel}:\n{stdout}");
        for (row, key) in rows.iter().zip(["4KiB", "1MiB"]) {
            assert_eq!(row.split_whitespace().nth(1), Some(key), "{row}");
            // The 16 batches alternate: 8 per size, each answer checked.
            assert!(row.trim_end().ends_with("8/8"), "{row}");
            assert!(
                ["undecided", "adopted", "rejected"]
                    .iter()
                    .any(|v| row.contains(v)),
                "{row}"
            );
        }
    }
}

#[test]
fn sizes_give_each_kernel_a_json_keys_array_with_the_contract_fields() {
    let value = json(&run_ok(&[&TWO_SIZES[..], &["--json"]].concat()));
    assert_eq!(value["sizes_bytes"], serde_json::json!([4096, 1 << 20]));
    let kernels = value["kernels"].as_array().expect("kernels");
    assert_eq!(kernels.len(), 4);
    for k in kernels {
        // The per-kernel summary stays.
        assert_eq!(k["batches"], 16, "{k}");
        assert!(k["verdict"].is_string(), "{k}");
        let keys = k["keys"].as_array().expect("keys is an array");
        assert_eq!(keys.len(), 2, "{k}");
        for (entry, (name, class)) in keys.iter().zip([("4KiB", 4096u64), ("1MiB", 1 << 20)]) {
            assert_eq!(entry["key"], name, "{entry}");
            assert_eq!(entry["size_class_bytes"].as_u64(), Some(class), "{entry}");
            let verdict = entry["verdict"].as_str().expect("verdict is a string");
            assert!(
                ["adopted", "rejected", "undecided"].contains(&verdict),
                "{entry}"
            );
            assert!(entry["races"].is_u64(), "{entry}");
            assert!(entry["from_prior"].is_boolean(), "{entry}");
            let source = &entry["prior_source"];
            assert!(
                source.is_null()
                    || ["neighbour", "file", "fleet"].contains(&source.as_str().unwrap_or("?")),
                "{entry}"
            );
            assert_eq!(
                source.is_null(),
                entry["from_prior"] == false,
                "a prior has a source: {entry}"
            );
            assert!(
                entry["speedup"].is_null() || entry["speedup"].is_f64(),
                "{entry}"
            );
            assert_eq!(entry["batches"], 8, "{entry}");
            assert_eq!(entry["verified"], 8, "{entry}");
        }
        // Every sample names its key; the keys split the batches evenly.
        let samples = k["samples"].as_array().expect("samples");
        for name in ["4KiB", "1MiB"] {
            assert_eq!(
                samples.iter().filter(|s| s["key"] == name).count(),
                8,
                "{k}"
            );
        }
    }
}

#[test]
fn sizes_write_a_chart_per_kernel_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = dir.path().join("out");
    let report_arg = report.display().to_string();
    let args = [
        &TWO_SIZES[..],
        &["--workload", "reduce", "--report", &report_arg],
    ]
    .concat();
    let stdout = run_ok(&args);
    assert!(stdout.contains("report: 3 files"), "{stdout}");
    for key in ["4KiB", "1MiB"] {
        assert_well_formed_svg(&report.join(format!("reduce-{key}.svg")));
    }
    let value = json(&std::fs::read_to_string(report.join("report.json")).expect("report.json"));
    assert_eq!(
        value["kernels"][0]["keys"].as_array().map(Vec::len),
        Some(2)
    );
}

#[test]
fn sizes_and_size_together_is_an_error_naming_both() {
    let stderr = run_fails(&[
        "run",
        "--backend",
        "cpu",
        "--sizes",
        "4KiB,8MiB",
        "--size",
        "64KiB",
    ]);
    assert!(
        stderr.contains("--sizes") && stderr.contains("--size <"),
        "{stderr}"
    );
}

#[test]
fn a_bad_entry_in_sizes_is_an_error_naming_it() {
    for (sizes, expected) in [
        ("4KiB,lots,8MiB", "`lots` is not a size"),
        ("4KiB,0", "--sizes must be at least 1"),
        ("4KiB,3GiB", "--sizes 3GiB is too large"),
        ("4KiB,12parsecs", "unknown unit `parsecs`"),
    ] {
        let stderr = run_fails(&["run", "--backend", "cpu", "--sizes", sizes]);
        assert!(
            stderr.contains(expected) && stderr.contains("--sizes"),
            "{sizes}: {stderr}"
        );
    }
}

#[test]
fn a_second_run_starts_from_the_autotune_file_and_re_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("autotune");
    let store_arg = store.display().to_string();
    // Enough batches that kernels reach a verdict on the first run.
    let args = [
        "run",
        "--backend",
        "cpu",
        "--batches",
        "40",
        "--size",
        "16KiB",
        "--autotune-file",
        &store_arg,
        "--json",
    ];
    let first = json(&run_ok(&args));
    let kernels = first["kernels"].as_array().expect("kernels");
    let decided = decided_kernels(&first);
    assert!(kernels.iter().all(|k| k["from_cache"] == false), "{first}");

    let second = json(&run_ok(&args));
    let mut reverified = 0;
    for k in second["kernels"].as_array().expect("kernels") {
        if decided.contains(&k["kernel"].as_str().unwrap_or_default()) {
            assert_eq!(k["from_cache"], true, "{k}");
            reverified += usize::from(k["reverified"] == true);
        }
    }
    assert!(reverified >= 1, "{second}");
    let table = run_ok(&args[..args.len() - 1]);
    assert!(table.contains("from cache, re-verified"), "{table}");
}

#[cfg(feature = "redis")]
#[test]
fn a_second_host_starts_from_the_fleet_and_says_so() {
    let Some(server) = redis_support::start() else {
        return;
    };
    let url = server.url();
    let args = [
        "run",
        "--backend",
        "cpu",
        "--batches",
        "40",
        "--size",
        "16KiB",
        "--fleet",
        &url,
        "--json",
    ];
    let first = json(&run_ok(&args));
    let kernels = first["kernels"].as_array().expect("kernels");
    let decided = decided_kernels(&first);
    assert!(
        kernels.iter().all(|k| k.get("prior_source").is_none()),
        "{first}"
    );

    let second = json(&run_ok(&args));
    for k in second["kernels"].as_array().expect("kernels") {
        if decided.contains(&k["kernel"].as_str().unwrap_or_default()) {
            assert_eq!(k["prior_source"], "fleet", "{k}");
            assert!(
                k["verdict_reason"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("from fleet"),
                "{k}"
            );
        }
    }
    let table = run_ok(&args[..args.len() - 1]);
    assert!(table.contains("from fleet"), "{table}");

    let bad = run_fails(&["run", "--backend", "cpu", "--fleet", "http://nowhere"]);
    assert!(bad.contains("fleet"), "{bad}");
}

#[test]
fn bad_arguments_exit_non_zero_with_a_message() {
    let cases: [(&[&str], &str); 8] = [
        (&["run", "--size", "0"], "at least 1"),
        (&["run", "--size", "lots"], "not a size"),
        (&["run", "--size", "12parsecs"], "unknown unit"),
        (&["run", "--size", "3GiB"], "too large"),
        (&["run", "--batches", "0"], "at least 1"),
        (&["run", "--batches=-4"], "whole number"),
        (&["run", "--workload", "sort"], "histogram"),
        (&["run", "--backend", "gpu"], "cpu"),
    ];
    for (args, expected) in cases {
        let stderr = run_fails(args);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let stderr = run_fails(&["run", "--frobnicate"]);
    assert!(stderr.contains("--frobnicate"), "{stderr}");
}

#[test]
fn an_unwritable_report_dir_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"not a directory").expect("write");
    let target = blocker.join("report").display().to_string();
    let stderr = run_fails(&refs(&small(&[
        "--workload",
        "reduce",
        "--report",
        &target,
    ])));
    assert!(stderr.contains("--report"), "{stderr}");
}

/// Where there is no Vulkan device the test fails, unless the environment says a
/// missing driver is expected (`PHOTOFINISH_ALLOW_NO_VULKAN=1`).
#[test]
fn run_on_vulkan_lavapipe_verifies_every_answer() {
    let out = photofinish(&[
        "run",
        "--backend",
        "vulkan",
        "--workload",
        "reduce",
        "--batches",
        "10",
        "--size",
        "16KiB",
        "--json",
    ]);
    if !out.status.success() {
        let stderr = text(&out.stderr);
        if stderr.contains("no usable device") {
            no_vulkan::skip_or_fail(&stderr);
            return;
        }
        panic!("run on Vulkan failed ({:?}): {stderr}", out.status);
    }
    let value = json(&text(&out.stdout));
    assert_eq!(value["backend"], "vulkan");
    let k = &value["kernels"][0];
    assert_eq!(k["verified"], 10, "{k}");
}

/// Runs photofinish through `sh -c SCRIPT` (`"$0" "$@"` is the binary and `args`).
fn photofinish_sh(script: &str, args: &[&str]) -> Output {
    match Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_photofinish"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
    {
        Ok(out) => out,
        Err(e) => panic!("cannot start sh: {e}"),
    }
}

/// Files in `dir` whose names contain `part`.
fn files_named(dir: &Path, part: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(part))
                .collect()
        })
        .unwrap_or_default()
}

/// Makes `dir` refuse new files even to root (`chattr +i`); false where that is not
/// possible (not root, or a file system without the flag).
fn make_immutable(dir: &Path) -> bool {
    Command::new("chattr")
        .arg("+i")
        .arg(dir)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn undo_immutable(dir: &Path) {
    let _ = Command::new("chattr").arg("-i").arg(dir).status();
}

/// Regression (issue #25, item 10): `--batches -3` gave clap's "unexpected argument
/// '-3'" instead of the message `--batches=-4` and `--batches 0` get.
#[test]
fn negative_batches_get_the_helpful_message_not_unexpected_argument() {
    for args in [
        &["run", "--batches", "-3"][..],
        &["run", "--size", "-5"][..],
    ] {
        let stderr = run_fails(args);
        assert!(
            !stderr.contains("unexpected argument"),
            "{args:?}: {stderr}"
        );
    }
    let stderr = run_fails(&["run", "--batches", "-3"]);
    assert!(
        stderr.contains("whole number") && stderr.contains("-3"),
        "{stderr}"
    );
    let stderr = run_fails(&["run", "--size", "-5"]);
    assert!(stderr.contains("not a size"), "{stderr}");
}

/// Regression (issue #25, item 10): the CLI panicked (`eprintln!`) when stderr was full
/// or closed. It exits with the code the run deserves, never 101.
#[test]
fn a_full_or_closed_stderr_is_no_panic_and_keeps_the_exit_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"x").expect("write");
    let bad_report = blocker.join("report").display().to_string();
    let failing = small(&["--workload", "reduce", "--report", &bad_report]);
    let working = small(&["--workload", "reduce"]);
    // A run whose saves fail logs warnings (tracing) before its error line.
    let store = dir.path().join("autotune");
    std::fs::create_dir(&store).expect("mkdir");
    let future = r#"{"schema": "photofinish-autotune", "version": 99}"#;
    std::fs::write(store.join(CPU_AUTOTUNE_FILE), future).expect("write");
    let store_arg = store.display().to_string();
    let warning = small(&["--workload", "reduce", "--autotune-file", &store_arg]);
    for script in ["exec \"$0\" \"$@\" 2>/dev/full", "exec \"$0\" \"$@\" 2>&-"] {
        let out = photofinish_sh(script, &refs(&failing));
        assert_eq!(out.status.code(), Some(1), "{script}: {out:?}");
        let out = photofinish_sh(script, &refs(&warning));
        assert_eq!(out.status.code(), Some(1), "{script}: {out:?}");
        let out = photofinish_sh(script, &refs(&working));
        assert_eq!(out.status.code(), Some(0), "{script}: {out:?}");
        assert!(text(&out.stdout).contains("reduce"), "{script}: {out:?}");
        // A clap error on a full stderr: clap's own exit code 2, no panic.
        let out = photofinish_sh(script, &["run", "--frobnicate"]);
        assert_eq!(out.status.code(), Some(2), "{script}: {out:?}");
    }
}

/// Runs a small trace with `flag` pointing at a directory that takes no files — a path
/// below a plain file, and (where `chattr` works) an immutable directory — and checks
/// that each fails before the run: exit code 1, the flag named (and the path, with
/// `names_path`), no table, no backend.
fn an_unwritable_dir_fails_before_the_run(flag: &str, names_path: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let immutable = dir.path().join("immutable");
    std::fs::create_dir(&immutable).expect("mkdir");
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"x").expect("write");
    let mut targets = vec![blocker.join("below-a-file")];
    let chattr = make_immutable(&immutable);
    if chattr {
        targets.push(immutable.clone());
    }
    for target in &targets {
        let target = target.display().to_string();
        let out = photofinish(&refs(&small(&[flag, &target])));
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{target}: {stderr}");
        assert!(stderr.contains(flag), "{stderr}");
        assert!(!names_path || stderr.contains(&target), "{stderr}");
        assert!(
            !stderr.contains("running on the") && out.stdout.is_empty(),
            "the run went ahead: {stderr}"
        );
    }
    if chattr {
        undo_immutable(&immutable);
    }
}

/// Regression (issue #25, item 10): `--report DIR` was checked only after the whole
/// run. A directory that takes no files fails before the run: no table, no backend.
#[test]
fn a_report_dir_that_takes_no_files_fails_before_the_run() {
    an_unwritable_dir_fails_before_the_run("--report", false);
}

/// Regression (issue #25, item 9): a report write that failed part way (a full disk)
/// left an empty `report.json.tmp` behind. The temporary file is removed, the error
/// names the file, the exit code is 1. The "full disk" is a file-size limit
/// (`ulimit -f`), which needs no privilege: the probe before the run fits, the report
/// does not.
#[test]
fn a_report_write_that_fails_part_way_leaves_no_tmp_file_and_exits_non_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("report");
    let target_arg = target.display().to_string();
    let args = small(&["--report", &target_arg]);
    let out = photofinish_sh(
        "trap '' XFSZ; ulimit -f 8; exec \"$0\" \"$@\"",
        &refs(&args),
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&target_arg) && stderr.contains("--report"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(files_named(&target, ".tmp"), Vec::<String>::new());
}

/// The autotune file of the CPU backend's one device (UUID all zero).
const CPU_AUTOTUNE_FILE: &str = "autotune-00000000000000000000000000000000.json";

/// Regression (issue #25, item 9): an autotune directory whose save failed exited 0
/// with a warning. A file of a newer photofinish there is left untouched, the table is
/// printed, and the exit code is 1 with a line naming the file and the fix.
#[test]
fn an_autotune_save_that_fails_exits_non_zero_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("autotune");
    std::fs::create_dir(&store).expect("mkdir");
    let file = store.join(CPU_AUTOTUNE_FILE);
    let future = r#"{"schema": "photofinish-autotune", "version": 99}"#;
    std::fs::write(&file, future).expect("write");
    let store_arg = store.display().to_string();
    let out = photofinish(&refs(&small(&["--autotune-file", &store_arg])));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(text(&out.stdout).contains("reduce"), "the table is printed");
    assert!(
        stderr.contains(&file.display().to_string())
            && stderr.contains("newer photofinish")
            && stderr.contains("--autotune-file"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&file).expect("read"), future);
}

/// Regression (issue #25, item 9): a full autotune directory exited 0 with only a
/// warning, and the failed save must leave no temporary file. The "full disk" is a
/// file-size limit: the probe before the run fits, the autotune file does not.
#[test]
fn a_full_autotune_dir_exits_non_zero_and_leaves_no_temp_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("autotune");
    let store_arg = store.display().to_string();
    let args = small(&["--autotune-file", &store_arg]);
    let out = photofinish_sh(
        "trap '' XFSZ; ulimit -f 1; exec \"$0\" \"$@\"",
        &refs(&args),
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&store.join(CPU_AUTOTUNE_FILE).display().to_string())
            && stderr.contains("--autotune-file"),
        "{stderr}"
    );
    assert_eq!(files_named(&store, ".tmp"), Vec::<String>::new());
}

/// Regression (issue #25, item 9): a read-only autotune directory exited 0 with only a
/// warning after the whole run. It fails before the run, naming the directory.
#[test]
fn a_read_only_autotune_dir_fails_before_the_run_naming_it() {
    an_unwritable_dir_fails_before_the_run("--autotune-file", true);
}

/// Regression (issue #25, item 10): `--size 2GiB` on a device whose
/// `maxStorageBufferRange` is 128 MiB (lavapipe's) generated a 2 GiB input and then
/// failed. It is refused before any input, naming the largest size the device takes.
#[test]
fn a_size_over_the_devices_storage_buffer_range_fails_before_any_input() {
    let started = std::time::Instant::now();
    let out = photofinish(&[
        "run",
        "--backend",
        "vulkan",
        "--workload",
        "reduce",
        "--batches",
        "1",
        "--size",
        "2GiB",
    ]);
    let stderr = text(&out.stderr);
    if stderr.contains("no usable device") {
        no_vulkan::skip_or_fail(&stderr);
        return;
    }
    let devices = photofinish(&["devices", "--json"]);
    let devices = json(&text(&devices.stdout));
    let range = devices["devices"][0]["limits"]["max_storage_buffer_range"]
        .as_u64()
        .expect("the device's limit");
    if range >= 2 << 30 {
        // A device that takes 2 GiB: nothing to refuse (not lavapipe).
        return;
    }
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("maxStorageBufferRange")
            && stderr.contains("the largest size this device takes is"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "it took {:?}: the input was built first",
        started.elapsed()
    );
}
