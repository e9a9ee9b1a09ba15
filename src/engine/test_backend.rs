//! `TestBackend`: a fake backend FOR FAULT INJECTION and for exercising the actor
//! machinery without a device. Not a product backend; hidden from the docs.
//!
//! It runs each variant's CPU code (the same contract the CPU backend follows), reports
//! a fixed kernel time per variant when told to (so verdicts are deterministic), and
//! injects faults on a variant's dispatches: a panic, a backend error, a corrupted
//! output, or the loss of the device. The tiny workloads its tests race are in
//! `test_workloads.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use crate::backend::{
    Backend, BackendError, BackendKind, BufferArg, DeviceInfo, DeviceLimits, DispatchJob,
    DispatchOutput, KernelHandle, KernelVariant, QueueFamilyInfo, QueueId,
};

use super::test_workloads::ByteSumWorkload;

/// A fault to inject into a variant's dispatches.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InjectedFault {
    /// The dispatch panics (as a driver binding might).
    Panic,
    /// The dispatch returns this error.
    Error(BackendError),
    /// The dispatch succeeds but its first output byte is flipped (a wrong answer).
    CorruptOutput,
    /// The device is lost: this and every later dispatch on it fails with `DeviceLost`.
    DeviceLost,
}

/// One `load_kernel` call the [`TestBackend`] served.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadRecord {
    /// The device.
    pub device: usize,
    /// The variant's name.
    pub variant: String,
    /// The calling thread's name.
    pub thread: Option<String>,
    /// True when it was called from a rayon pool thread.
    pub on_rayon: bool,
    /// The specialisation constants it was loaded with, (id, value) pairs.
    pub constants: Vec<(u32, u32)>,
}

#[derive(Debug)]
struct Rule {
    variant: String,
    fault: InjectedFault,
    remaining: u64,
}

/// A fake backend for fault injection. Never a real device.
#[doc(hidden)]
#[derive(Debug)]
pub struct TestBackend {
    devices: Vec<DeviceInfo>,
    queues: Vec<QueueId>,
    kernels: Mutex<Vec<KernelVariant>>,
    /// Reported kernel time per variant: `(fixed ns, picoseconds per byte of the
    /// job's buffers)`.
    timings: Mutex<HashMap<String, (u64, u64)>>,
    rules: Mutex<Vec<Rule>>,
    lost: Vec<AtomicBool>,
    runs: Mutex<HashMap<String, u64>>,
    loads: Mutex<Vec<LoadRecord>>,
    /// How long each load takes (a compile's cost), ns.
    load_ns: AtomicU64,
    dispatch_calls: AtomicU64,
    untimed_calls: AtomicU64,
    /// The most jobs one `dispatch` call carried.
    largest_call: AtomicU64,
    /// Percent off the reported time of every second job run (see
    /// [`TestBackend::set_second_job_discount`]), and the jobs run so far.
    second_job_discount: AtomicU64,
    jobs_run: AtomicU64,
    paused: Mutex<bool>,
    resumed: Condvar,
}

impl TestBackend {
    /// `devices` devices, each with `families` queue families of `queues_per_family`
    /// queues (so two families give the race a partner of another family).
    pub fn new(devices: usize, families: u32, queues_per_family: u32) -> Self {
        let mut infos = Vec::new();
        let mut queues = Vec::new();
        for device in 0..devices {
            let queue_families = (0..families)
                .map(|index| QueueFamilyInfo {
                    index,
                    queue_count: queues_per_family,
                    opened: queues_per_family,
                    compute: true,
                    graphics: index == 0,
                    transfer: true,
                    timestamp_valid_bits: 64,
                })
                .collect();
            for family in 0..families {
                for index in 0..queues_per_family {
                    queues.push(QueueId {
                        device,
                        family,
                        index,
                    });
                }
            }
            infos.push(DeviceInfo {
                index: device,
                name: format!("test device {device} (fault injection)"),
                device_type: "virtual".into(),
                adapter_id: format!("test:{device}"),
                device_uuid: [device as u8; 16],
                driver_version: "test 1".into(),
                timestamp_period_ns: 1.0,
                queue_families,
                bindless: crate::policy::BindlessSupport::Unsupported,
                limits: DeviceLimits {
                    max_workgroup_count: [65535; 3],
                    max_workgroup_size: [1024, 1024, 64],
                    max_workgroup_invocations: 1024,
                    max_storage_buffer_range: u64::from(u32::MAX),
                    max_push_constants_size: 128,
                    subgroup_size: Some(32),
                },
            });
        }
        TestBackend {
            lost: (0..devices).map(|_| AtomicBool::new(false)).collect(),
            devices: infos,
            queues,
            kernels: Mutex::new(Vec::new()),
            timings: Mutex::new(HashMap::new()),
            rules: Mutex::new(Vec::new()),
            runs: Mutex::new(HashMap::new()),
            loads: Mutex::new(Vec::new()),
            load_ns: AtomicU64::new(0),
            dispatch_calls: AtomicU64::new(0),
            untimed_calls: AtomicU64::new(0),
            largest_call: AtomicU64::new(0),
            second_job_discount: AtomicU64::new(0),
            jobs_run: AtomicU64::new(0),
            paused: Mutex::new(false),
            resumed: Condvar::new(),
        }
    }

    /// Reports `ns` as the kernel time of every dispatch of the variant named `variant`
    /// (instead of the measured time).
    pub fn set_kernel_ns(&self, variant: &str, ns: u64) {
        lock(&self.timings).insert(variant.to_string(), (ns, 0));
    }

    /// Reports `fixed_ns` plus `ps_per_byte` picoseconds per byte of the job's buffers
    /// as the kernel time of every dispatch of the variant named `variant`: a variant
    /// whose cost grows with the batch at its own rate, so that winners can differ by
    /// batch size (tuning keys).
    pub fn set_kernel_cost(&self, variant: &str, fixed_ns: u64, ps_per_byte: u64) {
        lock(&self.timings).insert(variant.to_string(), (fixed_ns, ps_per_byte));
    }

    /// Takes `percent` off the reported kernel time of every second job the backend
    /// runs (the 2nd, 4th…): the warm caches a race's second arm finds when the arms run
    /// back to back on one queue, which favour whichever arm always goes second.
    pub fn set_second_job_discount(&self, percent: u64) {
        self.second_job_discount
            .store(percent.min(100), Ordering::Relaxed);
    }

    /// [`set_kernel_ns`](Self::set_kernel_ns) for both variants of [`ByteSumWorkload`]:
    /// the conservative and the speculative one's reported kernel times.
    pub fn set_byte_sum_ns(&self, conservative: u64, speculative: u64) {
        self.set_kernel_ns(ByteSumWorkload::CONSERVATIVE, conservative);
        self.set_kernel_ns(ByteSumWorkload::SPECULATIVE, speculative);
    }

    /// Makes every later `load_kernel` take `ns` (sleeping), as a pipeline compile
    /// does: what a batch that loads on its critical path waits for.
    pub fn set_load_ns(&self, ns: u64) {
        self.load_ns.store(ns, Ordering::Relaxed);
    }

    /// Injects `fault` into the next `times` dispatches of the variant named `variant`.
    pub fn inject(&self, variant: &str, fault: InjectedFault, times: u64) {
        lock(&self.rules).push(Rule {
            variant: variant.to_string(),
            fault,
            remaining: times,
        });
    }

    /// How many times the variant named `variant` ran (faulted runs included).
    pub fn runs(&self, variant: &str) -> u64 {
        lock(&self.runs).get(variant).copied().unwrap_or(0)
    }

    /// Holds every `dispatch` call at its start until [`TestBackend::resume`].
    pub fn pause(&self) {
        *lock(&self.paused) = true;
    }

    /// Lets held and later `dispatch` calls run.
    pub fn resume(&self) {
        *lock(&self.paused) = false;
        self.resumed.notify_all();
    }

    /// Every `load_kernel` call so far, in order: device, variant, calling thread.
    pub fn loads(&self) -> Vec<LoadRecord> {
        lock(&self.loads).clone()
    }

    /// How many `dispatch` calls were made.
    pub fn dispatch_calls(&self) -> u64 {
        self.dispatch_calls.load(Ordering::Relaxed)
    }

    /// The most jobs one `dispatch` call has carried so far (a group's size).
    pub fn largest_call(&self) -> u64 {
        self.largest_call.load(Ordering::Relaxed)
    }

    /// Of those, the calls made through `dispatch_untimed` (which answer
    /// `kernel_ns: None`, as the Vulkan backend does).
    pub fn untimed_calls(&self) -> u64 {
        self.untimed_calls.load(Ordering::Relaxed)
    }

    fn take_fault(&self, variant: &str) -> Option<InjectedFault> {
        let mut rules = lock(&self.rules);
        let rule = rules
            .iter_mut()
            .find(|r| r.variant == variant && r.remaining > 0)?;
        rule.remaining -= 1;
        Some(rule.fault.clone())
    }

    fn run_job(&self, job: &DispatchJob) -> Result<DispatchOutput, BackendError> {
        let device = job.queue.device;
        if !self.queues.contains(&job.queue) || job.kernel.device != device {
            return Err(BackendError::Unknown {
                what: format!("queue {} or kernel {:?}", job.queue, job.kernel),
            });
        }
        if self.lost[device].load(Ordering::Acquire) {
            return Err(lost(device));
        }
        let variant = usize::try_from(job.kernel.id)
            .ok()
            .and_then(|i| lock(&self.kernels).get(i).cloned())
            .ok_or_else(|| BackendError::Unknown {
                what: format!("kernel handle {}", job.kernel.id),
            })?;
        *lock(&self.runs).entry(variant.name.clone()).or_insert(0) += 1;
        let fault = self.take_fault(&variant.name);
        match &fault {
            Some(InjectedFault::Panic) => panic!("injected fault: `{}` panicked", variant.name),
            Some(InjectedFault::Error(e)) => return Err(e.clone()),
            Some(InjectedFault::DeviceLost) => {
                self.lost[device].store(true, Ordering::Release);
                return Err(lost(device));
            }
            Some(InjectedFault::CorruptOutput) | None => {}
        }
        let cpu = variant
            .cpu
            .as_ref()
            .ok_or_else(|| BackendError::Unsupported {
                kernel: variant.name.clone(),
                backend: BackendKind::Test,
                reason: "the variant has no CPU code".into(),
            })?;
        if job.buffers.len() != variant.bindings.len() {
            return Err(BackendError::BindingMismatch {
                kernel: variant.name.clone(),
                reason: format!(
                    "{} buffers for {} bindings",
                    job.buffers.len(),
                    variant.bindings.len()
                ),
            });
        }
        let mut buffers: Vec<Vec<u8>> = job
            .buffers
            .iter()
            .map(|b| match b {
                BufferArg::Data(d) => d.to_vec(),
                BufferArg::Zeroed(n) => vec![0; usize::try_from(*n).unwrap_or(0)],
            })
            .collect();
        let start = Instant::now();
        if !job.workgroups.contains(&0) {
            cpu(&mut buffers, &job.push_constants, job.workgroups).map_err(|reason| {
                BackendError::KernelFailed {
                    kernel: variant.name.clone(),
                    reason,
                }
            })?;
        }
        let measured = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let mut outputs: Vec<Vec<u8>> = variant
            .bindings
            .iter()
            .zip(buffers)
            .filter(|(b, _)| b.access.writes())
            .map(|(_, buf)| buf)
            .collect();
        if fault == Some(InjectedFault::CorruptOutput) {
            match outputs.first_mut().and_then(|o| o.first_mut()) {
                Some(byte) => *byte ^= 0xff,
                None => outputs.push(vec![0xff]),
            }
        }
        let bytes: u64 = job.buffers.iter().map(|b| b.len()).sum();
        let mut kernel_ns = lock(&self.timings)
            .get(&variant.name)
            .map_or(measured, |&(fixed, ps)| {
                fixed.saturating_add(bytes.saturating_mul(ps) / 1000)
            });
        if self.jobs_run.fetch_add(1, Ordering::Relaxed) % 2 == 1 {
            let discount = self.second_job_discount.load(Ordering::Relaxed);
            kernel_ns -= kernel_ns / 100 * discount;
        }
        Ok(DispatchOutput {
            outputs,
            kernel_ns: Some(kernel_ns),
            recording_reused: None,
            upload_overlapped: None,
        })
    }
}

fn lost(device: usize) -> BackendError {
    BackendError::DeviceLost {
        device,
        detail: "injected fault: device lost".into(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Backend for TestBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Test
    }

    fn devices(&self) -> &[DeviceInfo] {
        &self.devices
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
        if device >= self.devices.len() {
            return Err(BackendError::Unknown {
                what: format!("device {device}"),
            });
        }
        if variant.cpu.is_none() {
            return Err(BackendError::Unsupported {
                kernel: variant.name.clone(),
                backend: BackendKind::Test,
                reason: "the variant has no CPU code".into(),
            });
        }
        lock(&self.loads).push(LoadRecord {
            device,
            variant: variant.name.clone(),
            thread: std::thread::current().name().map(str::to_string),
            on_rayon: rayon::current_thread_index().is_some(),
            constants: constants.to_vec(),
        });
        let ns = self.load_ns.load(Ordering::Relaxed);
        if ns > 0 {
            std::thread::sleep(std::time::Duration::from_nanos(ns));
        }
        let mut kernels = lock(&self.kernels);
        kernels.push(variant.clone());
        Ok(KernelHandle {
            device,
            id: (kernels.len() - 1) as u64,
        })
    }

    fn dispatch(&self, jobs: &[DispatchJob]) -> Vec<Result<DispatchOutput, BackendError>> {
        self.dispatch_calls.fetch_add(1, Ordering::Relaxed);
        self.largest_call
            .fetch_max(jobs.len() as u64, Ordering::Relaxed);
        let mut paused = lock(&self.paused);
        while *paused {
            paused = self.resumed.wait(paused).unwrap_or_else(|p| p.into_inner());
        }
        drop(paused);
        jobs.iter().map(|job| self.run_job(job)).collect()
    }

    fn dispatch_untimed(&self, jobs: &[DispatchJob]) -> Vec<Result<DispatchOutput, BackendError>> {
        self.untimed_calls.fetch_add(1, Ordering::Relaxed);
        self.dispatch(jobs)
            .into_iter()
            .map(|r| {
                r.map(|out| DispatchOutput {
                    kernel_ns: None,
                    ..out
                })
            })
            .collect()
    }
}
