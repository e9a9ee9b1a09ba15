//! The engine's fleet link in a build without the `redis` feature: always off. The
//! real one is `fleet.rs`; this keeps its call sites free of `cfg`s.

use std::time::Duration;

use crate::autotune::VerdictRecord;

use super::error::EngineError;
use super::keys::{Hint, KeyState};
use super::registry::Kernel;

/// The fleet client's configuration: none in this build.
pub(crate) type Config = ();

/// No fleet.
#[derive(Debug, Default)]
pub(crate) struct FleetLink;

impl FleetLink {
    /// Off; a URL (from `PHOTOFINISH_FLEET_URL`) is logged and ignored, as this build
    /// has no Redis client.
    pub(crate) fn connect(url: Option<&str>, _config: &Config) -> Result<Self, EngineError> {
        if url.is_some() {
            tracing::warn!("PHOTOFINISH_FLEET_URL is set, but photofinish was built without the `redis` feature: no fleet");
        }
        Ok(FleetLink)
    }

    pub(crate) fn prior(
        &self,
        _: &[crate::backend::DeviceInfo],
        _: &Kernel,
        _: &KeyState,
        _: usize,
    ) -> Option<Hint> {
        None
    }

    pub(crate) fn offer(&self, _: usize, _: &Kernel, _: &KeyState, _: usize, _: VerdictRecord) {}

    pub(crate) fn flush(&self, _timeout: Duration) -> bool {
        true
    }

    pub(crate) fn stop(&self) {}
}
