//! How a kernel's two answers are judged equal: the kernel's [`Agreement`]s applied to
//! a race's outputs (SPEC §9). Owns the mapping from a kernel's registration (a
//! workload's one canonical answer, or a pair's written bindings) to the comparison of
//! each output; decides nothing else and never touches a verdict.

use crate::backend::{KernelVariant, ScalarKind};
use crate::policy::Agreement;

use super::batch::Output;
use super::error::EngineError;
use super::events::MismatchDetail;

/// The comparisons of one kernel.
#[derive(Debug, Clone)]
pub(crate) enum KernelAgreement {
    /// A workload's canonical answer, compared as the workload says.
    Answer(Agreement),
    /// A pair's written bindings, in binding order: each output's comparison.
    Bindings(Vec<(u32, Agreement)>),
}

impl KernelAgreement {
    /// A pair's comparisons: `Exact` for every written binding of the conservative
    /// variant (`variants[0]`) but those `declared` (slot, agreement). Refused: a
    /// declared slot the kernel does not write; a `Float` tolerance that is negative
    /// or NaN; a `Float` agreement on a binding whose elements some variant's shader
    /// declares as another type (e.g. `f32` on an `array<u32>`, or `F64` on `f32`).
    pub(crate) fn for_pair(
        name: &str,
        variants: &[KernelVariant],
        declared: &[(u32, Agreement)],
    ) -> Result<Self, EngineError> {
        let invalid = |reason: String, fix: &'static str| EngineError::InvalidKernel {
            kernel: name.to_owned(),
            reason,
            fix,
        };
        let written: Vec<u32> = variants
            .first()
            .map(|v| v.bindings.as_slice())
            .unwrap_or_default()
            .iter()
            .filter(|b| b.access.writes())
            .map(|b| b.slot)
            .collect();
        if let Some((slot, _)) = declared.iter().find(|(slot, _)| !written.contains(slot)) {
            return Err(invalid(
                format!("an agreement is declared for binding {slot}, which the kernel does not write (it writes {written:?})"),
                "declare agreements only for the output bindings the kernel writes",
            ));
        }
        for (slot, agreement) in declared {
            let Agreement::Float { elem, rel, abs, .. } = agreement else {
                continue;
            };
            if !(*rel >= 0.0 && *abs >= 0.0) {
                return Err(invalid(
                    format!("binding {slot}'s float tolerance has rel {rel} and abs {abs}"),
                    "give tolerances that are zero or positive numbers",
                ));
            }
            let declared_as = variants.iter().find_map(|v| {
                let binding = v.bindings.iter().find(|b| b.slot == *slot)?;
                let element = binding.element?;
                let fits =
                    element.kind == ScalarKind::Float && usize::from(element.bytes) == elem.size();
                (!fits).then_some((v.name.as_str(), element))
            });
            if let Some((variant, element)) = declared_as {
                return Err(invalid(
                    format!("binding {slot} is compared as {elem:?} floats, but variant `{variant}` declares its elements as {element}"),
                    "compare it with `Agreement::Exact`, or with `Agreement::Custom` if it holds floats as bits",
                ));
            }
        }
        Ok(KernelAgreement::Bindings(
            written
                .into_iter()
                .map(|slot| {
                    let agreement = declared
                        .iter()
                        .rev()
                        .find(|(s, _)| *s == slot)
                        .map_or(Agreement::Exact, |(_, a)| a.clone());
                    (slot, agreement)
                })
                .collect(),
        ))
    }

    /// Compares the conservative and the speculative output; `Err` names where they
    /// first disagree.
    pub(crate) fn compare(
        &self,
        conservative: &Output,
        speculative: &Output,
    ) -> Result<(), MismatchDetail> {
        let detail = |binding: Option<u32>, d: crate::policy::Disagreement| MismatchDetail {
            binding,
            element: d.element,
            values: d.values,
            difference: d.difference,
            detail: d.detail,
        };
        match (self, conservative, speculative) {
            (KernelAgreement::Answer(agreement), Output::Answer(c), Output::Answer(s)) => {
                agreement.compare(c, s).map_err(|d| detail(None, d))
            }
            (KernelAgreement::Bindings(bindings), Output::Buffers(c), Output::Buffers(s)) => {
                if c.len() != s.len() {
                    return Err(MismatchDetail {
                        binding: None,
                        element: None,
                        values: None,
                        difference: None,
                        detail: format!("{} output buffers against {}", c.len(), s.len()),
                    });
                }
                for (i, (c, s)) in c.iter().zip(s.iter()).enumerate() {
                    let (slot, agreement) = bindings
                        .get(i)
                        .map_or((None, &Agreement::Exact), |(slot, a)| (Some(*slot), a));
                    agreement.compare(c, s).map_err(|d| detail(slot, d))?;
                }
                Ok(())
            }
            _ => Err(MismatchDetail {
                binding: None,
                element: None,
                values: None,
                difference: None,
                detail: "the two answers are of different kinds".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BindingAccess, Scalar};
    use crate::engine::Buffers;

    fn pair() -> KernelVariant {
        KernelVariant::cpu(
            "k",
            &[
                BindingAccess::Read,
                BindingAccess::Write,
                BindingAccess::ReadWrite,
            ],
            0,
            |_, _, _| Ok(()),
        )
    }

    #[test]
    fn a_pair_compares_each_written_binding_as_declared() {
        let agreements =
            KernelAgreement::for_pair("k", &[pair()], &[(2, Agreement::f32_ulps(1))]).unwrap();
        let one = 1.0f32.to_le_bytes().to_vec();
        let next = f32::from_bits(1.0f32.to_bits() + 1).to_le_bytes().to_vec();
        let c = Output::Buffers(Buffers::from(vec![one.clone(), one.clone()]));
        let close = Output::Buffers(Buffers::from(vec![one.clone(), next.clone()]));
        assert!(
            agreements.compare(&c, &close).is_ok(),
            "binding 2 within 1 ulp"
        );
        let off = Output::Buffers(Buffers::from(vec![next, one]));
        let d = agreements.compare(&c, &off).unwrap_err();
        assert_eq!(d.binding, Some(1), "binding 1 is exact");
        assert_eq!(d.element, Some(0));
    }

    #[test]
    fn an_agreement_on_a_binding_the_kernel_does_not_write_is_refused() {
        let e = KernelAgreement::for_pair("k", &[pair()], &[(0, Agreement::f32_ulps(1))]);
        assert!(matches!(e, Err(EngineError::InvalidKernel { .. })));
    }

    /// `pair()` with its written bindings' elements declared as a shader would.
    fn typed_pair(name: &str, elements: [Scalar; 2]) -> KernelVariant {
        let mut v = pair();
        v.name = name.into();
        v.bindings[1].element = Some(elements[0]);
        v.bindings[2].element = Some(elements[1]);
        v
    }

    const F32: Scalar = Scalar {
        kind: ScalarKind::Float,
        bytes: 4,
    };
    const U32: Scalar = Scalar {
        kind: ScalarKind::Uint,
        bytes: 4,
    };

    #[test]
    fn a_float_tolerance_on_a_binding_a_variant_declares_as_integers_is_refused() {
        let good = typed_pair("k/good", [U32, F32]);
        let ok = KernelAgreement::for_pair(
            "k",
            std::slice::from_ref(&good),
            &[(2, Agreement::f32_ulps(1))],
        );
        assert!(ok.is_ok(), "{ok:?}");
        let on_u32 = KernelAgreement::for_pair(
            "k",
            std::slice::from_ref(&good),
            &[(1, Agreement::f32_ulps(1))],
        );
        match on_u32 {
            Err(EngineError::InvalidKernel { reason, .. }) => {
                assert!(
                    reason.contains("binding 1") && reason.contains("u32"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
        // A speculative variant that declares the binding otherwise is caught too.
        let odd = typed_pair("k/odd", [U32, U32]);
        let e =
            KernelAgreement::for_pair("k", &[good.clone(), odd], &[(2, Agreement::f32_ulps(1))]);
        match e {
            Err(EngineError::InvalidKernel { reason, .. }) => {
                assert!(reason.contains("k/odd"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        let wide = Agreement::Float {
            elem: crate::policy::FloatElem::F64,
            max_ulps: 0,
            rel: 0.0,
            abs: 0.0,
        };
        assert!(KernelAgreement::for_pair("k", &[good], &[(2, wide)]).is_err());
    }

    #[test]
    fn a_negative_or_nan_tolerance_is_refused() {
        for (rel, abs) in [(-1e-6, 0.0), (0.0, f64::NAN)] {
            let tolerance = Agreement::Float {
                elem: crate::policy::FloatElem::F32,
                max_ulps: 0,
                rel,
                abs,
            };
            let e = KernelAgreement::for_pair("k", &[pair()], &[(2, tolerance)]);
            assert!(matches!(e, Err(EngineError::InvalidKernel { .. })), "{e:?}");
        }
    }
}
