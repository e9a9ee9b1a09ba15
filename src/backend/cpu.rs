//! The CPU backend: runs each kernel variant's CPU code on the calling thread and a
//! rayon pool.
//!
//! It is the fallback when no Vulkan device exists and the reference the GPU paths are
//! checked against. It exposes one device with one queue family of as many queues as
//! the pool has threads (at least two, so two arms of a race really run at the same
//! time: the first queue's jobs of a dispatch on the calling thread, the others' on the
//! pool; a dispatch on one queue runs entirely on the calling thread, with no hand-off),
//! validates every dispatch the way a Vulkan driver would (bindings, buffer kinds and
//! sizes, push constants, workgroup limits) and times the kernel code with the host
//! clock. It owns its loaded kernels and nothing else; it never decides what to run.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;

use super::{
    check_buffers, padded_len, Backend, BackendError, BackendKind, BufferArg, DeviceInfo,
    DeviceLimits, DispatchJob, DispatchOutput, KernelHandle, KernelVariant, QueueFamilyInfo,
    QueueId,
};

/// The workgroup-count limit the CPU backend enforces, like Vulkan's guaranteed minimum,
/// so a plan that runs here also runs on a GPU.
const MAX_WORKGROUP_COUNT: u32 = 65_535;

/// The CPU backend (see the module docs).
#[derive(Debug)]
pub struct CpuBackend {
    pool: rayon::ThreadPool,
    devices: Vec<DeviceInfo>,
    queues: Vec<QueueId>,
    // Read on every dispatch by every worker, written only when a kernel is loaded: an
    // `ArcSwap` read takes no lock and bumps no shared count (an `RwLock` read and an
    // `Arc` clone each bounced a cache line between the workers on every dispatch).
    // Not the loom shim: loading kernels is not one of the protocols the loom models
    // explore.
    kernels: ArcSwap<Vec<Arc<KernelVariant>>>,
    /// Held while a kernel is added to `kernels`.
    loading: Mutex<()>,
}

impl CpuBackend {
    /// A CPU backend with one queue per available hardware thread (at least two).
    pub fn new() -> Result<Self, BackendError> {
        let threads = std::thread::available_parallelism().map_or(2, usize::from);
        Self::with_threads(threads)
    }

    /// A CPU backend whose pool has `threads` threads (raised to at least two), each
    /// one queue.
    pub fn with_threads(threads: usize) -> Result<Self, BackendError> {
        let threads = threads.clamp(2, u32::MAX as usize);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("photofinish-cpu-{i}"))
            .build()
            .map_err(|e| {
                BackendError::NoDevice(format!("cannot start the CPU backend's threads: {e}"))
            })?;
        let queue_count = threads as u32;
        let device = DeviceInfo {
            index: 0,
            name: format!("cpu (rayon, {threads} threads)"),
            device_type: "cpu".to_owned(),
            adapter_id: format!("cpu:{}:{threads}", std::env::consts::ARCH),
            device_uuid: [0; 16],
            driver_version: format!("photofinish-cpu {}", env!("CARGO_PKG_VERSION")),
            timestamp_period_ns: 1.0,
            queue_families: vec![QueueFamilyInfo {
                index: 0,
                queue_count,
                opened: queue_count,
                compute: true,
                graphics: false,
                transfer: true,
                timestamp_valid_bits: 64,
            }],
            bindless: crate::policy::BindlessSupport::Unsupported,
            limits: DeviceLimits {
                max_workgroup_count: [MAX_WORKGROUP_COUNT; 3],
                max_workgroup_size: [1024, 1024, 64],
                max_workgroup_invocations: 1024,
                max_storage_buffer_range: u64::from(u32::MAX),
                max_push_constants_size: 128,
                subgroup_size: None,
            },
        };
        let queues = (0..queue_count)
            .map(|index| QueueId {
                device: 0,
                family: 0,
                index,
            })
            .collect();
        Ok(CpuBackend {
            pool,
            devices: vec![device],
            queues,
            kernels: ArcSwap::from_pointee(Vec::new()),
            loading: Mutex::new(()),
        })
    }

    /// The loaded kernel of `handle` in `kernels` (a snapshot of the table).
    fn kernel(
        kernels: &[Arc<KernelVariant>],
        handle: KernelHandle,
    ) -> Result<&KernelVariant, BackendError> {
        let unknown = || BackendError::Unknown {
            what: format!("kernel handle {handle:?}"),
        };
        if handle.device != 0 {
            return Err(unknown());
        }
        usize::try_from(handle.id)
            .ok()
            .and_then(|i| kernels.get(i))
            .map(Arc::as_ref)
            .ok_or_else(unknown)
    }

    /// Checks a job against its kernel and the device, and gives the buffers the kernel
    /// code works on.
    fn prepare<'k>(
        &self,
        kernels: &'k [Arc<KernelVariant>],
        job: &DispatchJob,
    ) -> Result<(&'k KernelVariant, Vec<Vec<u8>>), BackendError> {
        if !self.queues.contains(&job.queue) {
            return Err(BackendError::Unknown {
                what: format!("queue {}", job.queue),
            });
        }
        let kernel = Self::kernel(kernels, job.kernel)?;
        let mismatch = |reason: String| BackendError::BindingMismatch {
            kernel: kernel.name.clone(),
            reason,
        };
        check_buffers(
            &kernel.name,
            &kernel.bindings,
            &job.buffers,
            self.devices[0].limits.max_storage_buffer_range,
        )?;
        if job.push_constants.len() != kernel.push_constant_bytes as usize {
            return Err(mismatch(format!(
                "{} bytes of push constants, the kernel declares {}",
                job.push_constants.len(),
                kernel.push_constant_bytes
            )));
        }
        if let Some(dim) = job.workgroups.iter().position(|&n| n > MAX_WORKGROUP_COUNT) {
            return Err(BackendError::DispatchTooLarge {
                kernel: kernel.name.clone(),
                reason: format!(
                    "{} workgroups in dimension {dim}, the limit is {MAX_WORKGROUP_COUNT}",
                    job.workgroups[dim]
                ),
            });
        }
        // The bytes the code sees: each buffer padded with zeros to whole words, as a
        // GPU kernel sees it (`BufferArg`'s rule).
        let buffers = job
            .buffers
            .iter()
            .map(|arg| {
                let mut bytes = match arg {
                    BufferArg::Data(data) => data.to_vec(),
                    BufferArg::Zeroed(n) => vec![0; *n as usize],
                };
                bytes.resize(padded_len(arg.len()) as usize, 0);
                bytes
            })
            .collect();
        Ok((kernel, buffers))
    }

    /// Runs one job on the calling thread; `timed`: with its kernel time (`None`
    /// otherwise, and the clock is not read).
    fn run(&self, job: &DispatchJob, timed: bool) -> Result<DispatchOutput, BackendError> {
        let kernels = self.kernels.load();
        let (kernel, mut buffers) = self.prepare(&kernels, job)?;
        // The written buffers, in binding order, kept in the same vector, each at the
        // length the job gave.
        let written = |mut buffers: Vec<Vec<u8>>| -> Vec<Vec<u8>> {
            let mut bindings = kernel.bindings.iter();
            let mut args = job.buffers.iter();
            buffers.retain_mut(|buffer| {
                let len = args.next().map_or(0, BufferArg::len) as usize;
                let writes = bindings.next().is_some_and(|b| b.access.writes());
                buffer.truncate(len);
                writes
            });
            buffers
        };
        if job.workgroups.contains(&0) {
            return Ok(DispatchOutput {
                outputs: written(buffers),
                kernel_ns: timed.then_some(0),
                recording_reused: None,
                upload_overlapped: None,
            });
        }
        let code = kernel
            .cpu
            .as_ref()
            .ok_or_else(|| BackendError::Unsupported {
                kernel: kernel.name.clone(),
                backend: BackendKind::Cpu,
                reason: "the variant has no CPU code".to_owned(),
            })?;
        let started = timed.then(Instant::now);
        let result = catch_unwind(AssertUnwindSafe(|| {
            code(&mut buffers, &job.push_constants, job.workgroups)
        }));
        let kernel_ns = started.map(|t| u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
        let failed = |reason: String| BackendError::KernelFailed {
            kernel: kernel.name.clone(),
            reason,
        };
        match result {
            Ok(Ok(())) => {
                // Code that resized a buffer gave an answer of another shape than the
                // GPU variant's: refused, never passed on as it is.
                let resized = buffers
                    .iter()
                    .zip(&job.buffers)
                    .position(|(buffer, arg)| buffer.len() as u64 != padded_len(arg.len()));
                if let Some(at) = resized {
                    return Err(failed(format!(
                        "its CPU code resized the buffer of binding {} from {} to {} bytes \
                         (it must write in place, keeping every buffer's length)",
                        kernel.bindings[at].slot,
                        padded_len(job.buffers[at].len()),
                        buffers[at].len()
                    )));
                }
                Ok(DispatchOutput {
                    outputs: written(buffers),
                    kernel_ns,
                    recording_reused: None,
                    upload_overlapped: None,
                })
            }
            Ok(Err(reason)) => Err(failed(reason)),
            Err(_) => Err(failed("its CPU code panicked".to_owned())),
        }
    }

    /// Jobs on different queues run at the same time; jobs on one queue run one after
    /// another, in order, as a queue would. The first queue's jobs run on the calling
    /// thread (a single-queue call never leaves it: handing it to the pool and back
    /// cost 14–27 µs a dispatch), the other queues' jobs on the pool meanwhile. Kernel
    /// code that uses rayon itself (the reduce variants) runs its parallel parts on
    /// rayon's global pool when it runs on the calling thread.
    fn run_all(
        &self,
        jobs: &[DispatchJob],
        timed: bool,
    ) -> Vec<Result<DispatchOutput, BackendError>> {
        if jobs
            .iter()
            .all(|j| Some(j.queue) == jobs.first().map(|f| f.queue))
        {
            // One queue (the common case): its jobs in order, on the calling thread.
            return jobs.iter().map(|job| self.run(job, timed)).collect();
        }
        let mut by_queue: BTreeMap<QueueId, Vec<usize>> = BTreeMap::new();
        for (i, job) in jobs.iter().enumerate() {
            by_queue.entry(job.queue).or_default().push(i);
        }
        let mut results: Vec<Option<Result<DispatchOutput, BackendError>>> =
            jobs.iter().map(|_| None).collect();
        let run_queue =
            |indices: Vec<usize>| -> Vec<(usize, Result<DispatchOutput, BackendError>)> {
                indices
                    .into_iter()
                    .map(|i| (i, self.run(&jobs[i], timed)))
                    .collect()
            };
        // Two queues or more (the early return took one): the first queue's jobs on
        // the calling thread, the others' on pool threads, at the same time.
        let mut groups = by_queue.into_values();
        let first = groups.next().unwrap_or_default();
        let done = Mutex::new(Vec::new());
        let inline = self.pool.in_place_scope(|scope| {
            for indices in groups {
                let (done, run_queue) = (&done, &run_queue);
                scope.spawn(move |_| {
                    let ran = run_queue(indices);
                    done.lock().unwrap_or_else(|e| e.into_inner()).push(ran);
                });
            }
            run_queue(first)
        });
        let mut per_queue = done.into_inner().unwrap_or_else(|e| e.into_inner());
        per_queue.push(inline);
        for (i, result) in per_queue.into_iter().flatten() {
            results[i] = Some(result);
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(BackendError::Unknown {
                        what: "job lost by the CPU backend".to_owned(),
                    })
                })
            })
            .collect()
    }
}

impl Backend for CpuBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Cpu
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
        if device != 0 {
            return Err(BackendError::Unknown {
                what: format!("device {device} (the CPU backend has device 0 only)"),
            });
        }
        let Some(code) = &variant.cpu else {
            return Err(BackendError::Unsupported {
                kernel: variant.name.clone(),
                backend: BackendKind::Cpu,
                reason: "the variant has no CPU code".to_owned(),
            });
        };
        if let Err(reason) = super::descriptor_counts(&variant.bindings) {
            return Err(BackendError::BindingMismatch {
                kernel: variant.name.clone(),
                reason,
            });
        }
        // Loads one at a time, so two loads of one variant find the same entry.
        let _loading = self.loading.lock().unwrap_or_else(|e| e.into_inner());
        let kernels = self.kernels.load_full();
        // The same code under the same name and layout is the same kernel.
        let known = kernels.iter().position(|k| {
            k.name == variant.name
                && k.bindings == variant.bindings
                && k.push_constant_bytes == variant.push_constant_bytes
                && k.cpu.as_ref().is_some_and(|c| Arc::ptr_eq(c, code))
        });
        let id = known.unwrap_or_else(|| {
            let mut grown = Vec::clone(&kernels);
            grown.push(Arc::new(variant.clone()));
            self.kernels.store(Arc::new(grown));
            kernels.len()
        });
        Ok(KernelHandle {
            device: 0,
            id: id as u64,
        })
    }

    /// A variant's CPU code does not see specialisation constants (they may change how
    /// fast a kernel is, never its answer): each set of values loads the same code.
    fn load_kernel_specialised(
        &self,
        device: usize,
        variant: &KernelVariant,
        _constants: &[(u32, u32)],
    ) -> Result<KernelHandle, BackendError> {
        self.load_kernel(device, variant)
    }

    /// See `run_all`; kernels timed with the host clock.
    fn dispatch(&self, jobs: &[DispatchJob]) -> Vec<Result<DispatchOutput, BackendError>> {
        self.run_all(jobs, true)
    }

    /// As `dispatch`, without reading the clock: `kernel_ns` is `None`.
    fn dispatch_untimed(&self, jobs: &[DispatchJob]) -> Vec<Result<DispatchOutput, BackendError>> {
        self.run_all(jobs, false)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::thread::ThreadId;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::backend::{BindingAccess, BindingDesc};

    /// A one-binding variant running `code`.
    fn variant(
        name: &str,
        code: impl Fn(&mut [Vec<u8>], &[u8], [u32; 3]) -> Result<(), String> + Send + Sync + 'static,
    ) -> KernelVariant {
        KernelVariant {
            name: name.to_owned(),
            spirv: None,
            entry_point: "main".to_owned(),
            workgroup_size: [1, 1, 1],
            bindings: vec![BindingDesc::new(0, BindingAccess::Write)],
            push_constant_bytes: 0,
            items_per_invocation: 1,
            cpu: Some(Arc::new(code)),
        }
    }

    fn job(queue: QueueId, kernel: KernelHandle) -> DispatchJob {
        DispatchJob {
            queue,
            kernel,
            buffers: vec![BufferArg::Zeroed(4)],
            push_constants: Vec::new(),
            workgroups: [1, 1, 1],
        }
    }

    #[test]
    fn a_dispatch_on_one_queue_runs_on_the_calling_thread() {
        let backend = CpuBackend::with_threads(2).expect("CPU backend");
        let ran_on: Arc<Mutex<Vec<ThreadId>>> = Arc::default();
        let seen = Arc::clone(&ran_on);
        let kernel = backend
            .load_kernel(
                0,
                &variant("where", move |buffers, _, _| {
                    seen.lock().expect("lock").push(std::thread::current().id());
                    buffers[0][0] = 7;
                    Ok(())
                }),
            )
            .expect("load");
        let queue = backend.queues()[1];
        let results = backend.dispatch(&[job(queue, kernel), job(queue, kernel)]);
        for result in results {
            assert_eq!(result.expect("runs").outputs, vec![vec![7, 0, 0, 0]]);
        }
        let me = std::thread::current().id();
        assert_eq!(*ran_on.lock().expect("lock"), vec![me, me]);
    }

    #[test]
    fn an_untimed_dispatch_answers_the_same_without_kernel_time() {
        let backend = CpuBackend::with_threads(2).expect("CPU backend");
        let kernel = backend
            .load_kernel(
                0,
                &variant("seven", |buffers, _, _| {
                    buffers[0][0] = 7;
                    Ok(())
                }),
            )
            .expect("load");
        let jobs = [job(backend.queues()[0], kernel)];
        let timed = backend
            .dispatch(&jobs)
            .pop()
            .expect("one result")
            .expect("runs");
        let untimed = backend
            .dispatch_untimed(&jobs)
            .pop()
            .expect("one result")
            .expect("runs");
        assert_eq!(untimed.outputs, timed.outputs);
        assert_eq!(untimed.outputs, vec![vec![7, 0, 0, 0]]);
        assert!(timed.kernel_ns.is_some());
        assert_eq!(untimed.kernel_ns, None);
    }

    #[test]
    fn a_kernel_loaded_twice_keeps_one_handle_and_another_gets_its_own() {
        let backend = CpuBackend::with_threads(2).expect("CPU backend");
        let one = variant("one", |_, _, _| Ok(()));
        let first = backend.load_kernel(0, &one).expect("load");
        let again = backend.load_kernel(0, &one).expect("load again");
        let other = backend
            .load_kernel(0, &variant("other", |_, _, _| Ok(())))
            .expect("load other");
        assert_eq!(first, again);
        assert_ne!(first, other);
        let jobs = [
            job(backend.queues()[0], first),
            job(backend.queues()[0], other),
        ];
        assert!(backend.dispatch(&jobs).into_iter().all(|r| r.is_ok()));
    }

    #[test]
    fn jobs_on_two_queues_run_at_the_same_time() {
        let backend = CpuBackend::with_threads(2).expect("CPU backend");
        // Each job arrives, then waits (at most 10 s) until the other has arrived too:
        // run one after the other, the first would time out.
        let arrived = Arc::new(AtomicUsize::new(0));
        let ran_on: Arc<Mutex<Vec<ThreadId>>> = Arc::default();
        let (count, seen) = (Arc::clone(&arrived), Arc::clone(&ran_on));
        let kernel = backend
            .load_kernel(
                0,
                &variant("meet", move |buffers, _, _| {
                    seen.lock().expect("lock").push(std::thread::current().id());
                    count.fetch_add(1, Ordering::SeqCst);
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while count.load(Ordering::SeqCst) < 2 {
                        if Instant::now() > deadline {
                            return Err("the other queue's job never ran alongside".into());
                        }
                        std::thread::yield_now();
                    }
                    buffers[0][0] = 1;
                    Ok(())
                }),
            )
            .expect("load");
        let queues = backend.queues();
        let results = backend.dispatch(&[job(queues[0], kernel), job(queues[1], kernel)]);
        for result in results {
            assert_eq!(result.expect("runs").outputs, vec![vec![1, 0, 0, 0]]);
        }
        let threads = ran_on.lock().expect("lock").clone();
        assert_eq!(threads.len(), 2);
        assert_ne!(threads[0], threads[1]);
        assert!(threads.contains(&std::thread::current().id()));
    }
}
