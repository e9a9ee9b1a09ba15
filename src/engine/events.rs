//! Events by message: the typed [`Event`] stream and the bus that fans it out.
//!
//! Each subscriber has its own channel of at most `capacity` events, written without
//! blocking: a slow or absent reader never blocks a worker. When a subscriber's channel
//! holds `capacity` events the event is dropped for that subscriber only and counted
//! ([`EventBus::dropped`]). Each subscriber's drops are counted too, so for every
//! subscriber delivered + dropped == published while it listened. The channels grow as
//! events queue (none sets aside room for `capacity` events up front), and a dropped
//! [`Subscription`] is forgotten by the next `subscribe` or `publish`, so subscribers
//! that come and go hold no memory (until issue #25 each held a preallocated
//! 1 024-event channel until the next publish: 20 000 of them, 2 GB).
//! Events are rare (verdict changes, toggles, faults), so the subscriber list sits
//! behind a plain mutex. Everything here comes from `crate::sync` (a loom stand-in for
//! the channel under `photofinish_loom`), so `loom-tests/tests/event_bus.rs` models the
//! drop policy. This module never decides anything; it only delivers.

use crate::sync::channel::{unbounded, Receiver, Sender, TrySendError};
use crate::sync::{Arc, AtomicBool, AtomicU64, AtomicUsize, Mutex, Ordering};

use crate::backend::{BackendKind, QueueId};
use crate::policy::SpeculationVerdict;

use super::policy_action::PolicyAction;
use super::sample::KernelId;
use super::sample::RaceSample;
use super::tuning::TuningKey;

pub use crate::policy::KernelVerdict;

/// Why a verdict changed: the autotune store's reason, one type for the engine, its
/// events, the autotune file and the fleet store.
pub use crate::autotune::VerdictReason;

/// Where two answers of a race disagreed (SPEC §9): the output binding (`None` for a
/// workload's canonical answer), the first element that differs under the kernel's
/// [`Agreement`](crate::Agreement), the two values and how far apart they are.
#[derive(Debug, Clone)]
pub struct MismatchDetail {
    /// The output binding's slot; `None` for a workload's canonical answer.
    pub binding: Option<u32>,
    /// The first element that differs (bytes for `Exact`, elements for `Float`);
    /// `None` when the lengths differ or a custom comparison refused.
    pub element: Option<usize>,
    /// The two values there (conservative, speculative), as text.
    pub values: Option<(String, String)>,
    /// `|conservative - speculative|` there, where it is a number.
    pub difference: Option<f64>,
    /// The comparison's own words.
    pub detail: String,
}

impl PartialEq for MismatchDetail {
    fn eq(&self, other: &Self) -> bool {
        self.binding == other.binding
            && self.element == other.element
            && self.values == other.values
            && self.difference.map(f64::to_bits) == other.difference.map(f64::to_bits)
            && self.detail == other.detail
    }
}

impl Eq for MismatchDetail {}

impl std::fmt::Display for MismatchDetail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.binding {
            Some(slot) => write!(f, "binding {slot}: {}", self.detail),
            None => write!(f, "answer: {}", self.detail),
        }
    }
}

/// Something the engine decided or noticed, published to every subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The engine opened its backend (published once, at build).
    BackendSelected {
        /// Which backend.
        kind: BackendKind,
        /// Its devices' names.
        devices: Vec<String>,
        /// Why this one (e.g. "auto: no Vulkan device, using the CPU backend").
        reason: String,
    },
    /// A kernel's verdict on one tuning key changed.
    VerdictChanged {
        /// The kernel.
        kernel: KernelId,
        /// Its name.
        name: String,
        /// The speculative variant the verdict is on (its index among the kernel's
        /// variants: 1 for the first speculative one).
        variant: usize,
        /// The tuning key the verdict belongs to.
        key: TuningKey,
        /// The verdict before.
        from: KernelVerdict,
        /// The verdict now.
        to: KernelVerdict,
        /// Why.
        reason: VerdictReason,
    },
    /// One timed race whose arms agreed: both arms' kernel times, for per-sample
    /// reports (published for every such race; the same samples are kept, up to
    /// `MAX_KEPT_SAMPLES`, in `Engine::kernel_stats`).
    RaceSample {
        /// The kernel.
        kernel: KernelId,
        /// Its name.
        name: String,
        /// The speculative variant that raced.
        variant: usize,
        /// The batch's tuning key.
        key: TuningKey,
        /// The sample: its index (among the key's samples) and both arms' `kernel_ns`.
        sample: RaceSample,
        /// What the paired window says after this sample (N2, `KeepRacing` while it
        /// needs more samples; the engine's paired test on top may still keep racing,
        /// see `VerdictReason::Measured`). The `VerdictChanged` it causes, if any,
        /// follows.
        window_verdict: SpeculationVerdict,
    },
    /// A kernel with several speculative variants moved play to another one: the
    /// next undecided variant after a verdict, or, once all are decided, the adopted
    /// one measured fastest. Batches race or run this variant from now on.
    VariantInPlay {
        /// The kernel.
        kernel: KernelId,
        /// Its name.
        name: String,
        /// The variant now in play (its index among the kernel's variants).
        variant: usize,
        /// The tuning key whose play moved.
        key: TuningKey,
        /// That variant's name.
        variant_name: String,
        /// The verdict on it (`Engine::verdict` reports this from now on).
        verdict: KernelVerdict,
    },
    /// A speculative arm disagreed with the conservative arm; its output was discarded.
    MismatchCaught {
        /// The kernel.
        kernel: KernelId,
        /// Its name.
        name: String,
        /// The speculative variant that disagreed (rejected on every key from now on).
        variant: usize,
        /// The batch's tuning key.
        key: TuningKey,
        /// The queue the speculative arm ran on.
        queue: QueueId,
        /// True when it happened in an audit race of an adopted kernel.
        audit: bool,
        /// Where and by how much the answers differ.
        detail: MismatchDetail,
    },
    /// A kernel held more tuning keys than `EngineBuilder::max_keys_per_kernel`: the
    /// least recently used one was forgotten in memory. Its verdicts stay in the
    /// autotune store; a later batch of that key starts from them as priors.
    KeyEvicted {
        /// The kernel.
        kernel: KernelId,
        /// Its name.
        name: String,
        /// The key forgotten.
        key: TuningKey,
    },
    /// The shared adaptive speculator switched the fused path on or off.
    SpeculatorToggled {
        /// True: fused path on.
        enabled: bool,
        /// The commit-rate EMA at the switch, in ppm.
        commit_rate_ppm: u64,
    },
    /// Trace-JIT pre-loaded a kernel's predicted variant in the background. Published
    /// with [`Event::KeyPreSpecialised`], which says which key it is for and with which
    /// specialisation constants.
    PreSpecialised {
        /// The kernel.
        kernel: KernelId,
        /// The variant pre-loaded.
        variant: String,
        /// The device it was loaded on.
        device: usize,
        /// Expected savings in ns.
        expected_savings_ns: u64,
    },
    /// Trace-JIT (I2) said Speculate after a batch of `after`, predicting `key` next,
    /// and compiled in the background, on rayon, the pipeline `key`'s batches will run
    /// on `device` that was not there: `variant` specialised with `constants`
    /// ((constant id, value) pairs; empty for a variant without specialisation
    /// constants, which was loaded as it is).
    KeyPreSpecialised {
        /// The kernel.
        kernel: KernelId,
        /// The key whose batch made the prediction.
        after: TuningKey,
        /// The key predicted to come next.
        key: TuningKey,
        /// The variant compiled.
        variant: String,
        /// The device it was compiled on.
        device: usize,
        /// Its specialisation constants, (id, value).
        constants: Vec<(u32, u32)>,
        /// What the compile took, ns.
        compile_ns: u64,
        /// The saving the policy expected, ns.
        expected_savings_ns: u64,
    },
    /// What became of a pipeline trace-JIT compiled ahead of its key
    /// ([`Event::KeyPreSpecialised`]): a batch of the key came and ran on it without a
    /// compile on its critical path (`used`), or the engine shut down with no batch
    /// having used it (`!used`: the compile was wasted).
    PreSpecialisationOutcome {
        /// The kernel.
        kernel: KernelId,
        /// The key of the batch that used it (`None` when wasted).
        key: Option<TuningKey>,
        /// The variant.
        variant: String,
        /// The device.
        device: usize,
        /// Its specialisation constants, (id, value).
        constants: Vec<(u32, u32)>,
        /// A batch used it.
        used: bool,
    },
    /// An aggressive path fired in the dispatch policy for a kernel, and what the
    /// engine did about it. Published when the rules that fired or the engine's actions
    /// changed for the kernel, not every batch.
    PolicyAudit {
        /// The kernel.
        kernel: KernelId,
        /// What fired, as the policy displays it (`policy::PolicyAudit`).
        fired: Vec<String>,
        /// What the engine did about each, in the same order as `fired`, read from
        /// what happened to the batch the policy was consulted for.
        did: Vec<PolicyAction>,
    },
    /// A worker was restarted by its supervisor.
    WorkerRestarted {
        /// The worker's queue.
        queue: QueueId,
        /// Why (panic message or backend error).
        reason: String,
        /// Whether its in-flight batch was retried on another queue.
        retried: bool,
    },
    /// A device was lost; its workers move every batch to another live device from now
    /// on (or answer `DeviceLost` when none is left).
    DeviceLost {
        /// The device.
        device: usize,
        /// What the driver said.
        detail: String,
    },
    /// The fleet store (SPEC §13) cannot be reached: the engine goes on with its local
    /// file, keeps what it would publish, and reconnects with backoff. Mapped from the
    /// fleet client's `FleetStatus::Unavailable` (feature `redis`).
    FleetUnavailable {
        /// Why, in the fleet client's words.
        reason: String,
    },
    /// The fleet store answers again: its entries were read afresh and the kept writes
    /// are being sent. Mapped from `FleetStatus::Restored`.
    FleetRestored,
}

/// How many events one subscriber lost because its channel was full.
#[derive(Debug, Clone)]
pub struct DropCounter(Arc<AtomicU64>);

impl DropCounter {
    /// Events dropped for this subscriber so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

#[derive(Debug)]
struct Subscriber {
    tx: Sender<Event>,
    dropped: DropCounter,
    /// Set when its [`Subscription`] is dropped.
    left: Arc<AtomicBool>,
}

/// Marks a subscriber gone when its [`Subscription`] (or the iterator it became) is
/// dropped: its own flag, then the bus's count of subscribers gone since the last prune.
#[derive(Debug)]
struct Leave {
    left: Arc<AtomicBool>,
    gone: Arc<AtomicUsize>,
}

impl Drop for Leave {
    fn drop(&mut self) {
        // The flag first: a prune that sees the count sees the flag.
        self.left.store(true, Ordering::Release);
        self.gone.fetch_add(1, Ordering::AcqRel);
    }
}

/// One subscriber's stream of [`Event`]s: what [`Engine::subscribe`](crate::Engine::subscribe)
/// returns. Events come in the order they were published. It holds at most
/// `EngineBuilder::event_capacity` unread events; events published while it is full
/// are dropped for it and counted ([`Subscription::dropped`]), so a reader that falls
/// behind never slows the engine. Dropping it unsubscribes.
///
/// Read it like a channel's receiver: [`recv`](Self::recv) blocks for the next event,
/// [`try_recv`](Self::try_recv) and [`try_iter`](Self::try_iter) take what is queued,
/// [`recv_timeout`](Self::recv_timeout) waits a while, and [`iter`](Self::iter) (or a
/// `for` loop over the subscription) reads until the engine is gone.
#[derive(Debug)]
pub struct Subscription {
    // Field order is drop order: the receiver goes before the bus is told.
    rx: Receiver<Event>,
    dropped: DropCounter,
    // Read only by `into_iter`, which the loom build has not.
    #[cfg_attr(photofinish_loom, allow(dead_code))]
    leave: Leave,
}

impl Subscription {
    /// Events dropped for this subscriber because it held `event_capacity` unread
    /// events when they were published.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }
}

#[cfg(not(photofinish_loom))]
pub use crossbeam_channel::{RecvError, RecvTimeoutError, TryRecvError};

#[cfg(not(photofinish_loom))]
impl Subscription {
    /// The next event, waiting for one; `Err` once the engine is gone and every
    /// event is read.
    pub fn recv(&self) -> Result<Event, RecvError> {
        self.rx.recv()
    }

    /// The next event if one is queued.
    pub fn try_recv(&self) -> Result<Event, TryRecvError> {
        self.rx.try_recv()
    }

    /// The next event, waiting at most `timeout` for one.
    pub fn recv_timeout(&self, timeout: std::time::Duration) -> Result<Event, RecvTimeoutError> {
        self.rx.recv_timeout(timeout)
    }

    /// The events queued now, without waiting.
    pub fn try_iter(&self) -> crossbeam_channel::TryIter<'_, Event> {
        self.rx.try_iter()
    }

    /// Every event, waiting for each; ends once the engine is gone and every event
    /// is read.
    pub fn iter(&self) -> crossbeam_channel::Iter<'_, Event> {
        self.rx.iter()
    }

    /// Events queued now.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// True when no event is queued.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

/// Under the loom models only the non-blocking read exists (the stand-in channel's).
#[cfg(photofinish_loom)]
impl Subscription {
    /// The oldest queued event, if any.
    pub fn try_recv(&self) -> Option<Event> {
        self.rx.try_recv()
    }
}

/// The events of a [`Subscription`] it was turned into (`for event in subscription`):
/// waits for each, ends once the engine is gone and every event is read.
#[cfg(not(photofinish_loom))]
#[derive(Debug)]
pub struct SubscriptionIntoIter {
    // As in `Subscription`: the receiver goes before the bus is told.
    events: crossbeam_channel::IntoIter<Event>,
    _leave: Leave,
}

#[cfg(not(photofinish_loom))]
impl Iterator for SubscriptionIntoIter {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        self.events.next()
    }
}

#[cfg(not(photofinish_loom))]
impl IntoIterator for Subscription {
    type Item = Event;
    type IntoIter = SubscriptionIntoIter;

    fn into_iter(self) -> SubscriptionIntoIter {
        SubscriptionIntoIter {
            events: self.rx.into_iter(),
            _leave: self.leave,
        }
    }
}

#[cfg(not(photofinish_loom))]
impl<'a> IntoIterator for &'a Subscription {
    type Item = Event;
    type IntoIter = crossbeam_channel::Iter<'a, Event>;

    fn into_iter(self) -> Self::IntoIter {
        self.rx.iter()
    }
}

/// Fans events out to subscribers without ever blocking the publisher.
#[derive(Debug)]
pub struct EventBus {
    subscribers: Mutex<Vec<Subscriber>>,
    /// Subscriptions dropped since the last prune of `subscribers`.
    gone: Arc<AtomicUsize>,
    /// `BackendSelected`, replayed first to every subscriber (it is published at build,
    /// before anyone can subscribe).
    sticky: Mutex<Option<Event>>,
    capacity: usize,
    dropped: AtomicU64,
}

impl EventBus {
    /// A bus whose subscribers each hold at most `capacity` unread events.
    pub fn new(capacity: usize) -> Self {
        EventBus {
            subscribers: Mutex::new(Vec::new()),
            gone: Arc::new(AtomicUsize::new(0)),
            sticky: Mutex::new(None),
            capacity: capacity.max(1),
            dropped: AtomicU64::new(0),
        }
    }

    /// A new subscriber: receives every event published from now on.
    pub fn subscribe(&self) -> Subscription {
        self.subscribe_counted().0
    }

    /// A new subscriber and the count of events dropped for it.
    pub fn subscribe_counted(&self) -> (Subscription, DropCounter) {
        let (tx, rx) = unbounded();
        let dropped = DropCounter(Arc::new(AtomicU64::new(0)));
        let left = Arc::new(AtomicBool::new(false));
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        if self.gone.swap(0, Ordering::AcqRel) != 0 {
            subs.retain(|sub| !sub.left.load(Ordering::Acquire));
        }
        if let Some(event) = self
            .sticky
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            // A fresh channel is empty and its receiver alive: this cannot fail.
            let _ = tx.try_send(event);
        }
        subs.push(Subscriber {
            tx,
            dropped: dropped.clone(),
            left: Arc::clone(&left),
        });
        drop(subs);
        let subscription = Subscription {
            rx,
            dropped: dropped.clone(),
            leave: Leave {
                left,
                gone: Arc::clone(&self.gone),
            },
        };
        (subscription, dropped)
    }

    /// Publishes `event` and keeps it to replay to every later subscriber.
    pub fn publish_sticky(&self, event: Event) {
        *self.sticky.lock().unwrap_or_else(|p| p.into_inner()) = Some(event.clone());
        self.publish(event);
    }

    /// Delivers `event` to every subscriber that has room; counts the rest. Never
    /// blocks on a subscriber.
    pub fn publish(&self, event: Event) {
        tracing::debug!(?event, "engine event");
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        // Every subscriber is looked at below: the count of those gone is spent.
        self.gone.swap(0, Ordering::AcqRel);
        let count_drop = |sub: &Subscriber| {
            sub.dropped.0.fetch_add(1, Ordering::AcqRel);
            self.dropped.fetch_add(1, Ordering::AcqRel);
        };
        subs.retain(|sub| {
            if sub.left.load(Ordering::Acquire) {
                return false;
            }
            // Only publishers (under this lock) add to a channel, so its length cannot
            // grow between this check and the send.
            if sub.tx.len() >= self.capacity {
                count_drop(sub);
                return true;
            }
            match sub.tx.try_send(event.clone()) {
                Ok(()) => true,
                // An unbounded channel is never full; counted all the same.
                Err(TrySendError::Full(_)) => {
                    count_drop(sub);
                    true
                }
                Err(TrySendError::Disconnected(_)) => false,
            }
        });
    }

    /// Events dropped because a subscriber's channel was full (all subscribers).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Acquire)
    }

    /// Subscribers the bus holds now: every live [`Subscription`], and those dropped
    /// since the last `subscribe` or `publish`.
    pub fn subscribers(&self) -> usize {
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}
