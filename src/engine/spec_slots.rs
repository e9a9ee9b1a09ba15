//! A kernel's specialised pipelines: one slot per (device, variant, values of its
//! specialisation constants), compiled at most once — by the first batch of a tuning key
//! that needs it, or ahead of it by a trace-JIT pre-specialisation.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::backend::{Backend, BackendError, KernelHandle};

use super::registry::Kernel;
use super::spec_slot::{Readiness, SpecLoad, SpecSlot, UnusedPre};
use super::tuning::TuningKey;

impl Kernel {
    /// The values of `variant`'s specialisation constants that batches of `key` run
    /// with; empty for a variant without any.
    pub(crate) fn spec_values(&self, variant: usize, key: &TuningKey) -> Vec<(u32, u32)> {
        match self.specs.get(variant) {
            Some(Some(spec)) => spec.values_for(key),
            _ => Vec::new(),
        }
    }

    /// The slot of `variant` specialised with `values` on `device`, made if missing.
    fn spec_slot(&self, device: usize, variant: usize, values: &[(u32, u32)]) -> Arc<SpecSlot> {
        let mut slots = self.specialised.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(slots.entry((device, variant, values.into())).or_default())
    }

    /// The handle a batch of tuning key `key` runs `variant` with on `device`: the
    /// variant's own for a variant without specialisation constants (as
    /// [`handle`](Self::handle)), else the pipeline specialised with the values the key
    /// picks — compiled here, on the batch's critical path, unless it is ready or a
    /// trace-JIT pre-specialisation is compiling it (then this waits for that one).
    pub(crate) fn handle_for(
        &self,
        backend: &dyn Backend,
        device: usize,
        variant: usize,
        key: &TuningKey,
    ) -> Result<(KernelHandle, Readiness), BackendError> {
        let values = self.spec_values(variant, key);
        if values.is_empty() {
            let (h, compiled_ns) = self.handle(backend, device, variant)?;
            let first_use_of_pre = compiled_ns.is_none()
                && self.slot(device, variant).is_some_and(|s| {
                    s.preloaded.load(Ordering::Acquire) && !s.resolved.swap(true, Ordering::AcqRel)
                });
            return Ok((
                h,
                Readiness {
                    compiled_ns,
                    first_use_of_pre,
                },
            ));
        }
        let slot = self.spec_slot(device, variant, &values);
        let mut load = slot.load.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match *load {
                SpecLoad::Ready(h) => {
                    drop(load);
                    let first_use_of_pre = slot.pre.load(Ordering::Acquire)
                        && !slot.resolved.swap(true, Ordering::AcqRel);
                    return Ok((
                        h,
                        Readiness {
                            compiled_ns: None,
                            first_use_of_pre,
                        },
                    ));
                }
                SpecLoad::Loading => {
                    load = slot.loaded.wait(load).unwrap_or_else(|p| p.into_inner());
                }
                SpecLoad::Empty => break,
            }
        }
        *load = SpecLoad::Loading;
        drop(load);
        let (compiled, ns) = self.compile(backend, (device, variant), &values, &slot)?;
        Ok((
            compiled,
            Readiness {
                compiled_ns: Some(ns),
                first_use_of_pre: false,
            },
        ))
    }

    /// Compiles `variant` specialised with `values` on `device` into `slot`, which the
    /// caller marked `Loading`; on failure the slot is empty again (a later batch
    /// tries again). Feeds the measured time (returned with the handle) into
    /// trace-JIT's compile cost.
    fn compile(
        &self,
        backend: &dyn Backend,
        (device, variant): (usize, usize),
        values: &[(u32, u32)],
        slot: &SpecSlot,
    ) -> Result<(KernelHandle, u64), BackendError> {
        let started = Instant::now();
        let loaded = catch_unwind(AssertUnwindSafe(|| {
            backend.load_kernel_specialised(device, &self.variants[variant], values)
        }))
        .unwrap_or_else(|_| {
            Err(BackendError::Unknown {
                what: format!(
                    "a panic while compiling `{}` specialised with {values:?}",
                    self.variants[variant].name
                ),
            })
        });
        let ns = u64::try_from(started.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut load = slot.load.lock().unwrap_or_else(|p| p.into_inner());
        *load = match &loaded {
            Ok(h) => SpecLoad::Ready(*h),
            Err(_) => SpecLoad::Empty,
        };
        drop(load);
        slot.loaded.notify_all();
        let h = loaded?;
        self.trace.note_compile(ns);
        Ok((h, ns))
    }

    /// Claims the pre-specialisation of `variant` with `values` on `device`: true when
    /// nobody has compiled or is compiling it, and from now on a batch that needs it
    /// waits for [`pre_specialise`](Self::pre_specialise) instead of compiling it.
    pub(crate) fn claim_pre(&self, device: usize, variant: usize, values: &[(u32, u32)]) -> bool {
        let slot = self.spec_slot(device, variant, values);
        let mut load = slot.load.lock().unwrap_or_else(|p| p.into_inner());
        if *load != SpecLoad::Empty {
            return false;
        }
        *load = SpecLoad::Loading;
        slot.pre.store(true, Ordering::Release);
        true
    }

    /// Compiles a pre-specialisation claimed by [`claim_pre`](Self::claim_pre); the
    /// compile time in ns.
    pub(crate) fn pre_specialise(
        &self,
        backend: &dyn Backend,
        device: usize,
        variant: usize,
        values: &[(u32, u32)],
    ) -> Result<u64, BackendError> {
        let slot = self.spec_slot(device, variant, values);
        let compiled = self.compile(backend, (device, variant), values, &slot);
        if compiled.is_err() {
            slot.pre.store(false, Ordering::Release);
        }
        compiled.map(|(_, ns)| ns)
    }

    /// Every pre-specialised pipeline (or pre-loaded variant) no batch used yet, each
    /// marked counted: what shutdown reports as wasted.
    pub(crate) fn unused_pre(&self) -> Vec<UnusedPre> {
        let slots = self.specialised.lock().unwrap_or_else(|p| p.into_inner());
        let mut unused: Vec<UnusedPre> = slots
            .iter()
            .filter(|(_, s)| {
                s.pre.load(Ordering::Acquire) && !s.resolved.swap(true, Ordering::AcqRel)
            })
            .map(|((device, variant, values), _)| UnusedPre {
                device: *device,
                variant: *variant,
                constants: values.to_vec(),
            })
            .collect();
        drop(slots);
        for (device, row) in self.handles.iter().enumerate() {
            for (variant, slot) in row.iter().enumerate() {
                if slot.preloaded.load(Ordering::Acquire)
                    && !slot.resolved.swap(true, Ordering::AcqRel)
                {
                    unused.push(UnusedPre {
                        device,
                        variant,
                        constants: Vec::new(),
                    });
                }
            }
        }
        unused.sort_by_key(|u| (u.device, u.variant));
        unused
    }
}
