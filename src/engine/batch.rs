//! What a caller hands the engine and what it gets back: a [`Batch`] (its kernel, its
//! payload and its application key) and its [`Answer`] (the [`Output`], which arm and
//! variant produced it, on which queue). Plain data: nothing here runs, waits or
//! decides.

use std::sync::Arc;

use crate::backend::QueueId;
use crate::kernels::DispatchPlan;

use super::buffers::Buffers;
use super::sample::{Arm, KernelId};
use super::tuning::TuningKey;

/// What a batch carries.
#[derive(Debug, Clone)]
pub(crate) enum Payload {
    /// Input bytes for a workload kernel.
    Input(Arc<[u8]>),
    /// Buffers, push constants and workgroups for a SPIR-V pair (boxed: no count to
    /// write when the caller's thread drops it; see `retired_plans`).
    Plan(Box<DispatchPlan>),
    /// A plan whose workgroups each variant derives from this many items (SPEC §10).
    Items(Box<DispatchPlan>, u64),
}

/// One unit of work for a registered kernel.
#[derive(Debug, Clone)]
pub struct Batch {
    pub(super) kernel: KernelId,
    pub(super) payload: Payload,
    pub(super) app: Option<u64>,
}

impl Batch {
    /// A batch of input bytes for a workload kernel (`Engine::register`).
    pub fn new(kernel: KernelId, input: impl Into<Arc<[u8]>>) -> Self {
        Batch {
            kernel,
            payload: Payload::Input(input.into()),
            app: None,
        }
    }

    /// A batch for a SPIR-V pair (`Engine::register_pair`): its own buffers, push
    /// constants and workgroup counts. Cloning the batch copies the plan's lists (a
    /// `BufferArg::Data`'s bytes are shared, not copied).
    pub fn with_plan(kernel: KernelId, plan: DispatchPlan) -> Self {
        Batch {
            kernel,
            payload: Payload::Plan(Box::new(plan)),
            app: None,
        }
    }

    /// A batch for a SPIR-V or WGSL pair that covers `items` items: each variant
    /// dispatches its own workgroups for them, `ceil(items / (its workgroup
    /// invocations × its items per invocation))` in x
    /// ([`KernelVariant::workgroups_for_items`](crate::KernelVariant::workgroups_for_items)),
    /// so variants of different workgroup sizes or items per invocation race on one
    /// batch without grid-stride loops. The plan's `workgroups` is not read. A count a
    /// variant cannot dispatch on the engine's devices is refused at submission
    /// ([`EngineError::Plan`](crate::EngineError::Plan)).
    ///
    /// ```
    /// use photofinish::{BackendChoice, Batch, BindingAccess, BufferArg, DispatchPlan, Engine, KernelVariant};
    ///
    /// let engine = Engine::builder().backend(BackendChoice::Cpu).without_autotune_file().build()?;
    /// let layout = [BindingAccess::Write];
    /// // Each writes, per workgroup it was given, one 1 into out[workgroup].
    /// let mark = |buffers: &mut [Vec<u8>], _: &[u8], groups: [u32; 3]| {
    ///     for g in 0..groups[0] as usize {
    ///         buffers[0][4 * g] = 1;
    ///     }
    ///     Ok(())
    /// };
    /// let one = KernelVariant::cpu("mark/one", &layout, 0, mark);
    /// let four = KernelVariant::cpu("mark/four", &layout, 0, mark).with_items_per_invocation(4);
    /// let kernel = engine.register_variants("mark", one, vec![four])?;
    /// let plan = DispatchPlan::new(vec![BufferArg::zeroed::<u32>(8)], [0, 1, 1]);
    /// let answer = engine.submit(Batch::for_items(kernel, plan, 8))?.wait()?;
    /// // The conservative variant (1 item per invocation, workgroup size 1) ran 8 groups.
    /// let photofinish::Output::Buffers(out) = answer.output else { unreachable!() };
    /// assert_eq!(out.view::<u32>(0).unwrap().iter().sum::<u32>(), 8);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn for_items(kernel: KernelId, plan: DispatchPlan, items: u64) -> Self {
        Batch {
            kernel,
            payload: Payload::Items(Box::new(plan), items),
            app: None,
        }
    }

    /// The kernel this batch is for.
    pub fn kernel(&self) -> KernelId {
        self.kernel
    }

    /// This batch with application key `app` in its tuning key (SPEC §8): whatever
    /// the application knows makes the winner differ besides the batch's size — a data
    /// distribution tag, a hash of a shape tuple. Batches with different application
    /// keys get verdicts of their own and never share one.
    #[must_use]
    pub fn with_tuning_key(mut self, app: u64) -> Self {
        self.app = Some(app);
        self
    }

    /// The tuning key this batch's verdict belongs to: its size class (the bytes of
    /// its input, or of its plan's buffers, rounded up to a power of two, at least
    /// [`MIN_SIZE_CLASS_BYTES`](super::MIN_SIZE_CLASS_BYTES)) and its application key.
    pub fn tuning_key(&self) -> TuningKey {
        TuningKey::for_bytes(payload_len(&self.payload) as u64, self.app)
    }
}

/// What a batch produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A workload's canonical answer (equal to `Workload::reference` of the input).
    Answer(Vec<u8>),
    /// A SPIR-V pair's written buffers, in binding order (small ones held inline: see
    /// [`Buffers`]).
    Buffers(Buffers),
}

/// The answer to one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The output (always from a variant the engine trusts for this batch: the
    /// conservative one in a race).
    pub output: Output,
    /// Which arm's output this is.
    pub arm: Arm,
    /// The variant that produced it: 0 (conservative) or the speculative variant's
    /// index among the kernel's variants.
    pub variant: usize,
    /// True when both arms ran for this batch.
    pub raced: bool,
    /// That arm's kernel time, where the queue has timestamps and the run was timed:
    /// both arms of a race always are; of a kernel's single-arm runs (adopted or
    /// rejected) the first and one in [`TIMED_SINGLE_PERIOD`](super::TIMED_SINGLE_PERIOD) are, the others may be
    /// `None` (timing costs the Vulkan backend two timestamp queries).
    pub kernel_ns: Option<u64>,
    /// The queue it ran on.
    pub queue: QueueId,
}

/// Bytes a batch carries.
pub(crate) fn payload_len(payload: &Payload) -> usize {
    match payload {
        Payload::Input(input) => input.len(),
        Payload::Plan(plan) | Payload::Items(plan, _) => {
            plan.buffers.iter().map(|b| b.len() as usize).sum()
        }
    }
}
