//! Submitting batches: [`Engine::submit`], [`Engine::try_submit`] and
//! [`Engine::submit_many`] check a batch against its kernel, pick the live device with
//! the shortest mailbox, make the job and its ticket, and pass the gate into the
//! mailbox (one window of several jobs for `submit_many`). Nothing here runs a batch.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crossbeam_channel::TrySendError;

use super::batch::{Batch, Payload};
use super::error::{EngineError, TrySubmitError};
use super::handle::Engine;
use super::job::{Job, Msg};
use super::kept_windows;
use super::registry::{Kernel, KernelSource};
use super::retired_plans;
use super::sample::KernelId;
use super::ticket::{self, Ticket};

/// How many tickets ahead of the one being waited for a `submit_many` ticket prefetches
/// (`Ticket::wait_ahead`): far enough that the lines arrive while the caller takes the
/// answers in between, near enough that their workers have mostly written them.
const PREFETCH_AHEAD: usize = 2;

impl Engine {
    /// Submits a batch, blocking while the device's queue is full. The ticket gets
    /// exactly one answer; by the time it is in, the engine has dropped its reference
    /// to the batch's payload, so an input the caller still holds (an `Arc<[u8]>`) is
    /// its alone again (one exception: a race whose speculative arm is still running
    /// when the caller is answered, past the 100 ms grace, lets go of the input when
    /// that arm ends):
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use photofinish::{kernels, BackendChoice, Batch, Engine};
    /// let engine = Engine::builder()
    ///     .backend(BackendChoice::Cpu)
    ///     .without_autotune_file()
    ///     .build()?;
    /// let kernel = engine.register(kernels::by_name("reduce").expect("built in"))?;
    /// let mut input: Arc<[u8]> = vec![1, 2, 3].into();
    /// engine.submit(Batch::new(kernel, Arc::clone(&input)))?.wait()?;
    /// // Reuse the buffer in place for the next batch.
    /// Arc::get_mut(&mut input).expect("the engine let go of it")[0] = 7;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn submit(&self, batch: Batch) -> Result<Ticket, EngineError> {
        let (job, ticket, device) = self.accept(batch)?;
        let Some(_pass) = self.core.gate.enter() else {
            return Err(EngineError::ShutDown);
        };
        match self.core.devices[device].mailbox.send(Msg::Run(job)) {
            Ok(()) => Ok(ticket),
            // The receivers live in `Core` as long as any sender; this cannot happen,
            // but if it did the job's responder answered the ticket on drop.
            Err(_) => Err(EngineError::ShutDown),
        }
    }

    /// Submits a batch without blocking: `Full` (with the batch back) when the
    /// device's queue has no room.
    #[allow(
        clippy::result_large_err,
        reason = "a refused batch goes back by value, as crossbeam's `TrySendError` gives \
                  back its message; boxing it would allocate for every refusal of a full queue"
    )]
    pub fn try_submit(&self, batch: Batch) -> Result<Ticket, TrySubmitError> {
        // Checked before the batch is taken apart, so that a refusal hands it back
        // whole (a batch is not cloned for that: a plan's clone is a copy).
        let accepted = if self.core.gate.is_closed() {
            Err(EngineError::ShutDown)
        } else {
            self.check(&batch)
                .and_then(|kernel| Ok((kernel, self.pick_device()?)))
        };
        let (kernel, device) = match accepted {
            Ok(accepted) => accepted,
            Err(EngineError::ShutDown) => return Err(TrySubmitError::ShutDown(batch)),
            Err(e) => return Err(TrySubmitError::Rejected(batch, e)),
        };
        let (job, ticket) = self.job(kernel, batch.payload, batch.app);
        let Some(_pass) = self.core.gate.enter() else {
            return Err(TrySubmitError::ShutDown(job.into_batch()));
        };
        match self.core.devices[device].mailbox.try_send(Msg::Run(job)) {
            Ok(()) => Ok(ticket),
            Err(TrySendError::Full(msg)) | Err(TrySendError::Disconnected(msg)) => match msg {
                Msg::Run(job) => Err(TrySubmitError::Full(job.into_batch())),
                _ => unreachable!("a refused send hands back the message it was given"),
            },
        }
    }

    /// Submits several batches in one call and returns their tickets in order.
    ///
    /// It does what a `submit` per batch does, for less: the batches go to one device
    /// (the one a `submit` would pick) in a single hand-off — a few copies of one
    /// message that the device's workers claim the batches from a few at a time, and one
    /// wake-up — so they still run on all the device's queues at once. Use it where a
    /// caller has batches ready together (a frame's dispatches, a window of a stream).
    ///
    /// All or nothing: every batch is checked first, and if one is refused (an unknown
    /// kernel, the wrong payload) the call returns that error and submits none; after
    /// shutdown it returns [`EngineError::ShutDown`]. No batch gives an empty list.
    ///
    /// Backpressure: the call blocks while the device's queue is full, as `submit`
    /// does, but a call's batches take only as many places in that queue as the copies
    /// of its message (at most one per worker of the device), however many batches it
    /// carries: the caller bounds how many batches it has in flight by how many it puts
    /// in a call.
    ///
    /// ```
    /// # use photofinish::kernels::{self, Workload};
    /// # use photofinish::{BackendChoice, Batch, Engine, Output};
    /// let engine = Engine::builder()
    ///     .backend(BackendChoice::Cpu)
    ///     .without_autotune_file()
    ///     .build()?;
    /// let reduce = kernels::by_name("reduce").expect("built in");
    /// let kernel = engine.register(reduce.clone())?;
    /// let inputs: Vec<Vec<u8>> = (1..=8u8).map(|n| vec![n; 16]).collect();
    /// let batches = inputs.iter().map(|input| Batch::new(kernel, input.clone()));
    /// let tickets = engine.submit_many(batches)?;
    /// for (input, ticket) in inputs.iter().zip(tickets) {
    ///     let expected = reduce.reference(input);
    ///     assert_eq!(ticket.wait()?.output, Output::Answer(expected));
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn submit_many(
        &self,
        batches: impl IntoIterator<Item = Batch>,
    ) -> Result<Vec<Ticket>, EngineError> {
        if self.core.gate.is_closed() {
            return Err(EngineError::ShutDown);
        }
        let batches = batches.into_iter();
        let mut jobs = kept_windows::jobs();
        jobs.reserve(batches.size_hint().0);
        let mut tickets: Vec<Ticket> = Vec::with_capacity(batches.size_hint().0);
        // The kernel of the previous batch: a window is mostly of one kernel, whose
        // registry entry is then read once.
        let mut last: Option<Arc<Kernel>> = None;
        for batch in batches {
            let kernel = match last.take() {
                Some(kernel) if kernel.id == batch.kernel => Ok(kernel),
                _ => self.lookup(batch.kernel),
            };
            match kernel.and_then(|kernel| fits(kernel, &batch.payload, self.core.max_workgroups_x))
            {
                Ok(kernel) => {
                    last = Some(Arc::clone(&kernel));
                    let (job, ticket) = self.job(kernel, batch.payload, batch.app);
                    // The ticket `PREFETCH_AHEAD` earlier prefetches this one's slot
                    // when it is waited for.
                    let earlier = tickets.len().checked_sub(PREFETCH_AHEAD);
                    if let Some(earlier) = earlier.and_then(|i| tickets.get_mut(i)) {
                        earlier.wait_ahead(&ticket);
                    }
                    jobs.push(job);
                    tickets.push(ticket);
                }
                Err(e) => {
                    disarm_all(jobs);
                    return Err(e);
                }
            }
        }
        if jobs.is_empty() {
            kept_windows::keep_jobs(jobs);
            return Ok(tickets);
        }
        let device = match self.pick_device() {
            Ok(device) => device,
            Err(e) => {
                disarm_all(jobs);
                return Err(e);
            }
        };
        let Some(_pass) = self.core.gate.enter() else {
            disarm_all(jobs);
            return Err(EngineError::ShutDown);
        };
        let target = &self.core.devices[device];
        let sent = if jobs.len() == 1 {
            let sent = target.mailbox.send_all(jobs.pop().map(Msg::Run));
            kept_windows::keep_jobs(jobs);
            sent
        } else {
            // One copy per worker that could take a share of the batches.
            let copies = jobs.len().min(target.queues.len()).max(1);
            let window = kept_windows::window(&mut jobs, copies);
            let sent = target
                .mailbox
                .send_all((0..copies).map(|_| Msg::Window(Arc::clone(&window))));
            kept_windows::keep(window, jobs);
            sent
        };
        match sent {
            Ok(()) => Ok(tickets),
            // As in `submit`: cannot happen (the mailbox holds its receiver), and the
            // jobs' responders would answer their tickets on drop.
            Err(_) => Err(EngineError::ShutDown),
        }
    }

    /// Validates a batch and picks its device.
    fn accept(&self, batch: Batch) -> Result<(Job, Ticket, usize), EngineError> {
        if self.core.gate.is_closed() {
            return Err(EngineError::ShutDown);
        }
        let kernel = self.check(&batch)?;
        let device = self.pick_device()?;
        let (job, ticket) = self.job(kernel, batch.payload, batch.app);
        Ok((job, ticket, device))
    }

    /// The batch's kernel, if it is registered and the batch carries what it takes.
    fn check(&self, batch: &Batch) -> Result<Arc<Kernel>, EngineError> {
        fits(
            self.lookup(batch.kernel)?,
            &batch.payload,
            self.core.max_workgroups_x,
        )
    }

    /// The registered kernel `id`.
    fn lookup(&self, id: KernelId) -> Result<Arc<Kernel>, EngineError> {
        self.core
            .registry
            .get(id)
            .ok_or(EngineError::UnknownKernel(id.get()))
    }

    /// An accepted batch's job and the caller's ticket for its answer. Every
    /// submission path makes its jobs here, so this is where the thread frees one plan
    /// it retired (`retired_plans`), just after the caller allocated this batch.
    fn job(&self, kernel: Arc<Kernel>, payload: Payload, app: Option<u64>) -> (Job, Ticket) {
        retired_plans::free_one();
        let (responder, ticket) = ticket::one_shot(self.core.config.busy_wait);
        let job = Job {
            kernel,
            payload,
            app,
            responder,
        };
        (job, ticket)
    }

    /// The live device with the shortest mailbox (round robin among equals).
    fn pick_device(&self) -> Result<usize, EngineError> {
        let n = self.core.devices.len();
        if n == 1 {
            // One device: no mailbox lengths to compare (reading them costs a cache
            // line the workers write) and no round robin to advance.
            return if self.core.is_lost(0) {
                Err(EngineError::DeviceLost { device: 0 })
            } else {
                Ok(0)
            };
        }
        let start = self.core.next_device.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| (start + i) % n)
            .filter(|&d| !self.core.is_lost(d))
            .min_by_key(|&d| self.core.devices[d].mailbox.len())
            .ok_or(EngineError::DeviceLost {
                device: start % n.max(1),
            })
    }
}

/// `kernel`, if `payload` is what it takes; a batch by items only if every variant can
/// dispatch its items within `max_x` workgroups (every device's
/// `maxComputeWorkGroupCount[0]`, `Core::max_workgroups_x`).
fn fits(kernel: Arc<Kernel>, payload: &Payload, max_x: u32) -> Result<Arc<Kernel>, EngineError> {
    match (&kernel.source, payload) {
        (KernelSource::Workload(_), Payload::Input(_)) | (KernelSource::Pair, Payload::Plan(_)) => {
            Ok(kernel)
        }
        (KernelSource::Pair, Payload::Items(_, items)) => {
            for variant in &kernel.variants {
                if let Err(source) = variant.workgroups_for_items(*items, max_x) {
                    return Err(EngineError::Plan {
                        kernel: kernel.name.clone(),
                        source,
                    });
                }
            }
            Ok(kernel)
        }
        (KernelSource::Workload(_), Payload::Plan(_) | Payload::Items(..)) => {
            Err(EngineError::WrongPayload {
                kernel: kernel.name.clone(),
                expected: "input bytes",
                fix: "`Batch::new(kernel, input)`",
            })
        }
        (KernelSource::Pair, Payload::Input(_)) => Err(EngineError::WrongPayload {
            kernel: kernel.name.clone(),
            expected: "a dispatch plan (buffers, push constants, workgroups or items)",
            fix: "`Batch::with_plan(kernel, plan)` or `Batch::for_items(kernel, plan, items)`",
        }),
    }
}

/// Withdraws the jobs of a call that submits none of them: their tickets are dropped
/// unanswered, never waited on.
fn disarm_all(mut jobs: Vec<Job>) {
    for job in jobs.drain(..) {
        job.responder.disarm();
    }
    kept_windows::keep_jobs(jobs);
}

#[cfg(all(test, not(photofinish_loom)))]
pub(super) mod tests {
    use super::*;
    use crate::backend::{BindingAccess, BufferArg, KernelVariant};
    use crate::engine::batch::Output;
    use crate::engine::test_backend::TestBackend;
    use crate::kernels::DispatchPlan;
    use std::time::{Duration, Instant};

    /// Runs `test` on a thread of its own (what is kept is kept per thread: spare
    /// slots, windows, retired plans; and the harness may run several tests on one
    /// thread) and fails if it panicked.
    pub(crate) fn on_a_thread_of_its_own(test: impl FnOnce() + Send + 'static) {
        std::thread::spawn(test)
            .join()
            .expect("the test thread panicked");
    }

    /// An engine on the test backend (two queues) with a pair that adds one to its
    /// read buffer's bytes into its written one.
    fn engine_with_pair() -> (Engine, KernelId) {
        let engine = Engine::builder()
            .backend_instance(Arc::new(TestBackend::new(1, 2, 1)))
            .without_autotune_file()
            .build()
            .expect("the test backend engine builds");
        let add_one = |name: &str| {
            KernelVariant::cpu(
                name,
                &[BindingAccess::Read, BindingAccess::Write],
                0,
                |buffers, _, _| {
                    let out: Vec<u8> = buffers[0].iter().map(|b| b.wrapping_add(1)).collect();
                    buffers[1].copy_from_slice(&out);
                    Ok(())
                },
            )
        };
        let kernel = engine
            .register_pair(
                "add-one",
                add_one("add/conservative"),
                add_one("add/speculative"),
            )
            .expect("the pair registers");
        (engine, kernel)
    }

    fn batch(kernel: KernelId, data: &Arc<[u8]>) -> Batch {
        Batch::with_plan(
            kernel,
            DispatchPlan {
                buffers: vec![
                    BufferArg::Data(Arc::clone(data)),
                    BufferArg::Zeroed(data.len() as u64),
                ],
                push_constants: Vec::new(),
                workgroups: [1, 1, 1],
            },
        )
    }

    fn wait_all(tickets: Vec<Ticket>, data: &[u8]) {
        let expected: Vec<u8> = data.iter().map(|b| b.wrapping_add(1)).collect();
        for ticket in tickets {
            let answer = ticket.wait().expect("the batch is answered");
            assert_eq!(
                answer.output,
                Output::Buffers(vec![expected.clone()].into())
            );
        }
    }

    /// Waits (10 s at most) until every worker let go of this thread's kept windows:
    /// a worker drops its copy when it finds the window drained, just after it
    /// answered its last batch.
    fn until_workers_let_go() {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !kept_windows::all_free() {
            assert!(
                Instant::now() < deadline,
                "a worker still holds a drained window"
            );
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_threads_next_window_of_as_many_batches_reuses_its_kept_one() {
        on_a_thread_of_its_own(|| {
            let (engine, kernel) = engine_with_pair();
            let data: Arc<[u8]> = vec![1, 2, 3].into();
            let window = || {
                let tickets = engine
                    .submit_many((0..8).map(|_| batch(kernel, &data)))
                    .expect("the window is accepted");
                wait_all(tickets, &data);
                until_workers_let_go();
            };
            window();
            let first = kept_windows::kept();
            assert_eq!(first.len(), 1, "the sent window was not kept");
            window();
            assert_eq!(
                kept_windows::kept(),
                first,
                "the kept window was not reused"
            );
            // Another size: a new window, kept beside the first.
            let tickets = engine
                .submit_many((0..5).map(|_| batch(kernel, &data)))
                .expect("the window is accepted");
            wait_all(tickets, &data);
            let kept = kept_windows::kept();
            assert_eq!(kept.len(), 2);
            assert_eq!(kept[0], first[0]);
            // At most MAX are kept: the oldest make room.
            for n in 2..(2 + kept_windows::MAX) {
                until_workers_let_go();
                let tickets = engine
                    .submit_many((0..n).map(|_| batch(kernel, &data)))
                    .expect("the window is accepted");
                wait_all(tickets, &data);
            }
            assert_eq!(kept_windows::kept().len(), kept_windows::MAX);
            engine.shutdown();
        });
    }

    #[test]
    fn taken_plans_let_go_of_their_data_and_are_freed_at_the_next_batches() {
        on_a_thread_of_its_own(|| {
            let (engine, kernel) = engine_with_pair();
            let mut data: Arc<[u8]> = vec![7; 16].into();
            let tickets = engine
                .submit_many((0..8).map(|_| batch(kernel, &data)))
                .expect("the window is accepted");
            wait_all(tickets, &data);
            // The engine holds no reference to the plans' data once the answers are
            // taken, though their blocks wait to be freed.
            assert!(
                Arc::get_mut(&mut data).is_some(),
                "the engine still holds the data"
            );
            assert_eq!(retired_plans::waiting(), 8);
            let ticket = engine.submit(batch(kernel, &data)).expect("accepted");
            assert_eq!(retired_plans::waiting(), 7, "a submit frees one");
            wait_all(vec![ticket], &data);
            assert_eq!(retired_plans::waiting(), 8);
            let tickets = engine
                .submit_many((0..3).map(|_| batch(kernel, &data)))
                .expect("the window is accepted");
            assert_eq!(retired_plans::waiting(), 5, "a window frees one a batch");
            wait_all(tickets, &data);
            // Never more than MAX wait.
            let tickets = engine
                .submit_many((0..retired_plans::MAX + 10).map(|_| batch(kernel, &data)))
                .expect("the window is accepted");
            wait_all(tickets, &data);
            assert_eq!(retired_plans::waiting(), retired_plans::MAX);
            assert!(
                Arc::get_mut(&mut data).is_some(),
                "the engine still holds the data"
            );
            engine.shutdown();
        });
    }
}
