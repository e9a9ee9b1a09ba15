//! Registering kernels: a workload ([`Engine::register`]) or a user's SPIR-V variants
//! ([`Engine::register_variants`] and its kin), validated and loaded, with the fused
//! path of each speculative variant found out and the kernel's stored verdicts resumed.

use std::sync::Arc;

use crate::backend::KernelVariant;
use crate::kernels::{InputShape, Workload};
use crate::speculator::SpeculationMode;

use super::agree;
use super::error::EngineError;
use super::handle::Engine;
use super::priors;
use super::registry::{Kernel, KernelSource};
use super::sample::KernelId;
use super::specialise::Specialization;
#[cfg(doc)] // for doc links
use super::{batch::Batch, events::Event};
#[cfg(doc)]
use crate::policy::Agreement;

/// Whether the workload's speculative variant `variant` writes a counter tail (is
/// fused), read from its declared output layout without running it: the tail parser is
/// given the zero-filled outputs the variant's plan declares for a small input. `None`
/// when the workload cannot plan that input.
fn declares_counter_tail(kernel: &Kernel, workload: &dyn Workload, variant: usize) -> Option<bool> {
    let input = workload.generate(InputShape::Uniform, 1024, 0);
    let plan = workload.plan(variant, &input).ok()?;
    let outputs: Vec<Vec<u8>> = kernel.variants[variant]
        .bindings
        .iter()
        .zip(&plan.buffers)
        .filter(|(binding, _)| binding.access.writes())
        .map(|(_, buffer)| vec![0; usize::try_from(buffer.len()).unwrap_or(0)])
        .collect();
    Some(workload.speculation_report(variant, &outputs).is_some())
}

impl Engine {
    /// Registers a workload: its conservative variant (0) and every speculative variant
    /// (1..) are validated and loaded in parallel — the conservative one on every
    /// device, the speculative ones on the first (the others load them on demand).
    /// Several speculative variants are raced in turn, as for
    /// [`Engine::register_variants`]. After [`Engine::shutdown`] it returns
    /// [`EngineError::ShutDown`].
    pub fn register(&self, workload: Arc<dyn Workload>) -> Result<KernelId, EngineError> {
        if self.core.gate.is_closed() {
            return Err(EngineError::ShutDown);
        }
        let variants = workload.variants();
        let name = workload.name().to_string();
        let kernel = self.core.registry.add(
            self.core.backend.as_ref(),
            name,
            KernelSource::Workload(Arc::clone(&workload)),
            (variants, Vec::new()),
            agree::KernelAgreement::Answer(workload.agreement()),
            self.core.config.max_keys_per_kernel,
        )?;
        for spec in 1..=kernel.speculative_count() {
            let declared = declares_counter_tail(&kernel, workload.as_ref(), spec);
            // Under `Disable` a kernel whose layout cannot be read is treated as fused:
            // the fused path must never run, not even once to find out.
            let fused = declared.unwrap_or(self.core.config.mode == SpeculationMode::Disable);
            kernel.set_fused(spec, fused);
            if self.core.config.mode == SpeculationMode::Force {
                self.probe_fused(&kernel, workload.as_ref(), spec)?;
            }
        }
        priors::resume_keys(&self.core, &kernel);
        Ok(kernel.id)
    }

    /// Under `SpeculationMode::Force`: runs speculative variant `spec` once on a small
    /// generated input and refuses the kernel unless it writes a counter tail (has a
    /// fused path) on this backend — never a silent fallback.
    fn probe_fused(
        &self,
        kernel: &Kernel,
        workload: &dyn Workload,
        spec: usize,
    ) -> Result<(), EngineError> {
        let unsupported = |reason: String| EngineError::SpeculationUnsupported {
            kernel: kernel.name.clone(),
            reason,
        };
        let Some(&queue) = self.core.backend.queues().first() else {
            return Err(unsupported(
                "the backend has no queue to probe the fused path on".into(),
            ));
        };
        let (handle, _) = kernel
            .handle(self.core.backend.as_ref(), queue.device, spec)
            .map_err(|source| EngineError::Backend {
                kernel: kernel.name.clone(),
                source,
            })?;
        let input = workload.generate(InputShape::Uniform, 1024, 0);
        let plan = workload.plan(spec, &input)?;
        let job = plan.into_job(queue, handle);
        let out = self
            .core
            .backend
            .dispatch(std::slice::from_ref(&job))
            .pop()
            .ok_or_else(|| unsupported("the backend returned no result for the probe".into()))?
            .map_err(|source| EngineError::Backend {
                kernel: kernel.name.clone(),
                source,
            })?;
        match workload.speculation_report(spec, &out.outputs) {
            Some(_) => {
                kernel.set_fused(spec, true);
                Ok(())
            }
            None => Err(unsupported(format!(
                "its speculative variant `{}` has no fused path (writes no counter tail) on the {} backend",
                kernel.variants[spec].name,
                self.core.backend.kind()
            ))),
        }
    }

    /// Registers a user's SPIR-V variant pair (same bindings, same push constants).
    /// Batches for it carry their own buffers ([`Batch::with_plan`]).
    pub fn register_pair(
        &self,
        name: &str,
        conservative: KernelVariant,
        speculative: KernelVariant,
    ) -> Result<KernelId, EngineError> {
        self.register_variants(name, conservative, vec![speculative])
    }

    /// Registers a user's SPIR-V kernel with a conservative variant and one or more
    /// speculative variants (all with the conservative one's bindings and push-constant
    /// size). The speculative variants are raced against the conservative one in turn,
    /// in the order given: each until its verdict, then the next; once all are decided
    /// the adopted one measured fastest runs (see [`Event::VariantInPlay`]).
    /// [`Engine::register_pair`] is the one-variant case. After [`Engine::shutdown`]
    /// both return [`EngineError::ShutDown`].
    ///
    /// On the CPU backend a variant's `cpu` function is its code; on Vulkan its
    /// `spirv`. Here three speculative variants of a byte sum, one of them wrong, race
    /// a slow conservative one:
    ///
    /// ```
    /// use std::sync::Arc;
    /// use photofinish::backend::{BindingAccess, BufferArg, KernelVariant};
    /// use photofinish::kernels::DispatchPlan;
    /// use photofinish::{BackendChoice, Batch, Engine, KernelVerdict, Output};
    ///
    /// // Sums the input bytes (plus `off_by`) after `spin` rounds of busy work.
    /// fn sum(name: &str, spin: u32, off_by: u64) -> KernelVariant {
    ///     let layout = [BindingAccess::Read, BindingAccess::Write];
    ///     KernelVariant::cpu(name, &layout, 0, move |buffers, _, _| {
    ///         let mut x = 0u32;
    ///         for i in 0..spin {
    ///             x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
    ///         }
    ///         let total: u64 = buffers[0].iter().map(|&b| u64::from(b)).sum();
    ///         buffers[1][..8].copy_from_slice(&(total + off_by).to_le_bytes());
    ///         Ok(())
    ///     })
    /// }
    ///
    /// let engine = Engine::builder()
    ///     .backend(BackendChoice::Cpu)
    ///     .without_autotune_file()
    ///     .build()?;
    /// let kernel = engine.register_variants(
    ///     "sum",
    ///     sum("sum/slow", 400_000, 0),
    ///     vec![sum("sum/wrong", 0, 1), sum("sum/fast", 1_000, 0), sum("sum/faster", 10, 0)],
    /// )?;
    /// let input: Vec<u8> = (0..=255).collect();
    /// let expected = (0..=255u64).sum::<u64>().to_le_bytes().to_vec();
    /// while engine.kernel_stats(kernel).unwrap().variant_verdicts.contains(&KernelVerdict::Undecided) {
    ///     let plan = DispatchPlan {
    ///         buffers: vec![BufferArg::Data(input.clone().into()), BufferArg::Zeroed(8)],
    ///         push_constants: Vec::new(),
    ///         workgroups: [1, 1, 1],
    ///     };
    ///     let answer = engine.submit(Batch::with_plan(kernel, plan))?.wait()?;
    ///     // The wrong variant never answers: a race returns the conservative answer.
    ///     assert_eq!(answer.output, Output::Buffers(vec![expected.clone()].into()));
    /// }
    /// let stats = engine.kernel_stats(kernel).unwrap();
    /// assert_eq!(stats.variant_verdicts[0], KernelVerdict::Rejected); // caught disagreeing
    /// assert_eq!(engine.verdict(kernel), Some(KernelVerdict::Adopted));
    /// println!("in play: variant {} of {:?}", stats.variant, stats.variant_verdicts);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn register_variants(
        &self,
        name: &str,
        conservative: KernelVariant,
        speculative: Vec<KernelVariant>,
    ) -> Result<KernelId, EngineError> {
        self.register_variants_agreeing(name, conservative, speculative, &[])
    }

    /// [`Engine::register_variants`] with the comparison of each output binding
    /// declared (SPEC §9): `agreements` lists (binding slot, [`Agreement`]) for the
    /// bindings not compared byte for byte — e.g. an `f32` output of a variant that
    /// fuses multiply-adds, within a few ulps. A slot the kernel does not write is
    /// `InvalidKernel`. A disagreement is published as `Event::MismatchCaught`, whose
    /// `detail` names the binding, the first element and the difference.
    ///
    /// ```
    /// use photofinish::{Agreement, BackendChoice, BindingAccess, Engine, KernelVariant};
    ///
    /// let engine = Engine::builder().backend(BackendChoice::Cpu).without_autotune_file().build()?;
    /// let layout = [BindingAccess::Read, BindingAccess::Write];
    /// let sum = |name: &str| KernelVariant::cpu(name, &layout, 0, |_, _, _| Ok(()));
    /// let kernel = engine.register_variants_agreeing(
    ///     "scale",
    ///     sum("scale/plain"),
    ///     vec![sum("scale/fma")],
    ///     &[(1, Agreement::f32_ulps(2))],
    /// )?;
    /// # let _ = kernel;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn register_variants_agreeing(
        &self,
        name: &str,
        conservative: KernelVariant,
        speculative: Vec<KernelVariant>,
        agreements: &[(u32, crate::policy::Agreement)],
    ) -> Result<KernelId, EngineError> {
        self.register_variants_specialised(name, conservative, speculative, agreements, Vec::new())
    }

    /// [`Engine::register_variants_agreeing`] with SPIR-V specialisation constants
    /// (SPEC §12): `specialisations` lists (variant index, [`Specialization`]) for the
    /// variants that declare constants (0 is the conservative one). A batch of tuning
    /// key K runs such a variant on the pipeline specialised with the values K picks,
    /// compiled once per device and set of values — on the first batch that needs it,
    /// or ahead of it, in the background, when trace-JIT predicts K
    /// (`Event::KeyPreSpecialised`). Each variant's autotune entries for K name the
    /// values in their `spec_hash`. A constant id the variant's SPIR-V does not
    /// declare, a constant without candidates or an index past the variants is
    /// `InvalidKernel`. On the CPU backend the constants do not reach the variant's CPU
    /// code.
    ///
    /// ```
    /// use photofinish::{BackendChoice, BindingAccess, Engine, KernelVariant, Specialization};
    ///
    /// let engine = Engine::builder().backend(BackendChoice::Cpu).without_autotune_file().build()?;
    /// let layout = [BindingAccess::Read, BindingAccess::Write];
    /// let sum = |name: &str| KernelVariant::cpu(name, &layout, 0, |_, _, _| Ok(()));
    /// let kernel = engine.register_variants_specialised(
    ///     "sum",
    ///     sum("sum/plain"),
    ///     vec![sum("sum/unrolled")],
    ///     &[],
    ///     vec![(1, Specialization::new().constant(0, "unroll", &[1, 2, 4, 8]))],
    /// )?;
    /// # let _ = kernel;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn register_variants_specialised(
        &self,
        name: &str,
        conservative: KernelVariant,
        speculative: Vec<KernelVariant>,
        agreements: &[(u32, crate::policy::Agreement)],
        specialisations: Vec<(usize, Specialization)>,
    ) -> Result<KernelId, EngineError> {
        if self.core.gate.is_closed() {
            return Err(EngineError::ShutDown);
        }
        if self.core.config.mode == SpeculationMode::Force {
            return Err(EngineError::SpeculationUnsupported {
                kernel: name.to_string(),
                reason: "a SPIR-V pair has no counter tail the engine can read, so no fused path"
                    .into(),
            });
        }
        let variants: Vec<KernelVariant> =
            std::iter::once(conservative).chain(speculative).collect();
        let agreement = agree::KernelAgreement::for_pair(name, &variants, agreements)?;
        let mut specs: Vec<Option<Specialization>> = vec![None; variants.len()];
        for (index, spec) in specialisations {
            let Some(slot) = specs.get_mut(index) else {
                return Err(EngineError::InvalidKernel {
                    kernel: name.to_string(),
                    reason: format!(
                        "a specialisation is declared for variant {index}; the kernel has {} variants",
                        variants.len()
                    ),
                    fix: "index the variants from 0 (the conservative one), in the order given",
                });
            };
            *slot = Some(spec);
        }
        let kernel = self.core.registry.add(
            self.core.backend.as_ref(),
            name.to_string(),
            KernelSource::Pair,
            (variants, specs),
            agreement,
            self.core.config.max_keys_per_kernel,
        )?;
        priors::resume_keys(&self.core, &kernel);
        Ok(kernel.id)
    }
}
