//! Configuration from the environment: the one module of the crate that reads it.
//!
//! Every setting here is first a setting of the embedding application, on
//! [`EngineBuilder`](crate::EngineBuilder) or [`VulkanOptions`](crate::backend::VulkanOptions).
//! An environment variable only fills in a setting the application left unset: a
//! value the application set always wins, whatever the environment says. A variable
//! that is unset, empty or does not parse is ignored (the built-in default applies).
//! The engine builder reads the environment when [`build`](crate::EngineBuilder::build)
//! runs; `VulkanOptions::default()` reads it when called.
//!
//! | Variable | Sets the default of | Value |
//! |---|---|---|
//! | `PHOTOFINISH_MAX_GROUP` | [`EngineBuilder::max_group`](crate::EngineBuilder::max_group) | batches per backend call (default 1: off) |
//! | `PHOTOFINISH_MAX_SEARCHING` | [`EngineBuilder::max_searching`](crate::EngineBuilder::max_searching) | workers polling an empty mailbox |
//! | `PHOTOFINISH_BUSY_WAIT_US` | [`EngineBuilder::busy_wait`](crate::EngineBuilder::busy_wait) | microseconds |
//! | `PHOTOFINISH_FLEET_URL` | the fleet store's URL (`EngineBuilder::fleet`, `without_fleet`; feature `redis`) | `redis://…` or `redis+cluster://…` |
//! | `PHOTOFINISH_MAX_QUEUES_PER_FAMILY` | [`VulkanOptions::max_queues_per_family`](crate::backend::VulkanOptions::max_queues_per_family) | queues |
//! | `PHOTOFINISH_HOST_MAX_BYTES` | [`VulkanOptions::host_max_bytes`](crate::backend::VulkanOptions::host_max_bytes) | bytes (0: off) |
//!
//! Besides these, the fleet store names this host by the kernel's host name, else
//! `$HOSTNAME` (`host_name`). Variables the test harness reads
//! (`PHOTOFINISH_ALLOW_NO_VULKAN`, `PHOTOFINISH_REQUIRE_REDIS`, …) belong to the
//! tests, not to the library: see the README.
//!
//! This module parses and nothing more: it never decides what a setting means.

use std::time::Duration;

/// `PHOTOFINISH_MAX_GROUP`: the default of `EngineBuilder::max_group`.
pub(crate) const MAX_GROUP: &str = "PHOTOFINISH_MAX_GROUP";
/// `PHOTOFINISH_MAX_SEARCHING`: the default of `EngineBuilder::max_searching`.
pub(crate) const MAX_SEARCHING: &str = "PHOTOFINISH_MAX_SEARCHING";
/// `PHOTOFINISH_BUSY_WAIT_US`: the default of `EngineBuilder::busy_wait`.
pub(crate) const BUSY_WAIT_US: &str = "PHOTOFINISH_BUSY_WAIT_US";
/// `PHOTOFINISH_FLEET_URL`: the fleet store's URL where the builder sets none.
pub(crate) const FLEET_URL: &str = "PHOTOFINISH_FLEET_URL";
/// `PHOTOFINISH_MAX_QUEUES_PER_FAMILY`: the default of
/// `VulkanOptions::max_queues_per_family`.
pub(crate) const MAX_QUEUES_PER_FAMILY: &str = "PHOTOFINISH_MAX_QUEUES_PER_FAMILY";
/// `PHOTOFINISH_HOST_MAX_BYTES`: the default of `VulkanOptions::host_max_bytes`.
pub(crate) const HOST_MAX_BYTES: &str = "PHOTOFINISH_HOST_MAX_BYTES";

/// What the environment sets: each field `None` where its variable is unset, empty or
/// does not parse.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Env {
    /// [`MAX_GROUP`].
    pub(crate) max_group: Option<usize>,
    /// [`MAX_SEARCHING`].
    pub(crate) max_searching: Option<usize>,
    /// [`BUSY_WAIT_US`], in microseconds.
    pub(crate) busy_wait: Option<Duration>,
    /// [`FLEET_URL`], trimmed and not blank.
    pub(crate) fleet_url: Option<String>,
    /// [`MAX_QUEUES_PER_FAMILY`].
    pub(crate) max_queues_per_family: Option<u32>,
    /// [`HOST_MAX_BYTES`].
    pub(crate) host_max_bytes: Option<u64>,
}

impl Env {
    /// The process's environment, read now.
    pub(crate) fn read() -> Env {
        Env::from_lookup(|name| std::env::var(name).ok())
    }

    /// The environment as `lookup` gives it (the process's in [`Env::read`], a map in
    /// tests): `lookup(name)` is the variable's value, `None` where it is unset.
    pub(crate) fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Env {
        Env {
            max_group: parsed(&lookup, MAX_GROUP),
            max_searching: parsed(&lookup, MAX_SEARCHING),
            busy_wait: parsed(&lookup, BUSY_WAIT_US).map(Duration::from_micros),
            fleet_url: lookup(FLEET_URL)
                .map(|url| url.trim().to_string())
                .filter(|url| !url.is_empty()),
            max_queues_per_family: parsed(&lookup, MAX_QUEUES_PER_FAMILY),
            host_max_bytes: parsed(&lookup, HOST_MAX_BYTES),
        }
    }
}

/// The variable `name` parsed; `None` where it is unset or does not parse.
fn parsed<T: std::str::FromStr>(lookup: &impl Fn(&str) -> Option<String>, name: &str) -> Option<T> {
    lookup(name).and_then(|v| v.trim().parse().ok())
}

/// `$HOSTNAME` where set and not empty: the fleet store's name for this host when the
/// kernel gives none.
#[cfg(feature = "redis")]
pub(crate) fn host_name() -> Option<String> {
    std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Env {
        Env::from_lookup(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn every_variable_is_read_under_its_name() {
        let e = env(&[
            (MAX_GROUP, "8"),
            (MAX_SEARCHING, "2"),
            (BUSY_WAIT_US, "20"),
            (FLEET_URL, " redis://h:6379/0 "),
            (MAX_QUEUES_PER_FAMILY, "4"),
            (HOST_MAX_BYTES, "0"),
        ]);
        assert_eq!(
            e,
            Env {
                max_group: Some(8),
                max_searching: Some(2),
                busy_wait: Some(Duration::from_micros(20)),
                fleet_url: Some("redis://h:6379/0".into()),
                max_queues_per_family: Some(4),
                host_max_bytes: Some(0),
            }
        );
    }

    #[test]
    fn unset_empty_or_unparsable_variables_are_ignored() {
        assert_eq!(env(&[]), Env::default());
        let e = env(&[
            (MAX_GROUP, "eight"),
            (MAX_SEARCHING, ""),
            (BUSY_WAIT_US, "-1"),
            (FLEET_URL, "   "),
            (MAX_QUEUES_PER_FAMILY, "1.5"),
            (HOST_MAX_BYTES, "64k"),
        ]);
        assert_eq!(e, Env::default());
    }

    #[test]
    fn removed_experiment_knobs_are_not_read() {
        let e = env(&[
            ("PHOTOFINISH_FENCE_SPIN_US", "0"),
            ("PHOTOFINISH_DIRECT_MAX_BYTES", "65536"),
            ("PHOTOFINISH_ROBUST_BUFFER_ACCESS", "false"),
        ]);
        assert_eq!(e, Env::default());
    }
}
