//! The kernel registry: every registered kernel, its loaded handles per device and its
//! live racing state (verdict, paired window, audit counter, fused-path flag).
//!
//! Registration validates and compiles both variants on every device in parallel on
//! rayon; lookups are lock-free reads of a dashmap. The registry keeps state; the race
//! module decides with it.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use rayon::prelude::*;

use crate::backend::{Backend, KernelHandle, KernelVariant};
use crate::kernels::Workload;
use crate::policy::{decide_speculation, SpeculationObservation, SpeculationVerdict};

use super::error::EngineError;
use super::verdict::VerdictCell;

/// The id `register` hands out; batches name their kernel with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KernelId(pub(crate) u32);

impl KernelId {
    /// The raw number.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for KernelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "k{}", self.0)
    }
}

/// What a kernel is: a built-in workload or a user's SPIR-V variant pair.
#[derive(Debug, Clone)]
pub(crate) enum KernelSource {
    /// A workload: batches carry input bytes, answers are canonical bytes.
    Workload(Arc<dyn Workload>),
    /// A raw pair: batches carry their buffers, answers are the written buffers.
    Pair,
}

/// Which arm: the conservative variant or the speculative one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arm {
    /// Variant 0, the known-good one.
    Conservative,
    /// The speculative variant.
    Speculative,
}

impl Arm {
    /// The workload variant index of this arm.
    pub(crate) fn variant(self) -> usize {
        match self {
            Arm::Conservative => 0,
            Arm::Speculative => 1,
        }
    }
}

const FUSED_UNKNOWN: u8 = 0;
const FUSED_YES: u8 = 1;
const FUSED_NO: u8 = 2;

/// Running means of both arms' kernel times for one kernel.
#[derive(Debug, Default, Clone)]
pub(crate) struct RaceWindow {
    conservative: (u32, u128),
    speculative: (u32, u128),
}

impl RaceWindow {
    /// Adds one paired sample and returns the verdict on the window so far. Counts
    /// saturate at `u32::MAX`; from then on the means stop moving.
    pub(crate) fn record(
        &mut self,
        conservative_ns: u64,
        speculative_ns: u64,
    ) -> SpeculationVerdict {
        for (side, ns) in [
            (&mut self.conservative, conservative_ns),
            (&mut self.speculative, speculative_ns),
        ] {
            if side.0 < u32::MAX {
                side.0 += 1;
                side.1 += u128::from(ns);
            }
        }
        decide_speculation(self.observation())
    }

    /// The observation `decide_speculation` sees.
    pub(crate) fn observation(&self) -> SpeculationObservation {
        let mean = |(n, total): (u32, u128)| {
            if n == 0 {
                0
            } else {
                u64::try_from(total / u128::from(n)).unwrap_or(u64::MAX)
            }
        };
        SpeculationObservation {
            baseline_dispatches: self.conservative.0,
            baseline_mean_ns: mean(self.conservative),
            speculative_dispatches: self.speculative.0,
            speculative_mean_ns: mean(self.speculative),
            side_compile_cost_ns: 0,
        }
    }
}

/// One registered kernel.
#[derive(Debug)]
pub(crate) struct Kernel {
    pub(crate) id: KernelId,
    pub(crate) name: String,
    pub(crate) source: KernelSource,
    /// `[conservative, speculative]`.
    pub(crate) variants: [KernelVariant; 2],
    /// `handles[device]` = `[conservative, speculative]` on that device.
    pub(crate) handles: Vec<[KernelHandle; 2]>,
    pub(crate) verdict: VerdictCell,
    fused: AtomicU8,
    pub(crate) audit_tick: AtomicU64,
    pub(crate) window: Mutex<RaceWindow>,
}

impl Kernel {
    /// `Some(true)`: the speculative variant is a fused kernel with a counter tail;
    /// `None`: not known yet (it has not run).
    pub(crate) fn fused(&self) -> Option<bool> {
        match self.fused.load(Ordering::Acquire) {
            FUSED_YES => Some(true),
            FUSED_NO => Some(false),
            _ => None,
        }
    }

    /// Records whether the speculative variant wrote a counter tail.
    pub(crate) fn set_fused(&self, fused: bool) {
        self.fused
            .store(if fused { FUSED_YES } else { FUSED_NO }, Ordering::Release);
    }

    /// The workload, for workload kernels.
    pub(crate) fn workload(&self) -> Option<&Arc<dyn Workload>> {
        match &self.source {
            KernelSource::Workload(w) => Some(w),
            KernelSource::Pair => None,
        }
    }
}

/// Every registered kernel, by id.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    kernels: DashMap<u32, Arc<Kernel>>,
    next: AtomicU64,
}

impl Registry {
    /// The kernel with this id.
    pub(crate) fn get(&self, id: KernelId) -> Option<Arc<Kernel>> {
        self.kernels.get(&id.0).map(|k| Arc::clone(k.value()))
    }

    /// Validates the pair, loads both variants on every device (in parallel on rayon)
    /// and adds the kernel.
    pub(crate) fn add(
        &self,
        backend: &dyn Backend,
        name: String,
        source: KernelSource,
        variants: [KernelVariant; 2],
    ) -> Result<Arc<Kernel>, EngineError> {
        if matches!(source, KernelSource::Pair) {
            validate_pair(&name, &variants)?;
        }
        let devices = backend.devices().len();
        let loads: Vec<(usize, usize)> = (0..devices)
            .flat_map(|d| [(d, 0usize), (d, 1usize)])
            .collect();
        let loaded: Vec<Result<KernelHandle, EngineError>> = loads
            .par_iter()
            .map(|&(device, arm)| {
                backend
                    .load_kernel(device, &variants[arm])
                    .map_err(|source| EngineError::Backend {
                        kernel: variants[arm].name.clone(),
                        source,
                    })
            })
            .collect();
        let mut handles = Vec::with_capacity(devices);
        let mut loaded = loaded.into_iter();
        for _ in 0..devices {
            let (Some(c), Some(s)) = (loaded.next(), loaded.next()) else {
                break;
            };
            handles.push([c?, s?]);
        }
        let id = u32::try_from(self.next.fetch_add(1, Ordering::Relaxed)).map_err(|_| {
            EngineError::InvalidKernel {
                kernel: name.clone(),
                reason: "more than u32::MAX kernels registered".into(),
                fix: "register each kernel once and reuse its id",
            }
        })?;
        let kernel = Arc::new(Kernel {
            id: KernelId(id),
            name,
            source,
            variants,
            handles,
            verdict: VerdictCell::default(),
            fused: AtomicU8::new(FUSED_UNKNOWN),
            audit_tick: AtomicU64::new(0),
            window: Mutex::new(RaceWindow::default()),
        });
        self.kernels.insert(id, Arc::clone(&kernel));
        Ok(kernel)
    }
}

/// The checks that make two variants raceable: same bindings, same push constants.
fn validate_pair(name: &str, [c, s]: &[KernelVariant; 2]) -> Result<(), EngineError> {
    let invalid = |reason: String| EngineError::InvalidKernel {
        kernel: name.to_string(),
        reason,
        fix: "give both variants the same bindings (slot and access) and push-constant size",
    };
    if c.bindings != s.bindings {
        return Err(invalid(format!(
            "bindings differ: conservative {:?}, speculative {:?}",
            c.bindings, s.bindings
        )));
    }
    if c.push_constant_bytes != s.push_constant_bytes {
        return Err(invalid(format!(
            "push constants differ: {} vs {} bytes",
            c.push_constant_bytes, s.push_constant_bytes
        )));
    }
    if !c.bindings.iter().any(|b| b.access.writes()) {
        return Err(invalid(
            "no binding is written, so there is no answer to compare".into(),
        ));
    }
    Ok(())
}
