//! The engine builder: its options, their defaults, and their resolution against the
//! environment (`crate::config`; a setting the application made always wins).
//! `EngineBuilder::build`, which opens the backend and starts the workers, is in
//! `start`. It decides nothing at run time.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::Backend;
use crate::speculator::{SpeculationMode, DEFAULT_THRESHOLD_PCT};

use super::handle::Engine;
#[cfg(doc)] // for doc links
use super::{error::EngineError, events::Event};

/// Default capacity of each device's mailbox (batches waiting for a worker).
pub const DEFAULT_CHANNEL_CAPACITY: usize = 1024;
/// Default capacity of each subscriber's event channel.
pub const DEFAULT_EVENT_CAPACITY: usize = 1024;
/// The least default of [`EngineBuilder::max_searching`]: 4, every worker of a device
/// with up to 4 queues. A device with more searches with half its workers by default
/// (`auto_max_searching`): on the GPU host's 16-queue CPU backend, 4 searching workers
/// measured best of 1, 2, 4 and 16 (docs/journal/2026-11-21-h200-07-doorbell.md), but
/// once the producer's own cost per batch had come down, 8 took `submit_many` windows
/// 10–20 % faster than 4 at every producer count, and 6 and 12 were within noise of 8
/// (docs/journal/2026-11-22-h200-17-ticket-slots.md).
pub const DEFAULT_MAX_SEARCHING: usize = 4;

/// Default of [`EngineBuilder::busy_wait`] where the machine has a hardware thread for
/// every worker and one more: 50 µs, about a small kernel's round trip, so a caller
/// waiting for one makes no system call. On an H200 host whose yields were slow, one
/// tiny batch at a time took 58–60 µs per batch with yields at once against 29 µs with
/// a 20 or 100 µs busy wait; where yields were quick the two were level
/// (docs/journal/2026-11-22-h200-10-busy-wait.md).
pub const DEFAULT_BUSY_WAIT: Duration = Duration::from_micros(50);

/// Default of [`EngineBuilder::max_group`]: 8. D1 then decides per kernel from its
/// measured launch overhead and kernel time, and groups only a decided, launch-bound
/// kernel's backlog beyond the idle workers (never a lone batch). On the 2-core build VM
/// (`PF_BENCH_BACKEND=cpu PF_BENCH_SECS=1 cargo bench --bench submit_overhead`, BENCHMARKS.md)
/// 32 tiny batches in flight took 0.83–0.98× the ungrouped time per batch on the CPU
/// backend; on lavapipe D1 found the kernel not launch-bound and grouped nothing. The
/// H200's "no better" figure predates D1's gating and is still to be re-measured.
pub const DEFAULT_MAX_GROUP: usize = 8;
/// Default audit period: one audit race in this many batches of an adopted kernel on
/// each queue (counted per queue, so that workers share no counter).
pub const DEFAULT_AUDIT_PERIOD: u64 = 64;

/// How much of an adopted variant's work is checked against the conservative variant
/// (SPEC §11; [`EngineBuilder::verify`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verify {
    /// Every batch of an adopted variant is raced against the conservative variant
    /// and answered with the conservative answer, the speculative one compared with
    /// it: for applications that cannot take one wrong answer. What it costs is in
    /// BENCHMARKS.md ("Verify::Always"): the speculative variant then saves no time,
    /// it is only kept honest.
    Always,
    /// One batch in `n` of an adopted variant on each queue is such an audit race
    /// (0: none); the others run the adopted variant alone. The default,
    /// `Audit(DEFAULT_AUDIT_PERIOD)`; the same as [`EngineBuilder::audit_period`].
    Audit(u64),
}

impl Default for Verify {
    fn default() -> Self {
        Verify::Audit(DEFAULT_AUDIT_PERIOD)
    }
}

/// Default of [`EngineBuilder::dispatch_timeout`]: 10 s. Generous on purpose: it is
/// five times the 2 s after which Windows resets a GPU that does not answer (TDR), so
/// any kernel a desktop driver lets run finishes well inside it, and a slow first
/// call (a pipeline built by the driver, a large batch on the CPU backend) is not
/// mistaken for a hang; yet a caller whose kernel never returns learns it in seconds,
/// not never.
pub const DEFAULT_DISPATCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The builder's settings that the environment can fill in, resolved for `build`
/// (`EngineBuilder::settings`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Settings {
    pub(super) max_group: usize,
    /// `None`: per device, `auto_max_searching`.
    pub(super) max_searching: Option<usize>,
    /// `None`: `auto_busy_wait`.
    pub(super) busy_wait: Option<Duration>,
    pub(super) fleet_url: Option<String>,
}

/// Which backend to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BackendChoice {
    /// Vulkan when a loader and a device exist, otherwise the CPU backend.
    #[default]
    Auto,
    /// Vulkan only (an error when there is no device).
    Vulkan,
    /// The CPU backend.
    Cpu,
}

/// Where the engine keeps its autotune files.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) enum Persistence {
    /// [`default_autotune_dir`] for a real (Vulkan or CPU) backend; off for a test
    /// backend, so tests never touch the user's cache.
    #[default]
    Default,
    /// This directory.
    Dir(PathBuf),
    /// Memory only.
    Off,
}

/// The default autotune directory: `<user cache dir>/photofinish` (e.g.
/// `~/.cache/photofinish` on Linux); `None` where the platform has no cache directory,
/// in which case the engine keeps its autotune map in memory only.
pub fn default_autotune_dir() -> Option<PathBuf> {
    dirs::cache_dir().map(|d| d.join("photofinish"))
}

/// Configures and builds an [`Engine`].
#[derive(Debug, Clone)]
pub struct EngineBuilder {
    pub(super) choice: BackendChoice,
    pub(super) instance: Option<Arc<dyn Backend>>,
    pub(super) channel_capacity: usize,
    pub(super) event_capacity: usize,
    pub(super) audit_period: u64,
    pub(super) verify_always: bool,
    // The settings below that the environment can fill in (`crate::config`) are
    // `None` until the application sets them; `build` resolves them (`Settings`), so
    // a value set here always wins over the environment.
    pub(super) max_group: Option<usize>,
    /// `None`: the environment's, else per device `auto_max_searching`.
    pub(super) max_searching: Option<usize>,
    /// `None`: the environment's, else `auto_busy_wait`.
    pub(super) busy_wait: Option<Duration>,
    /// `None`: no timeout (`without_dispatch_timeout`).
    pub(super) dispatch_timeout: Option<Duration>,
    pub(super) mode: SpeculationMode,
    pub(super) threshold_pct: u32,
    pub(super) persistence: Persistence,
    pub(super) max_keys_per_kernel: usize,
    pub(super) key_transfer: bool,
    /// The fleet store's URL as the application set it: `Some(None)` no fleet
    /// (`without_fleet`), `None` the environment's (`PHOTOFINISH_FLEET_URL`), if any.
    pub(super) fleet_url: Option<Option<String>>,
    /// `crate::fleet::FleetConfig` (`()` without the `redis` feature).
    pub(super) fleet_config: super::fleet::Config,
}

impl Engine {
    /// Starts configuring an engine.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }
}

impl Default for EngineBuilder {
    fn default() -> Self {
        EngineBuilder {
            choice: BackendChoice::Auto,
            instance: None,
            channel_capacity: DEFAULT_CHANNEL_CAPACITY,
            event_capacity: DEFAULT_EVENT_CAPACITY,
            audit_period: DEFAULT_AUDIT_PERIOD,
            verify_always: false,
            max_group: None,
            max_searching: None,
            busy_wait: None,
            dispatch_timeout: Some(DEFAULT_DISPATCH_TIMEOUT),
            mode: SpeculationMode::Auto,
            threshold_pct: DEFAULT_THRESHOLD_PCT,
            persistence: Persistence::Default,
            max_keys_per_kernel: super::tuning::DEFAULT_MAX_KEYS_PER_KERNEL,
            key_transfer: true,
            fleet_url: None,
            fleet_config: Default::default(),
        }
    }
}

impl EngineBuilder {
    /// Which backend to open (default: `Auto`).
    pub fn backend(mut self, choice: BackendChoice) -> Self {
        self.choice = choice;
        self
    }

    /// Runs on this backend instance instead of opening one (a backend of your own, or
    /// the `TestBackend` of feature `test-util`).
    pub fn backend_instance(mut self, backend: Arc<dyn Backend>) -> Self {
        self.instance = Some(backend);
        self
    }

    /// Capacity of each device's mailbox (at least 1); `submit` blocks and
    /// `try_submit` says `Full` beyond it.
    pub fn channel_capacity(mut self, capacity: usize) -> Self {
        self.channel_capacity = capacity.max(1);
        self
    }

    /// Capacity of each subscriber's event channel (at least 1).
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity.max(1);
        self
    }

    /// The most batches a worker takes from a backlog into one backend call when the
    /// persistent-launch rule (D1) fires and the kernel is launch-bound (default
    /// [`DEFAULT_MAX_GROUP`], or `PHOTOFINISH_MAX_GROUP` where set and this is not
    /// called; 1: off).
    ///
    /// Grouped batches are submitted back to back on one queue and waited for
    /// together: one round trip for the group, and each caller waits for the whole
    /// group, so only a kernel whose mean kernel time is at most its per-call overhead
    /// and at most 20 µs is grouped. It pays where a dispatch's host cost is the limit
    /// and queues are few (the CPU backend, a one-queue device): the figures are at
    /// [`DEFAULT_MAX_GROUP`]. Before grouping was limited to launch-bound kernels, groups
    /// of 8 on an H200 slowed 1 MiB histogram batches, whose time is copies rather than
    /// kernel, by 13–52 % (docs/journal/2026-11-21-h200-04-host-memory.md); such a
    /// kernel is not grouped now.
    pub fn max_group(mut self, batches: usize) -> Self {
        self.max_group = Some(batches);
        self
    }

    /// The most workers of one device that poll its empty mailbox at once (at least 1;
    /// default half the device's workers, at least [`DEFAULT_MAX_SEARCHING`], or
    /// `PHOTOFINISH_MAX_SEARCHING` where set and this is not called). A
    /// worker that finds the mailbox empty polls it for up to 100 µs while fewer than
    /// this many do; the others sleep until a submit rings for them. Fewer pollers cost
    /// a busy many-core host fewer cache-line transfers per batch; more take a burst
    /// without wake-ups (see `src/engine/README.md`, "The doorbell").
    pub fn max_searching(mut self, workers: usize) -> Self {
        self.max_searching = Some(workers.max(1));
        self
    }

    /// How long a worker waiting for its next batch, and a caller waiting in
    /// [`Ticket::wait`](crate::Ticket::wait), poll with CPU spin hints only before they
    /// yield their CPU between polls (capped by the 100 µs they poll before they park).
    /// Default: [`DEFAULT_BUSY_WAIT`] where the machine has more hardware threads than
    /// the engine has workers (one spare for the caller), otherwise zero, so on a
    /// crowded machine (the CPU backend, which keeps every core busy) a waiter gives its
    /// CPU to whoever has work at once; `PHOTOFINISH_BUSY_WAIT_US` sets it where this is
    /// not called.
    /// Busy waiting costs a core per waiter for that long after each hand-off; it
    /// spares a waiter that yielded the system call's delay in noticing its hand-off.
    pub fn busy_wait(mut self, wait: Duration) -> Self {
        self.busy_wait = Some(wait);
        self
    }

    /// How long one backend call may run (default [`DEFAULT_DISPATCH_TIMEOUT`], 10 s;
    /// at least 1 ms): the Vulkan backend's fence waits and CPU kernel code alike. A
    /// batch whose dispatch outlives it is answered [`EngineError::DispatchTimedOut`]
    /// and the variant that hung is retired: a speculative one is rejected (a race's
    /// caller already has the conservative answer: the speculative arm runs on a
    /// thread of its own, which is abandoned), a conservative one disables its kernel
    /// (its later batches get the same error at once). A kernel cannot be stopped, so
    /// the thread running it is abandoned (detached, never joined) and the queue gets
    /// a new worker thread; on the Vulkan backend the device still runs the kernel, so
    /// the device is given up on (`DeviceLost` for its later batches). `shutdown`
    /// returns within about the timeout even while a kernel loops. See
    /// `src/engine/README.md`, "Dispatch timeout".
    pub fn dispatch_timeout(mut self, timeout: Duration) -> Self {
        self.dispatch_timeout = Some(timeout.max(Duration::from_millis(1)));
        self
    }

    /// No dispatch timeout: a backend call may run for ever, and a kernel that never
    /// returns then holds its batch (a race's caller is still answered once its
    /// conservative arm is in), its worker and `shutdown` for as long as it runs.
    /// Saves the watchdog thread and two stores per backend call; for applications
    /// whose kernels may legitimately run longer than any bound they could name.
    pub fn without_dispatch_timeout(mut self) -> Self {
        self.dispatch_timeout = None;
        self
    }

    /// One audit race in `period` batches of an adopted kernel on each queue (0: no
    /// audits). The same ticks pace the re-races of rejected keys (SPEC §8): a key
    /// rejected for its timings is raced again after [`RERACE_FIRST_SKIPS`](crate::RERACE_FIRST_SKIPS)
    /// ticks, then after twice as many each time it stays rejected, up to
    /// [`RERACE_MAX_SKIPS`](crate::RERACE_MAX_SKIPS); with 0, never.
    pub fn audit_period(mut self, period: u64) -> Self {
        self.audit_period = period;
        self.verify_always = false;
        self
    }

    /// How much of an adopted variant's work is checked (SPEC §11): [`Verify::Always`]
    /// races every batch of an adopted variant against the conservative one;
    /// [`Verify::Audit`]`(n)` is [`audit_period`](Self::audit_period)`(n)`. The audit
    /// ticks still pace re-races of rejected keys under `Always` (at the period set
    /// before, by default [`DEFAULT_AUDIT_PERIOD`]).
    pub fn verify(mut self, verify: Verify) -> Self {
        match verify {
            Verify::Always => self.verify_always = true,
            Verify::Audit(period) => self = self.audit_period(period),
        }
        self
    }

    /// The most tuning keys (SPEC §8) a kernel keeps in memory (default
    /// [`DEFAULT_MAX_KEYS_PER_KERNEL`](crate::DEFAULT_MAX_KEYS_PER_KERNEL) = 64; at
    /// least 1). A batch of a new key past the bound makes the kernel forget its least
    /// recently used key (`Event::KeyEvicted`); that key's verdicts stay in the
    /// autotune store, and a later batch of it starts from them as priors.
    pub fn max_keys_per_kernel(mut self, keys: usize) -> Self {
        self.max_keys_per_kernel = keys.max(1);
        self
    }

    /// Whether a new tuning key starts from its nearest decided neighbour's verdict as
    /// a prior (default true; SPEC §8 transfer). Off, every key starts cold unless the
    /// store holds a verdict of its own: for measuring what transfer saves.
    pub fn key_transfer(mut self, on: bool) -> Self {
        self.key_transfer = on;
        self
    }

    /// Shares verdicts with other hosts through the fleet store at `url` (SPEC §13;
    /// feature `redis`): `redis://[user:password@]host:port/db`, or
    /// `redis+cluster://host:port,host:port` for a Redis Cluster. Default: the
    /// environment variable `PHOTOFINISH_FLEET_URL` where set; this call overrides it.
    ///
    /// A fleet entry is a prior for a key this engine has no verdict of its own for
    /// (adopted: confirmed by this engine's races before its variant answers; rejected:
    /// no race; a mismatch: rejected for good), every verdict this engine reaches,
    /// confirms or overturns is published, and other hosts' changes are heard live.
    /// No worker ever waits on Redis. `build` fails with [`EngineError::Fleet`] for a
    /// URL that does not parse or refused credentials; a Redis that does not answer
    /// only delays `build` by [`FleetConfig::connect_wait`](crate::fleet::FleetConfig)
    /// (3 s) and is reported by [`Event::FleetUnavailable`]. See the README, "Running a
    /// fleet".
    #[cfg(feature = "redis")]
    pub fn fleet(mut self, url: impl Into<String>) -> Self {
        self.fleet_url = Some(Some(url.into()));
        self
    }

    /// No fleet store, whatever `PHOTOFINISH_FLEET_URL` says.
    pub fn without_fleet(mut self) -> Self {
        self.fleet_url = Some(None);
        self
    }

    /// How the fleet client connects and how much it holds (timeouts, backoff, queue
    /// sizes; default [`FleetConfig::default`](crate::fleet::FleetConfig)).
    #[cfg(feature = "redis")]
    pub fn fleet_config(mut self, config: crate::fleet::FleetConfig) -> Self {
        self.fleet_config = config;
        self
    }

    /// How fused kernels choose their path (default `Auto`: follow the speculator).
    /// `Force` makes registering a kernel without a fused path an error.
    pub fn speculation_mode(mut self, mode: SpeculationMode) -> Self {
        self.mode = mode;
        self
    }

    /// The shared speculator's commit-rate threshold in percent (default 15).
    pub fn speculator_threshold(mut self, pct: u32) -> Self {
        self.threshold_pct = pct;
        self
    }

    /// Keeps the autotune files (one per device, named
    /// `DeviceIdentity::store_file_name()`) in `dir` instead of the default
    /// [`default_autotune_dir`]. The directory is created on the first save.
    pub fn autotune_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.persistence = Persistence::Dir(dir.into());
        self
    }

    /// Keeps the autotune map in memory only: nothing is loaded at build or saved.
    pub fn without_autotune_file(mut self) -> Self {
        self.persistence = Persistence::Off;
        self
    }

    /// The settings the environment can fill in, resolved: each one the application
    /// set, else the environment's, else the built-in default (`None` where that
    /// depends on the device).
    pub(super) fn settings(&self, env: &crate::config::Env) -> Settings {
        Settings {
            max_group: self
                .max_group
                .or(env.max_group)
                .unwrap_or(DEFAULT_MAX_GROUP),
            max_searching: self.max_searching.or(env.max_searching),
            busy_wait: self.busy_wait.or(env.busy_wait),
            fleet_url: match &self.fleet_url {
                Some(url) => url.clone(),
                None => env.fleet_url.clone(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An environment that sets every variable the builder reads.
    fn full_env() -> crate::config::Env {
        crate::config::Env {
            max_group: Some(8),
            max_searching: Some(2),
            busy_wait: Some(Duration::from_micros(20)),
            fleet_url: Some("redis://from-env:6379/0".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_builder_setting_wins_over_the_environment() {
        let builder = Engine::builder()
            .max_group(1)
            .max_searching(3)
            .busy_wait(Duration::ZERO)
            .without_fleet();
        assert_eq!(
            builder.settings(&full_env()),
            Settings {
                max_group: 1,
                max_searching: Some(3),
                busy_wait: Some(Duration::ZERO),
                fleet_url: None,
            }
        );
    }

    #[cfg(feature = "redis")]
    #[test]
    fn a_builder_fleet_url_wins_over_the_environment() {
        let builder = Engine::builder().fleet("redis://from-builder:6379/0");
        assert_eq!(
            builder.settings(&full_env()).fleet_url.as_deref(),
            Some("redis://from-builder:6379/0")
        );
    }

    #[test]
    fn the_environment_fills_in_what_the_builder_left_unset() {
        assert_eq!(
            Engine::builder().settings(&full_env()),
            Settings {
                max_group: 8,
                max_searching: Some(2),
                busy_wait: Some(Duration::from_micros(20)),
                fleet_url: Some("redis://from-env:6379/0".into()),
            }
        );
        assert_eq!(
            Engine::builder().settings(&crate::config::Env::default()),
            Settings {
                max_group: DEFAULT_MAX_GROUP,
                max_searching: None,
                busy_wait: None,
                fleet_url: None,
            }
        );
    }
}
