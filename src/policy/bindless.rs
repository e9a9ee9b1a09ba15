//! D9: bindless — whether to bind a kernel's resources through one large descriptor
//! array indexed in the shader instead of one binding per resource.

use std::fmt;

/// A kernel with at least this many resources is worth binding bindlessly.
pub const BINDLESS_RESOURCE_COUNT_THRESHOLD: u32 = 24;

/// How much of descriptor indexing the device supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BindlessSupport {
    /// No descriptor indexing.
    #[default]
    Unsupported,
    /// Descriptor arrays, indexed only by dynamically uniform (constant per dispatch)
    /// indices.
    Static,
    /// Descriptor arrays with non-uniform, per-invocation indexing.
    Full,
}

impl fmt::Display for BindlessSupport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BindlessSupport::Unsupported => "unsupported",
            BindlessSupport::Static => "static",
            BindlessSupport::Full => "full",
        })
    }
}

/// What decides D9: the kernel's resources and the device's support.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct BindlessInputs {
    /// Resources (buffers, images) the kernel uses.
    pub resource_count: u32,
    /// The device's descriptor-indexing support.
    pub support: BindlessSupport,
    /// True when the kernel picks resources by a per-invocation (non-uniform) index.
    pub dynamic_indexing: bool,
}

/// The D9 verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BindlessDecision {
    /// One binding per resource.
    TraditionalBindings,
    /// One descriptor array for all resources.
    Bindless,
}

impl fmt::Display for BindlessDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BindlessDecision::TraditionalBindings => "traditional-bindings",
            BindlessDecision::Bindless => "bindless",
        })
    }
}

/// Decides between traditional bindings and bindless (SPEC §1, D9).
///
/// TraditionalBindings when the device has no support or the kernel has fewer than
/// [`BINDLESS_RESOURCE_COUNT_THRESHOLD`] resources; otherwise Bindless with full
/// support, and with static support only when the kernel does not index dynamically.
///
/// ```
/// use photofinish::policy::{decide_bindless, BindlessDecision, BindlessInputs, BindlessSupport};
/// let inputs = BindlessInputs {
///     resource_count: 32,
///     support: BindlessSupport::Static,
///     dynamic_indexing: false,
/// };
/// assert_eq!(decide_bindless(inputs), BindlessDecision::Bindless);
/// let dynamic = BindlessInputs { dynamic_indexing: true, ..inputs };
/// assert_eq!(decide_bindless(dynamic), BindlessDecision::TraditionalBindings);
/// ```
#[must_use]
pub fn decide_bindless(inputs: BindlessInputs) -> BindlessDecision {
    if inputs.resource_count < BINDLESS_RESOURCE_COUNT_THRESHOLD {
        return BindlessDecision::TraditionalBindings;
    }
    match inputs.support {
        BindlessSupport::Unsupported => BindlessDecision::TraditionalBindings,
        BindlessSupport::Full => BindlessDecision::Bindless,
        BindlessSupport::Static if inputs.dynamic_indexing => BindlessDecision::TraditionalBindings,
        BindlessSupport::Static => BindlessDecision::Bindless,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUPPORTS: [BindlessSupport; 3] = [
        BindlessSupport::Unsupported,
        BindlessSupport::Static,
        BindlessSupport::Full,
    ];

    fn decide(resource_count: u32, support: BindlessSupport, dynamic: bool) -> BindlessDecision {
        decide_bindless(BindlessInputs {
            resource_count,
            support,
            dynamic_indexing: dynamic,
        })
    }

    #[test]
    fn threshold_matches_the_spec() {
        assert_eq!(BINDLESS_RESOURCE_COUNT_THRESHOLD, 24);
    }

    #[test]
    fn fewer_than_24_resources_are_traditional_whatever_the_support() {
        for support in SUPPORTS {
            for dynamic in [false, true] {
                for count in [0, 23] {
                    assert_eq!(
                        decide(count, support, dynamic),
                        BindlessDecision::TraditionalBindings,
                        "{count} {support} {dynamic}"
                    );
                }
            }
        }
    }

    #[test]
    fn unsupported_is_traditional_at_any_count() {
        for dynamic in [false, true] {
            for count in [24, u32::MAX] {
                assert_eq!(
                    decide(count, BindlessSupport::Unsupported, dynamic),
                    BindlessDecision::TraditionalBindings
                );
            }
        }
    }

    #[test]
    fn full_support_is_bindless_from_24() {
        for dynamic in [false, true] {
            for count in [24, u32::MAX] {
                assert_eq!(
                    decide(count, BindlessSupport::Full, dynamic),
                    BindlessDecision::Bindless
                );
            }
        }
    }

    #[test]
    fn static_support_is_bindless_only_without_dynamic_indexing() {
        for count in [24, u32::MAX] {
            assert_eq!(
                decide(count, BindlessSupport::Static, false),
                BindlessDecision::Bindless
            );
            assert_eq!(
                decide(count, BindlessSupport::Static, true),
                BindlessDecision::TraditionalBindings
            );
        }
    }

    #[test]
    fn default_inputs_are_traditional_and_display() {
        assert_eq!(
            decide_bindless(BindlessInputs::default()),
            BindlessDecision::TraditionalBindings
        );
        assert_eq!(BindlessDecision::Bindless.to_string(), "bindless");
        assert_eq!(
            BindlessDecision::TraditionalBindings.to_string(),
            "traditional-bindings"
        );
        assert_eq!(BindlessSupport::Static.to_string(), "static");
    }
}
