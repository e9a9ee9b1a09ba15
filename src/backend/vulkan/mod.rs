//! The Vulkan backend: real compute through vulkano 0.35 on every device and every
//! compute-capable queue the driver offers.
//!
//! It owns the Vulkan instance, one logical device per physical device (with all queues
//! of each compute family, up to [`VulkanOptions::max_queues_per_family`]), the loaded
//! pipelines, and what is reused between dispatches (recorded command buffers, buffers
//! pooled by size class, timestamp query pools; see `reuse.rs` for the design note).
//! It never decides which variant to run or where — the engine does — and it never
//! panics on anything a caller or a device can cause: every failure is a typed
//! [`BackendError`]. A device the driver reports lost is remembered, and later calls
//! on it fail fast with `DeviceLost`.
//!
//! Submodules: `open` (loader, instance, devices, [`DeviceInfo`]), `validate`
//! (SPIRV-Tools' validator on every module, before vulkano or a driver sees it),
//! `kernel` (load-time validation and pipelines), `dispatch` (job validation,
//! submit/wait), `record` (slots' buffers and command buffers), `overlap` (a group
//! recorded with overlapped uploads, D3), `reuse` (slots and pools), `errors` (vulkano →
//! [`BackendError`]).

mod dispatch;
mod errors;
mod kernel;
mod measure;
mod open;
mod overlap;
mod record;
mod reuse;
mod validate;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use vulkano::instance::Instance;

use self::dispatch::Started;
use self::kernel::{LoadedKernel, VariantKey};
pub use self::measure::CopyBandwidth;
use self::open::Gpu;
pub use self::reuse::ReuseStats;
pub use self::validate::spirv_words_from_bytes;
use crate::backend::{
    Backend, BackendError, BackendKind, DeviceInfo, DispatchJob, DispatchOutput, KernelHandle,
    KernelVariant, QueueId,
};
use crate::sync::{AtomicU64, Ordering};

/// How the Vulkan backend opens devices and how much it keeps for reuse.
///
/// `VulkanOptions::default()` is the built-in defaults with what the environment sets
/// (`PHOTOFINISH_MAX_QUEUES_PER_FAMILY`, `PHOTOFINISH_HOST_MAX_BYTES`; the table in
/// `src/config.rs`). A field the application sets (`VulkanOptions { host_max_bytes: 0,
/// ..Default::default() }`) wins over the environment, and options handed to
/// [`VulkanBackend::with_options`] are used as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VulkanOptions {
    /// The most queues opened per queue family (an H200's family 0 has 16; each opened
    /// queue gets its own worker). At least 1. Default
    /// [`DEFAULT_MAX_QUEUES_PER_FAMILY`], or `PHOTOFINISH_MAX_QUEUES_PER_FAMILY` where
    /// set (see the type's docs).
    pub max_queues_per_family: u32,
    /// Also open software devices (lavapipe) when a hardware device is present. Where
    /// no hardware device exists, software devices are always opened.
    pub software_devices_with_hardware: bool,
    /// The most idle recorded command buffers kept per device for repeat shapes.
    pub max_cached_commands: usize,
    /// Bytes of idle buffers (in recorded command buffers and in the size-class pool)
    /// kept per device.
    pub reuse_budget_bytes: u64,
    /// Copy through host-visible staging buffers even where device-local memory is
    /// host visible (lavapipe, integrated GPUs) — the path discrete GPUs take for all
    /// but small dispatches.
    pub always_stage: bool,
    /// On a discrete GPU: a dispatch whose buffers total at most this many bytes binds
    /// host-cached system memory directly (the kernel reads and writes it over PCIe),
    /// written and read in place by the host — no staging copies on the GPU and cached
    /// host reads. 0: off. Default [`DEFAULT_HOST_MAX_BYTES`], or
    /// `PHOTOFINISH_HOST_MAX_BYTES` where set (see the type's docs).
    pub host_max_bytes: u64,
    /// Enable `robustBufferAccess` (SPEC §11: a user's kernel that indexes past a
    /// buffer reads zeros and loses its stray writes). Default on; off only to measure
    /// what it costs.
    pub robust_buffer_access: bool,
    /// D3 (copy overlap) acted on: a call of several jobs on one queue whose uploads
    /// D3 let overlap ([`Backend::dispatch_overlapped`]) is recorded as one command
    /// buffer in which each job's staged upload copies run while the previous job's
    /// kernel runs. Off: every job is submitted on its own, its uploads after the
    /// kernels before it (the order of [`Backend::dispatch`]). Default on; off only to
    /// measure what it gains (the `upload_overlap` bench). Jobs whose buffers the host
    /// writes in place have no copies to overlap either way.
    pub overlap_uploads: bool,
}

/// Default of [`VulkanOptions::max_queues_per_family`]: 1, so a device gets one worker
/// per compute-capable queue family (two on an H200: families 0 and 2, which is what a
/// race's two arms need to overlap). Queues of one family do not run concurrently on
/// NVIDIA (two small kernels on two family-0 queues of an H200 ran one after the
/// other), and every extra one cost: with 8 per family (16 workers) an H200 ran 20 000
/// 64 KiB batches at 10 841 batches/s against 24 838/s with 1, and one producer with
/// 32 batches in flight got 83.6 µs per batch against 24.1 µs
/// (docs/journal/2026-11-21-h200-03-one-queue-per-family.md). Raise it where a device's
/// queues of one family do run side by side.
pub const DEFAULT_MAX_QUEUES_PER_FAMILY: u32 = 1;

/// Default of [`VulkanOptions::host_max_bytes`]: 64 KiB. On an H200 a tiny kernel's
/// batch (4 KiB) took 28.4 µs through the backend with its buffers in host memory
/// against 36.6 µs staged, and 33.0 µs against 39.2 µs through the engine; 10 000
/// 16 KiB batches of the regret trace took 305 ms against 353 ms
/// (docs/journal/2026-11-21-h200-04-host-memory.md). A kernel that hammers global
/// atomics on such a buffer pays PCIe
/// round trips for them: set 0 where that matters more than the copies.
pub const DEFAULT_HOST_MAX_BYTES: u64 = 64 << 10;

impl Default for VulkanOptions {
    fn default() -> Self {
        VulkanOptions::with_env(&crate::config::Env::read())
    }
}

impl VulkanOptions {
    /// The built-in defaults, with what `env` sets in place of theirs.
    fn with_env(env: &crate::config::Env) -> Self {
        VulkanOptions {
            max_queues_per_family: env
                .max_queues_per_family
                .unwrap_or(DEFAULT_MAX_QUEUES_PER_FAMILY),
            software_devices_with_hardware: true,
            max_cached_commands: 256,
            reuse_budget_bytes: 512 << 20,
            always_stage: false,
            host_max_bytes: env.host_max_bytes.unwrap_or(DEFAULT_HOST_MAX_BYTES),
            robust_buffer_access: true,
            overlap_uploads: true,
        }
    }
}

/// The Vulkan backend. Shared by all workers (`&self` everywhere).
pub struct VulkanBackend {
    gpus: Vec<Gpu>,
    infos: Vec<DeviceInfo>,
    queues: Vec<QueueId>,
    kernels: RwLock<HashMap<u64, Arc<LoadedKernel>>>,
    loaded: Mutex<HashMap<VariantKey, KernelHandle>>,
    next_kernel: AtomicU64,
    /// [`VulkanOptions::overlap_uploads`].
    overlap_uploads: bool,
    /// How long a fence wait lasts before the job is answered `TimedOut`, in
    /// nanoseconds (0: for ever); see `Backend::set_dispatch_timeout`.
    timeout_ns: AtomicU64,
    // Declared last: dropped after every device.
    _instance: Arc<Instance>,
}

impl std::fmt::Debug for VulkanBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VulkanBackend")
            .field("devices", &self.gpus)
            .field("queues", &self.queues.len())
            .finish()
    }
}

impl VulkanBackend {
    /// Opens every Vulkan device with default options. No loader or no device →
    /// [`BackendError::NoDevice`] (which says what to install).
    pub fn new() -> Result<Self, BackendError> {
        Self::with_options(VulkanOptions::default())
    }

    /// Opens every Vulkan device with `options`.
    pub fn with_options(options: VulkanOptions) -> Result<Self, BackendError> {
        let opened = open::open(&options)?;
        Ok(VulkanBackend {
            overlap_uploads: options.overlap_uploads,
            infos: opened.gpus.iter().map(|g| g.info.clone()).collect(),
            gpus: opened.gpus,
            queues: opened.queues,
            kernels: RwLock::new(HashMap::new()),
            loaded: Mutex::new(HashMap::new()),
            next_kernel: AtomicU64::new(1),
            timeout_ns: AtomicU64::new(0),
            _instance: opened.instance,
        })
    }

    /// What reuse saved on `device` so far (`None`: no such device).
    pub fn reuse_stats(&self, device: usize) -> Option<ReuseStats> {
        let gpu = self.gpus.get(device)?;
        gpu.reuse.lock().ok().map(|r| r.stats)
    }

    fn gpu(&self, device: usize) -> Result<&Gpu, BackendError> {
        let gpu = self.gpus.get(device).ok_or_else(|| BackendError::Unknown {
            what: format!("device {device} (this backend has {})", self.gpus.len()),
        })?;
        gpu.check_alive()?;
        Ok(gpu)
    }

    fn kernel(&self, handle: KernelHandle) -> Result<Arc<LoadedKernel>, BackendError> {
        let kernels = self
            .kernels
            .read()
            .map_err(|_| BackendError::Vulkan("the kernel table was poisoned".into()))?;
        kernels
            .get(&handle.id)
            .filter(|k| k.handle == handle)
            .cloned()
            .ok_or_else(|| BackendError::Unknown {
                what: format!("kernel handle {handle:?}"),
            })
    }

    /// Phase one of a job: look up its kernel and device, then start it (between two
    /// timestamps when `timed` and the queue has them).
    fn start(
        &self,
        job: &DispatchJob,
        timed: bool,
        repeats: u32,
    ) -> Result<Started<'_>, BackendError> {
        let mut started = self.prepare(job, timed, repeats)?;
        if let Started::Running(running) = &mut started {
            dispatch::submit(running)?;
        }
        Ok(started)
    }

    /// [`start`](Self::start) up to the submission.
    fn prepare(
        &self,
        job: &DispatchJob,
        timed: bool,
        repeats: u32,
    ) -> Result<Started<'_>, BackendError> {
        let kernel = self.kernel(job.kernel)?;
        if job.queue.device != kernel.handle.device {
            return Err(BackendError::Unknown {
                what: format!(
                    "queue {} for kernel `{}`, which is loaded on device {} (run a kernel on \
                     a queue of the device it was loaded on)",
                    job.queue, kernel.name, kernel.handle.device
                ),
            });
        }
        let gpu = self.gpu(kernel.handle.device)?;
        dispatch::prepare(gpu, kernel, job, timed, repeats)
    }

    /// The fence-wait timeout (`None`: for ever).
    fn timeout(&self) -> Option<std::time::Duration> {
        match self.timeout_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(std::time::Duration::from_nanos(ns)),
        }
    }

    /// Both phases of every job: all are started before any is waited for, so jobs on
    /// different queues run at the same time. `overlap`: D3 let each job's uploads run
    /// beside the earlier jobs' kernels (see [`Backend::dispatch_overlapped`]); acted on
    /// when [`VulkanOptions::overlap_uploads`] is on, the jobs share one queue and a job
    /// after the first stages its uploads.
    fn run(
        &self,
        jobs: &[DispatchJob],
        timed: bool,
        overlap: bool,
    ) -> Vec<Result<DispatchOutput, BackendError>> {
        let one_queue = jobs.len() >= 2 && jobs.iter().all(|j| j.queue == jobs[0].queue);
        let mut started: Vec<_> = if overlap && self.overlap_uploads && one_queue {
            let mut prepared: Vec<_> = jobs.iter().map(|job| self.prepare(job, timed, 1)).collect();
            self.submit_overlapped(&mut prepared);
            prepared
        } else {
            jobs.iter().map(|job| self.start(job, timed, 1)).collect()
        };
        if one_queue {
            self.note_serialised(&mut started);
        }
        started
            .into_iter()
            .map(|s| match s? {
                Started::Done(output) => Ok(output),
                Started::Running(job) => dispatch::finish(*job, self.timeout()),
            })
            .collect()
    }

    /// Submits the prepared jobs of one queue as one group with overlapped uploads
    /// (`overlap.rs`) when a job after the first stages its uploads, else (or where the
    /// group could not be recorded) each on its own. A job that fails to submit is
    /// answered with the error.
    fn submit_overlapped(&self, prepared: &mut [Result<Started<'_>, BackendError>]) {
        let mut running: Vec<&mut dispatch::InFlight<'_>> = prepared
            .iter_mut()
            .filter_map(|p| match p {
                Ok(Started::Running(job)) => Some(&mut **job),
                _ => None,
            })
            .collect();
        let staged_later = running.iter().skip(1).any(|j| j.staged());
        if let (true, Some(gpu)) = (staged_later, running.first().map(|j| j.gpu())) {
            match overlap::submit_group(gpu, &mut running) {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "recording a group with overlapped uploads failed; submitting its jobs one by one");
                }
            }
        }
        drop(running);
        for p in prepared.iter_mut() {
            if let Ok(Started::Running(job)) = p {
                if let Err(e) = dispatch::submit(job) {
                    *p = Err(e);
                }
            }
        }
    }

    /// Marks the jobs after the first of a call on one queue that were submitted on
    /// their own with staged uploads: those uploads waited for the earlier kernels.
    fn note_serialised(&self, started: &mut [Result<Started<'_>, BackendError>]) {
        let mut serialised = 0;
        let mut gpu = None;
        for s in started.iter_mut().skip(1) {
            if let Ok(Started::Running(job)) = s {
                if job.group.is_none() && job.staged() {
                    job.upload_overlapped = Some(false);
                    serialised += 1;
                    gpu = Some(job.gpu());
                }
            }
        }
        if let Some(mut r) = gpu.and_then(|g| g.reuse.lock().ok()) {
            r.stats.uploads_serialised += serialised;
        }
    }
}

impl Backend for VulkanBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Vulkan
    }

    fn devices(&self) -> &[DeviceInfo] {
        &self.infos
    }

    fn queues(&self) -> &[QueueId] {
        &self.queues
    }

    fn load_kernel(
        &self,
        device: usize,
        variant: &KernelVariant,
    ) -> Result<KernelHandle, BackendError> {
        self.load_kernel_specialised(device, variant, &[])
    }

    fn load_kernel_specialised(
        &self,
        device: usize,
        variant: &KernelVariant,
        constants: &[(u32, u32)],
    ) -> Result<KernelHandle, BackendError> {
        let gpu = self.gpu(device)?;
        let Some(spirv) = &variant.spirv else {
            return Err(BackendError::Unsupported {
                kernel: variant.name.clone(),
                backend: BackendKind::Vulkan,
                reason: "the variant has no SPIR-V".into(),
            });
        };
        let key = VariantKey::new(device, variant, spirv, constants);
        let poisoned = || BackendError::Vulkan("the kernel table was poisoned".into());
        if let Some(handle) = self.loaded.lock().map_err(|_| poisoned())?.get(&key) {
            return Ok(*handle);
        }
        let handle = KernelHandle {
            device,
            id: self.next_kernel.fetch_add(1, Ordering::Relaxed),
        };
        let loaded = kernel::load(gpu, variant, (spirv, constants), handle)?;
        // Two threads may have loaded the same variant at once: the first to get here
        // wins and the other's pipeline is dropped.
        let mut table = self.loaded.lock().map_err(|_| poisoned())?;
        if let Some(existing) = table.get(&key) {
            return Ok(*existing);
        }
        self.kernels
            .write()
            .map_err(|_| poisoned())?
            .insert(handle.id, Arc::new(loaded));
        table.insert(key, handle);
        Ok(handle)
    }

    fn dispatch(&self, jobs: &[DispatchJob]) -> Vec<Result<DispatchOutput, BackendError>> {
        self.run(jobs, true, false)
    }

    fn dispatch_untimed(&self, jobs: &[DispatchJob]) -> Vec<Result<DispatchOutput, BackendError>> {
        self.run(jobs, false, false)
    }

    fn dispatch_overlapped(
        &self,
        jobs: &[DispatchJob],
        timed: bool,
    ) -> Vec<Result<DispatchOutput, BackendError>> {
        self.run(jobs, timed, true)
    }

    fn set_dispatch_timeout(&self, timeout: Option<std::time::Duration>) {
        let ns = timeout.map_or(0, |t| {
            u64::try_from(t.as_nanos()).unwrap_or(u64::MAX).max(1)
        });
        self.timeout_ns.store(ns, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BindingAccess, BindingDesc, BufferArg};

    const WRITE_ONE: &str = r#"
@group(0) @binding(0) var<storage, read_write> out: array<u32>;
@compute @workgroup_size(1)
fn main() { out[0] = 1u; }
"#;

    fn write_one() -> KernelVariant {
        let module = naga::front::wgsl::parse_str(WRITE_ONE).expect("parses");
        let info = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::empty(),
        )
        .validate(&module)
        .expect("validates");
        let words =
            naga::back::spv::write_vec(&module, &info, &Default::default(), None).expect("SPIR-V");
        KernelVariant {
            name: "write-one".into(),
            spirv: Some(words.into()),
            entry_point: "main".into(),
            workgroup_size: [1, 1, 1],
            bindings: vec![BindingDesc::new(0, BindingAccess::Write)],
            push_constant_bytes: 0,
            items_per_invocation: 1,
            cpu: None,
        }
    }

    #[test]
    fn a_lost_device_fails_fast() {
        let backend = match VulkanBackend::new() {
            Ok(b) => b,
            Err(e) if std::env::var("PHOTOFINISH_ALLOW_NO_VULKAN").as_deref() == Ok("1") => {
                eprintln!("SKIPPED: no Vulkan device ({e})");
                return;
            }
            Err(e) => panic!("no Vulkan device: {e}; set PHOTOFINISH_ALLOW_NO_VULKAN=1 to skip"),
        };
        let queue = backend.queues()[0];
        let kernel = backend.load_kernel(0, &write_one()).expect("loads");
        let job = DispatchJob {
            queue,
            kernel,
            buffers: vec![BufferArg::Zeroed(4)],
            push_constants: vec![],
            workgroups: [1, 1, 1],
        };
        let out = backend.dispatch(std::slice::from_ref(&job)).remove(0);
        assert_eq!(
            out.expect("runs").outputs,
            vec![1u32.to_le_bytes().to_vec()]
        );

        // What the error mapping does when the driver reports the loss.
        let reported =
            backend.gpus[0].note(errors::vulkan_error(0, 0, vulkano::VulkanError::DeviceLost));
        assert!(matches!(reported, BackendError::DeviceLost { .. }));

        let lost = |r: Result<_, BackendError>| match r {
            Err(BackendError::DeviceLost { device: 0, .. }) => {}
            Err(e) => panic!("expected DeviceLost, got {e}"),
            Ok(_) => panic!("expected DeviceLost, got success"),
        };
        lost(backend.dispatch(&[job]).remove(0).map(|_| ()));
        lost(backend.load_kernel(0, &write_one()).map(|_| ()));
        lost(backend.measure_copy_bandwidth(queue, 1024).map(|_| ()));
    }
}
