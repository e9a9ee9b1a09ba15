//! Backends: what the engine drives to run a kernel variant on a queue.
//!
//! This module owns the [`Backend`] trait and the plain data that crosses it: device
//! descriptions, kernel variants, dispatch jobs and their outputs, and the typed
//! [`BackendError`]. It decides nothing (which variant to run, on which queue, is the
//! engine's job) and holds no state of its own; the implementations are the Vulkan
//! backend (vulkano, behind the default `vulkan` feature) and the CPU backend (rayon),
//! which is also the reference for correctness.

use std::fmt;
use std::sync::Arc;

pub mod cpu;
mod variant;
#[cfg(feature = "vulkan")]
pub mod vulkan;
#[cfg(feature = "wgsl")]
mod wgsl;

#[cfg(feature = "wgsl")]
pub use wgsl::ShaderError;

/// Why a batch planned by items cannot be dispatched by a variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// The variant would need more workgroups than a dispatch can have.
    #[error("variant `{variant}`: {items} items at {per_workgroup} per workgroup need {workgroups} workgroups, above the {max} a dispatch may have in x; cover more items per invocation (`KernelVariant::with_items_per_invocation`) or split the batch")]
    TooManyItems {
        /// The variant.
        variant: String,
        /// The batch's items.
        items: u64,
        /// Items one workgroup covers (its invocations × items per invocation).
        per_workgroup: u64,
        /// The workgroups it would need.
        workgroups: u64,
        /// The most a dispatch may have in x.
        max: u32,
    },
}

/// The kind of number a binding's elements hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ScalarKind {
    /// IEEE 754 floats (`f16`, `f32`, `f64`).
    Float,
    /// Unsigned integers (`u32`, `atomic<u32>`…).
    Uint,
    /// Signed integers.
    Sint,
    /// Booleans.
    Bool,
}

/// The scalar a binding's elements are made of, as reflected from the shader: the
/// leaf type through arrays, vectors, matrices and atomics (`array<vec4<f32>>` is
/// `f32`). A struct whose fields are of different scalars has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Scalar {
    /// Float, unsigned, signed or bool.
    pub kind: ScalarKind,
    /// Bytes per scalar.
    pub bytes: u8,
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let letter = match self.kind {
            ScalarKind::Float => "f",
            ScalarKind::Uint => "u",
            ScalarKind::Sint => "i",
            ScalarKind::Bool => return f.write_str("bool"),
        };
        write!(f, "{letter}{}", u32::from(self.bytes) * 8)
    }
}

/// Which implementation a [`Backend`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum BackendKind {
    /// Real Vulkan compute through vulkano.
    Vulkan,
    /// The CPU backend: each workload's variants as rayon code.
    Cpu,
    /// A backend written for tests (fault injection, actor machinery; feature
    /// `test-util`); never a real device.
    #[cfg(any(test, feature = "test-util"))]
    Test,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Vulkan => "vulkan",
            BackendKind::Cpu => "cpu",
            #[cfg(any(test, feature = "test-util"))]
            BackendKind::Test => "test",
        })
    }
}

/// One queue family of a device.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QueueFamilyInfo {
    /// The family index as the driver numbers it.
    pub index: u32,
    /// How many queues the family has.
    pub queue_count: u32,
    /// How many of them this backend opened (and so how many workers it can feed).
    pub opened: u32,
    /// Supports compute.
    pub compute: bool,
    /// Supports graphics.
    pub graphics: bool,
    /// Supports transfer.
    pub transfer: bool,
    /// Valid bits of a timestamp written on this family (0: no timestamps).
    pub timestamp_valid_bits: u32,
}

/// Limits of a device that decide whether a dispatch can run at all.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceLimits {
    /// `maxComputeWorkGroupCount`.
    pub max_workgroup_count: [u32; 3],
    /// `maxComputeWorkGroupSize`.
    pub max_workgroup_size: [u32; 3],
    /// `maxComputeWorkGroupInvocations`.
    pub max_workgroup_invocations: u32,
    /// `maxStorageBufferRange` in bytes.
    pub max_storage_buffer_range: u64,
    /// `maxPushConstantsSize` in bytes.
    pub max_push_constants_size: u32,
    /// The subgroup size, where the device reports one.
    pub subgroup_size: Option<u32>,
}

/// A description of one device a backend opened.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeviceInfo {
    /// Index among this backend's devices.
    pub index: usize,
    /// The device name as the driver reports it.
    pub name: String,
    /// `"cpu"`, `"discrete"`, `"integrated"`, `"virtual"`, `"other"`.
    pub device_type: String,
    /// Stable identifier of the adapter for autotune keys: vendor, device id, name.
    pub adapter_id: String,
    /// The device UUID (all zero for the CPU backend).
    pub device_uuid: [u8; 16],
    /// The driver's name and version, e.g. `"NVIDIA 580.159"`, `"llvmpipe 24.2.8"`.
    pub driver_version: String,
    /// Nanoseconds per timestamp tick (0.0: no timestamps).
    pub timestamp_period_ns: f32,
    /// Every queue family, opened or not.
    pub queue_families: Vec<QueueFamilyInfo>,
    /// Limits relevant to compute.
    pub limits: DeviceLimits,
    /// How much descriptor indexing the device supports (D9's input): `Full` with
    /// runtime descriptor arrays of storage buffers indexed non-uniformly and partially
    /// bound, `Static` with dynamically uniform indexing only, else `Unsupported` (the
    /// CPU backend has no descriptors).
    pub bindless: crate::policy::BindlessSupport,
}

/// A queue a backend opened: which device, which family, which queue of the family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct QueueId {
    /// Index of the device in [`Backend::devices`].
    pub device: usize,
    /// Queue family index.
    pub family: u32,
    /// Index of the queue within its family.
    pub index: u32,
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dev{}/fam{}/q{}", self.device, self.family, self.index)
    }
}

pub(crate) use variant::descriptor_counts;
pub use variant::{BindingAccess, BindingDesc, CpuKernelFn, KernelHandle, KernelVariant};

/// The contents of one binding for a dispatch, in binding order.
///
/// One rule on every backend (`check_buffers` applies it): a buffer is any non-zero
/// number of bytes up to the device's `maxStorageBufferRange`
/// ([`DeviceLimits::max_storage_buffer_range`]); either kind fits any binding —
/// `Data` gives the buffer's contents (for a written binding: the contents the kernel
/// leaves where it writes nothing), `Zeroed` zeros (e.g. a `ReadWrite` accumulator).
/// The kernel sees the buffer padded with zeros to whole 4-byte words (SPIR-V's
/// storage buffers are arrays of words; CPU code gets the same padded bytes), and a
/// written buffer comes back at the length given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BufferArg {
    /// The buffer's contents.
    Data(Arc<[u8]>),
    /// A buffer of this many bytes, zero-filled before the dispatch.
    Zeroed(u64),
}

impl BufferArg {
    /// A buffer holding `elements` (any `Pod` type, e.g. `f32` or a `#[repr(C)]` struct
    /// deriving `bytemuck::Pod`), as little-endian bytes as the GPU reads them.
    ///
    /// ```
    /// use photofinish::backend::BufferArg;
    ///
    /// let x = BufferArg::from_slice(&[1.0f32, 2.0, 3.0]);
    /// assert_eq!(x.len(), 12);
    /// assert_eq!(BufferArg::zeroed::<f32>(3), BufferArg::Zeroed(12));
    /// ```
    pub fn from_slice<T: bytemuck::Pod>(elements: &[T]) -> Self {
        BufferArg::Data(Arc::from(bytemuck::cast_slice::<T, u8>(elements)))
    }

    /// A zero-filled buffer of `count` elements of `T`.
    pub fn zeroed<T: bytemuck::Pod>(count: usize) -> Self {
        BufferArg::Zeroed((count as u64).saturating_mul(std::mem::size_of::<T>() as u64))
    }

    /// Size of the buffer in bytes.
    pub fn len(&self) -> u64 {
        match self {
            BufferArg::Data(d) => d.len() as u64,
            BufferArg::Zeroed(n) => *n,
        }
    }
    /// True for a zero-byte buffer.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The buffer rule of [`BufferArg`], the same on every backend: one buffer per
/// binding (`BindingMismatch` otherwise), each non-empty (`BufferSizeMismatch`) and at
/// most `max_range` bytes once padded to whole words (`DispatchTooLarge`).
pub(crate) fn check_buffers(
    kernel: &str,
    bindings: &[BindingDesc],
    buffers: &[BufferArg],
    max_range: u64,
) -> Result<(), BackendError> {
    if buffers.len() != bindings.len() {
        return Err(BackendError::BindingMismatch {
            kernel: kernel.to_owned(),
            reason: format!(
                "the job passes {} buffers, the kernel has {} bindings",
                buffers.len(),
                bindings.len()
            ),
        });
    }
    for (arg, binding) in buffers.iter().zip(bindings) {
        if arg.is_empty() {
            return Err(BackendError::BufferSizeMismatch {
                kernel: kernel.to_owned(),
                slot: binding.slot,
                got: 0,
                expected: "at least 1 byte (a storage buffer cannot be empty)".into(),
            });
        }
        if padded_len(arg.len()) > max_range {
            return Err(BackendError::DispatchTooLarge {
                kernel: kernel.to_owned(),
                reason: format!(
                    "buffer for binding {} is {} bytes, above maxStorageBufferRange {max_range}",
                    binding.slot,
                    arg.len()
                ),
            });
        }
    }
    Ok(())
}

/// `len` rounded up to whole 4-byte words: the size a kernel sees.
pub(crate) fn padded_len(len: u64) -> u64 {
    len.div_ceil(4).saturating_mul(4)
}

/// One dispatch: a kernel on a queue with its buffers.
#[derive(Debug, Clone)]
pub struct DispatchJob {
    /// Where to run it; must be a queue of the kernel's device.
    pub queue: QueueId,
    /// What to run.
    pub kernel: KernelHandle,
    /// One entry per binding of the kernel, in binding order.
    pub buffers: Vec<BufferArg>,
    /// Push constant bytes (exactly the kernel's `push_constant_bytes`).
    pub push_constants: Vec<u8>,
    /// Number of workgroups in x, y, z. A zero dimension is an empty dispatch: the
    /// outputs come back as they went in and `kernel_ns` is 0.
    pub workgroups: [u32; 3],
}

/// What a dispatch gave back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatchOutput {
    /// The final contents of every written binding, in binding order.
    pub outputs: Vec<Vec<u8>>,
    /// Kernel time: from GPU timestamp queries on Vulkan (masked to the family's valid
    /// bits, scaled by the timestamp period), measured around the CPU code on the CPU
    /// backend. `None` where the queue has no timestamps.
    pub kernel_ns: Option<u64>,
    /// What the backend did with the dispatch's recorded command buffer (D4, command
    /// reuse): `Some(true)` it replayed a recording of an earlier dispatch or kept this
    /// one's for the shape's next run (record-and-replay), `Some(false)` it launched
    /// plainly and took the recording apart after its one run, `None` where the backend
    /// records no command buffers (the CPU backend) or ran nothing.
    pub recording_reused: Option<bool>,
    /// What the backend did with this job's staged uploads (D3, copy overlap) in a call
    /// of several jobs on one queue: `Some(true)` its copies into the device buffers
    /// ran beside the kernels of the call's earlier jobs (see
    /// [`Backend::dispatch_overlapped`]), `Some(false)` they waited for those kernels,
    /// `None` where there was nothing to overlap: the call's first job, a job whose
    /// buffers the host writes in place (no copies), or a backend that stages nothing
    /// (the CPU backend).
    pub upload_overlapped: Option<bool>,
}

/// Why a backend could not do what was asked. Each variant says what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// No usable device.
    #[error("no usable device: {0}; install a Vulkan driver (e.g. Debian `mesa-vulkan-drivers libvulkan1`) or use the CPU backend")]
    NoDevice(String),
    /// The device ran out of memory.
    #[error("out of device memory on device {device} allocating {bytes} bytes; submit smaller batches or fewer at once")]
    OutOfDeviceMemory {
        /// The device.
        device: usize,
        /// The allocation that failed.
        bytes: u64,
    },
    /// The device was lost; its queues cannot be used again.
    #[error("device {device} was lost ({detail}); its workers stop, other devices go on — restart the engine to use it again")]
    DeviceLost {
        /// The device.
        device: usize,
        /// What the driver said.
        detail: String,
    },
    /// The SPIR-V does not load.
    #[error("kernel `{kernel}`: SPIR-V does not load: {reason}; check that it is valid SPIR-V 1.0–1.5 with a compute entry point")]
    InvalidSpirv {
        /// The variant's name.
        kernel: String,
        /// What was wrong.
        reason: String,
    },
    /// The variant's declared bindings or push constants do not match its shader, or the
    /// dispatch's buffers do not match its bindings.
    #[error("kernel `{kernel}`: bindings do not match: {reason}; declare the bindings the shader uses, in set 0")]
    BindingMismatch {
        /// The variant's name.
        kernel: String,
        /// What was wrong.
        reason: String,
    },
    /// The variant declares another workgroup size than its shader's `LocalSize`.
    #[error("kernel `{kernel}`: the variant declares workgroup size {declared:?} but the shader's is {shader:?}; declare the shader's workgroup size")]
    WorkgroupMismatch {
        /// The variant's name.
        kernel: String,
        /// The workgroup size the variant declares.
        declared: [u32; 3],
        /// The shader's `LocalSize`.
        shader: [u32; 3],
    },
    /// A buffer has the wrong size.
    #[error("kernel `{kernel}`: buffer for binding {slot} is {got} bytes, expected {expected}; pass buffers of the size the kernel needs")]
    BufferSizeMismatch {
        /// The variant's name.
        kernel: String,
        /// The binding.
        slot: u32,
        /// What was passed.
        got: u64,
        /// What was expected.
        expected: String,
    },
    /// The dispatch is beyond the device's limits.
    #[error("kernel `{kernel}`: dispatch beyond device limits: {reason}; split the batch")]
    DispatchTooLarge {
        /// The variant's name.
        kernel: String,
        /// Which limit.
        reason: String,
    },
    /// This backend cannot run the variant (e.g. no CPU code, or no SPIR-V).
    #[error("kernel `{kernel}` cannot run on the {backend} backend: {reason}; give the variant code for this backend (SPIR-V for Vulkan, CPU code for the CPU backend) or choose another backend")]
    Unsupported {
        /// The variant's name.
        kernel: String,
        /// The backend.
        backend: BackendKind,
        /// Why.
        reason: String,
    },
    /// A handle or queue that this backend did not hand out.
    #[error("unknown {what}; use handles and queues from this backend")]
    Unknown {
        /// What was unknown.
        what: String,
    },
    /// The kernel itself failed on the CPU backend (its CPU code refused the input).
    #[error("kernel `{kernel}` failed: {reason}; fix the kernel's CPU code (check it against the workload's reference), then resubmit")]
    KernelFailed {
        /// The variant's name.
        kernel: String,
        /// Why.
        reason: String,
    },
    /// The kernel did not finish within the dispatch timeout: the device is still
    /// running it (no Vulkan call stops a running dispatch), so its queue is unusable.
    #[error("kernel `{kernel}` did not finish within {after:?} (the dispatch timeout); the device is still running it and is given up on — fix the kernel (a loop that never ends?) and restart the engine, or raise `EngineBuilder::dispatch_timeout` if it is just slow")]
    TimedOut {
        /// The variant's name.
        kernel: String,
        /// The timeout it exceeded.
        after: std::time::Duration,
    },
    /// Any other driver error.
    #[error("Vulkan error: {0}")]
    Vulkan(String),
}

/// What the engine drives. Implementations are shared by all worker threads (`&self`
/// everywhere) and must be safe to call from several at once, including submitting to
/// different queues concurrently.
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// Which implementation this is.
    fn kind(&self) -> BackendKind;

    /// The devices this backend opened.
    fn devices(&self) -> &[DeviceInfo];

    /// The queues this backend opened, every compute-capable one, in a stable order.
    fn queues(&self) -> &[QueueId];

    /// Loads (compiles, validates) a kernel variant on a device. Loading the same
    /// variant twice may return the same handle.
    fn load_kernel(
        &self,
        device: usize,
        variant: &KernelVariant,
    ) -> Result<KernelHandle, BackendError>;

    /// Loads `variant` on `device` with its SPIR-V specialisation constants set:
    /// `constants` are (constant id, value) pairs, each value a 32-bit word read as the
    /// constant's declared type (a `uint`, an `int`'s bits, a `float`'s bits, a `bool`
    /// as non-zero). Each distinct set of values is its own pipeline and its own
    /// handle. With no constants it is [`load_kernel`](Backend::load_kernel); the
    /// default refuses any constant as `Unsupported`. The Vulkan backend compiles a
    /// pipeline per set of values; the CPU backend loads the variant's CPU code, which
    /// does not see them (a specialisation may change how fast a kernel is, never its
    /// answer).
    fn load_kernel_specialised(
        &self,
        device: usize,
        variant: &KernelVariant,
        constants: &[(u32, u32)],
    ) -> Result<KernelHandle, BackendError> {
        if constants.is_empty() {
            return self.load_kernel(device, variant);
        }
        Err(BackendError::Unsupported {
            kernel: variant.name.clone(),
            backend: self.kind(),
            reason: "this backend does not take specialisation constants".into(),
        })
    }

    /// Runs the jobs, each on its own queue, all submitted before any is waited for, so
    /// jobs on different queues run at the same time where the device allows it.
    /// Returns one result per job, in order.
    fn dispatch(&self, jobs: &[DispatchJob]) -> Vec<Result<DispatchOutput, BackendError>>;

    /// [`dispatch`](Backend::dispatch) for a caller that does not need the kernel
    /// times: a backend whose timing has a cost of its own may skip it and answer
    /// `kernel_ns: None`. The Vulkan backend records no timestamp queries then (on an
    /// H200 two timestamps and their read-back cost 5.3 µs of a tiny kernel's 27 µs
    /// round trip); the default times as `dispatch` does.
    fn dispatch_untimed(&self, jobs: &[DispatchJob]) -> Vec<Result<DispatchOutput, BackendError>> {
        self.dispatch(jobs)
    }

    /// [`dispatch`](Backend::dispatch) (`timed`) or
    /// [`dispatch_untimed`](Backend::dispatch_untimed) of jobs on one queue, in order,
    /// where D3 (copy overlap) said each job's uploads may run beside the kernels of the
    /// jobs before it: none of those kernels binds a buffer a later job's uploads write.
    /// A backend that uploads through copies may then start a job's copies while the
    /// earlier jobs' kernels run (the Vulkan backend records the call as one command
    /// buffer: each job's copies right after the previous job's kernel, every read-back
    /// at the end); [`DispatchOutput::upload_overlapped`] says what it did. The answers
    /// are those of `dispatch`. The default dispatches as `dispatch` does.
    fn dispatch_overlapped(
        &self,
        jobs: &[DispatchJob],
        timed: bool,
    ) -> Vec<Result<DispatchOutput, BackendError>> {
        if timed {
            self.dispatch(jobs)
        } else {
            self.dispatch_untimed(jobs)
        }
    }

    /// The longest a dispatch may wait for its kernel (`None`: for ever), set by the
    /// engine at build from `EngineBuilder::dispatch_timeout`. A backend that waits on
    /// the device (the Vulkan backend's fence waits) gives up after it and answers the
    /// job `BackendError::TimedOut`; one that runs kernel code on the calling thread
    /// cannot stop it, and the engine's watchdog abandons that thread instead. The
    /// default ignores it.
    fn set_dispatch_timeout(&self, timeout: Option<std::time::Duration>) {
        let _ = timeout;
    }
}
