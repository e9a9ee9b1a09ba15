//! Environment variables that set the defaults of the crate's tuning knobs
//! (`PHOTOFINISH_MAX_GROUP`, `PHOTOFINISH_MAX_QUEUES_PER_FAMILY`, …): one way to read
//! them, so every knob treats an unset or unparsable value alike.

/// The environment variable `name` parsed, or `default` where it is unset or unparsable.
pub(crate) fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    env_opt(name).unwrap_or(default)
}

/// The environment variable `name` parsed; `None` where it is unset or unparsable.
pub(crate) fn env_opt<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}
