//! `photofinish devices`, run as a binary: text and JSON listings, and clear errors
//! (non-zero exit, no panic) on bad arguments or a missing driver.
//!
//! Listing tests need a Vulkan device; without one they fail with a clear message
//! unless `PHOTOFINISH_ALLOW_NO_VULKAN=1` is set.
#![cfg(feature = "vulkan")]

#[path = "../../tests/support/vulkan.rs"]
mod no_vulkan;

use std::process::{Command, Output};

use photofinish::backend::vulkan::VulkanBackend;
use photofinish::backend::Backend;

fn photofinish(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_photofinish"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the photofinish binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The device names the library sees, or `None` when skipping is allowed.
fn device_names() -> Option<Vec<String>> {
    no_vulkan::require(VulkanBackend::new())
        .map(|b| b.devices().iter().map(|d| d.name.clone()).collect())
}

/// Output of a run that must fail cleanly: non-zero exit, a message, no panic.
fn assert_clean_failure(out: &Output, message: &str) {
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "must fail: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains(message),
        "expected `{message}` in: {stderr}"
    );
}

#[test]
fn devices_lists_every_device_with_its_queue_families() {
    let Some(names) = device_names() else { return };
    let out = photofinish(&["devices"], &[]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for (i, name) in names.iter().enumerate() {
        assert!(stdout.contains(&format!("device {i}: {name}")), "{stdout}");
    }
    for field in [
        "adapter id:",
        "uuid:",
        "driver:",
        "timestamp period:",
        "queue families:",
    ] {
        assert_eq!(
            stdout.matches(field).count(),
            names.len(),
            "{field} in {stdout}"
        );
    }
    assert!(stdout.contains("compute"), "{stdout}");
}

#[test]
fn devices_json_matches_the_library() {
    let Some(names) = device_names() else { return };
    let out = photofinish(&["devices", "--json"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let value: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    let devices = value["devices"].as_array().expect("a devices array");
    assert_eq!(devices.len(), names.len());
    for (d, name) in devices.iter().zip(&names) {
        assert_eq!(d["name"].as_str(), Some(name.as_str()));
        let uuid = d["device_uuid"].as_str().expect("uuid string");
        assert_eq!(uuid.len(), 36, "{uuid}");
        let families = d["queue_families"].as_array().expect("families");
        let opened: u64 = families.iter().filter_map(|f| f["opened"].as_u64()).sum();
        let queues = d["queues"].as_array().expect("queues");
        assert_eq!(opened, queues.len() as u64);
        assert!(families.iter().all(|f| f["timestamp_valid_bits"].is_u64()));
    }
}

#[test]
fn bad_arguments_fail_with_usage_not_a_panic() {
    assert_clean_failure(&photofinish(&["devices", "--bogus"], &[]), "--bogus");
    assert_clean_failure(
        &photofinish(&["--backend", "metal", "devices"], &[]),
        "metal",
    );
    assert_clean_failure(&photofinish(&[], &[]), "Usage");
}

#[test]
fn devices_on_the_cpu_backend_is_a_clear_error() {
    assert_clean_failure(
        &photofinish(&["--backend", "cpu", "devices"], &[]),
        "drop `--backend cpu`",
    );
}

#[test]
fn no_driver_is_an_error_for_vulkan_and_a_note_for_auto() {
    // Point the loader at a driver manifest that does not exist: no device at all.
    let env = [
        ("VK_DRIVER_FILES", "/nonexistent/photofinish-test.json"),
        ("VK_ICD_FILENAMES", "/nonexistent/photofinish-test.json"),
    ];
    let vulkan = photofinish(&["--backend", "vulkan", "devices"], &env);
    assert_clean_failure(&vulkan, "install a Vulkan driver");
    let auto = photofinish(&["devices", "--json"], &env);
    assert!(auto.status.success(), "{}", text(&auto.stderr));
    let value: serde_json::Value = serde_json::from_slice(&auto.stdout).expect("JSON");
    assert_eq!(value["devices"].as_array().map(Vec::len), Some(0));
    assert!(value["vulkan_error"].is_string());
}
