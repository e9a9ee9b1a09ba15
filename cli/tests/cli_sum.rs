//! `photofinish run --workload sum --sizes 4KiB,8MiB` on the CPU backend: the flipping
//! workload gets a different verdict for each key in one run. A timing test, alone in
//! its binary: the wide grid wins 8 MiB batches only with every core to itself, so no
//! other test of the CLI runs beside it.

use std::process::Command;

fn json_of(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_photofinish"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap_or_else(|e| panic!("cannot start photofinish: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "photofinish {args:?} failed ({:?}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"))
}

/// The flipping workload on the CPU backend: the one-workgroup variant wins 4 KiB
/// batches (about 70×) and the two-thread wide grid 8 MiB ones, so the same run adopts
/// it for one key and rejects it for the other.
#[test]
fn sum_with_two_sizes_adopts_one_workgroup_small_and_rejects_it_large() {
    let value = json_of(&[
        "run",
        "--backend",
        "cpu",
        "--workload",
        "sum",
        "--batches",
        "160",
        "--sizes=4KiB,8MiB",
        "--json",
    ]);
    let keys = value["kernels"][0]["keys"].as_array().expect("keys");
    let verdicts: Vec<(&str, &str)> = keys
        .iter()
        .map(|k| {
            (
                k["key"].as_str().unwrap_or("?"),
                k["verdict"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    assert_eq!(
        verdicts,
        [("4KiB", "adopted"), ("8MiB", "rejected")],
        "{value}"
    );
}
