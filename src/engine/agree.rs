//! How a kernel's two answers are judged equal: the kernel's [`Agreement`]s applied to
//! a race's outputs (SPEC §9). Owns the mapping from a kernel's registration (a
//! workload's one canonical answer, or a pair's written bindings) to the comparison of
//! each output; decides nothing else and never touches a verdict.

use crate::backend::KernelVariant;
use crate::policy::Agreement;

use super::error::EngineError;
use super::events::MismatchDetail;
use super::Output;

/// The comparisons of one kernel.
#[derive(Debug, Clone)]
pub(crate) enum KernelAgreement {
    /// A workload's canonical answer, compared as the workload says.
    Answer(Agreement),
    /// A pair's written bindings, in binding order: each output's comparison.
    Bindings(Vec<(u32, Agreement)>),
}

impl KernelAgreement {
    /// A pair's comparisons: `Exact` for every written binding of `conservative` but
    /// those `declared` (slot, agreement). A declared slot that the kernel does not
    /// write is refused.
    pub(crate) fn for_pair(
        name: &str,
        conservative: &KernelVariant,
        declared: &[(u32, Agreement)],
    ) -> Result<Self, EngineError> {
        let written: Vec<u32> = conservative
            .bindings
            .iter()
            .filter(|b| b.access.writes())
            .map(|b| b.slot)
            .collect();
        if let Some((slot, _)) = declared.iter().find(|(slot, _)| !written.contains(slot)) {
            return Err(EngineError::InvalidKernel {
                kernel: name.to_owned(),
                reason: format!(
                    "an agreement is declared for binding {slot}, which the kernel does not write (it writes {written:?})"
                ),
                fix: "declare agreements only for the output bindings the kernel writes",
            });
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
    use crate::backend::BindingAccess;
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
            KernelAgreement::for_pair("k", &pair(), &[(2, Agreement::f32_ulps(1))]).unwrap();
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
        let e = KernelAgreement::for_pair("k", &pair(), &[(0, Agreement::f32_ulps(1))]);
        assert!(matches!(e, Err(EngineError::InvalidKernel { .. })));
    }
}
