//! The user's speculation mode and the pure rule that turns (mode, speculator, what the
//! backend can do) into "fused path or not". Forcing a path the backend cannot run is a
//! typed error, never a silent fallback.

use std::fmt;

use super::adaptive::AdaptiveSpeculator;

/// How fused prefilter/confirm kernels choose between the fused speculative path and
/// prefilter + serial confirm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SpeculationMode {
    /// Follow the shared [`AdaptiveSpeculator`] (fused only where the backend can).
    #[default]
    Auto,
    /// Always take the fused path; an error where the backend cannot run it.
    Force,
    /// Never take the fused path.
    Disable,
}

impl fmt::Display for SpeculationMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SpeculationMode::Auto => "auto",
            SpeculationMode::Force => "force",
            SpeculationMode::Disable => "disable",
        })
    }
}

/// Whether a backend can run a kernel's fused path, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FusedSupport {
    /// The fused path can run.
    Supported,
    /// The fused path cannot run on this backend.
    Unsupported {
        /// The backend, as it names itself (e.g. `cpu`, `vulkan`).
        backend: String,
        /// The kernel whose fused path is missing.
        kernel: String,
        /// Why, in words (e.g. "no fused variant registered").
        reason: String,
    },
}

/// Errors of the speculation mode boundary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpeculatorError {
    /// [`SpeculationMode::Force`] was asked of a backend that cannot run the fused path.
    #[error(
        "speculation mode `force` needs the fused path of kernel `{kernel}`, but the \
         {backend} backend cannot run it: {reason}; use mode `auto` to fall back to \
         prefilter + serial confirm, or register a fused variant this backend can run"
    )]
    ForceUnsupported {
        /// The backend that cannot run it.
        backend: String,
        /// The kernel whose fused path was forced.
        kernel: String,
        /// Why the backend cannot run it.
        reason: String,
    },
}

/// Whether to take the fused path: `Disable` → no; `Force` → yes, or
/// [`SpeculatorError::ForceUnsupported`] where the backend cannot; `Auto` → yes exactly
/// when the backend can and the speculator says so.
///
/// ```
/// use photofinish::speculator::{resolve_fused_path, AdaptiveSpeculator, FusedSupport, SpeculationMode};
/// let spec = AdaptiveSpeculator::default_threshold();
/// assert_eq!(resolve_fused_path(SpeculationMode::Auto, &spec, &FusedSupport::Supported), Ok(true));
/// let cpu = FusedSupport::Unsupported {
///     backend: "cpu".into(),
///     kernel: "scan".into(),
///     reason: "no fused variant".into(),
/// };
/// assert_eq!(resolve_fused_path(SpeculationMode::Auto, &spec, &cpu), Ok(false));
/// assert!(resolve_fused_path(SpeculationMode::Force, &spec, &cpu).is_err());
/// ```
pub fn resolve_fused_path(
    mode: SpeculationMode,
    speculator: &AdaptiveSpeculator,
    support: &FusedSupport,
) -> Result<bool, SpeculatorError> {
    match (mode, support) {
        (SpeculationMode::Disable, _) => Ok(false),
        (SpeculationMode::Force, FusedSupport::Supported) => Ok(true),
        (
            SpeculationMode::Force,
            FusedSupport::Unsupported {
                backend,
                kernel,
                reason,
            },
        ) => Err(SpeculatorError::ForceUnsupported {
            backend: backend.clone(),
            kernel: kernel.clone(),
            reason: reason.clone(),
        }),
        (SpeculationMode::Auto, FusedSupport::Supported) => Ok(speculator.should_speculate()),
        (SpeculationMode::Auto, FusedSupport::Unsupported { .. }) => Ok(false),
    }
}

#[cfg(all(test, not(photofinish_loom)))]
mod tests {
    use super::*;
    use crate::speculator::SpeculationReport;

    fn unsupported() -> FusedSupport {
        FusedSupport::Unsupported {
            backend: "cpu".into(),
            kernel: "scan".into(),
            reason: "no fused variant registered".into(),
        }
    }

    fn disabled_speculator() -> AdaptiveSpeculator {
        let s = AdaptiveSpeculator::default_threshold();
        s.record(SpeculationReport::from_counts(0, 4));
        s.record(SpeculationReport::from_counts(0, 4));
        assert!(!s.should_speculate());
        s
    }

    #[test]
    fn auto_follows_the_speculator_where_supported() {
        let on = AdaptiveSpeculator::default_threshold();
        let off = disabled_speculator();
        let yes = FusedSupport::Supported;
        assert_eq!(
            resolve_fused_path(SpeculationMode::Auto, &on, &yes),
            Ok(true)
        );
        assert_eq!(
            resolve_fused_path(SpeculationMode::Auto, &off, &yes),
            Ok(false)
        );
        assert_eq!(
            resolve_fused_path(SpeculationMode::Auto, &on, &unsupported()),
            Ok(false)
        );
        assert_eq!(SpeculationMode::default(), SpeculationMode::Auto);
    }

    #[test]
    fn force_and_disable_ignore_the_speculator() {
        let off = disabled_speculator();
        let on = AdaptiveSpeculator::default_threshold();
        assert_eq!(
            resolve_fused_path(SpeculationMode::Force, &off, &FusedSupport::Supported),
            Ok(true)
        );
        assert_eq!(
            resolve_fused_path(SpeculationMode::Disable, &on, &FusedSupport::Supported),
            Ok(false)
        );
        assert_eq!(
            resolve_fused_path(SpeculationMode::Disable, &on, &unsupported()),
            Ok(false)
        );
    }

    #[test]
    fn force_on_unsupported_backend_is_a_typed_error() {
        let on = AdaptiveSpeculator::default_threshold();
        let err = resolve_fused_path(SpeculationMode::Force, &on, &unsupported())
            .expect_err("force on an unsupported backend must fail");
        assert_eq!(
            err,
            SpeculatorError::ForceUnsupported {
                backend: "cpu".into(),
                kernel: "scan".into(),
                reason: "no fused variant registered".into(),
            }
        );
        let message = err.to_string();
        assert!(message.contains("`scan`"), "{message}");
        assert!(message.contains("cpu backend"), "{message}");
        assert!(message.contains("mode `auto`"), "{message}");
    }

    #[test]
    fn modes_display_lowercase() {
        assert_eq!(SpeculationMode::Auto.to_string(), "auto");
        assert_eq!(SpeculationMode::Force.to_string(), "force");
        assert_eq!(SpeculationMode::Disable.to_string(), "disable");
    }
}
