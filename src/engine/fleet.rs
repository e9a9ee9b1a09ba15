//! The engine's link to the fleet store (SPEC §13, feature `redis`): fleet entries as
//! priors of new keys, this engine's verdict changes handed to the fleet, live changes
//! of other hosts applied to keys under way, and the fleet's reachability as events.
//!
//! It owns one thread, `photofinish-fleet-link`; the fleet client (`crate::fleet`) owns
//! another, the only one that does network I/O. A worker's part is bounded and never
//! waits on Redis:
//! - publishing a verdict change (`FleetLink::offer`, from `record::published`) is one
//!   `try_send` of a small `Copy` message on a bounded channel — no allocation, no
//!   lock, no string; the link thread builds the key and the JSON and hands them to the
//!   client. A full channel drops the message (counted, logged once): the verdict
//!   stays in the local store and file, and the next change of that key is sent.
//! - a new key's prior (`FleetLink::prior`, from `priors::prior`) reads the client's
//!   in-memory copy, once per new key and device: formatting the key and a map lookup
//!   under the copy's lock, which the client's thread holds only for map operations,
//!   never across network I/O.
//!
//! # What a fleet entry does here
//!
//! A fleet entry is a prior (SPEC §11), looked up when a key is made (after this key's
//! own entry in the local store, before a neighbour key's verdict; a fleet *mismatch*
//! comes before everything, as it is sticky fleet-wide): an adopted one leaves the
//! variant undecided until it agreed on `MIN_DISPATCHES_FOR_VERDICT` races of this
//! engine; a rejected one costs no race; a mismatch rejects the variant on that key for
//! good. Counts were clamped by the client (`MAX_FLEET_WINDOW_COUNT`) and the
//! confirmation starts a window of its own, so a forged entry is always overturned by
//! this engine's races.
//!
//! # Live changes (the choice made)
//!
//! The client's copy follows Redis' announcements; the link thread rescans this
//! engine's keys whenever the copy changed (`Fleet::generation`):
//! - a key still **undecided** here and not re-racing takes a fleet verdict as a prior,
//!   as a new key would: an adoption waits for the confirmation races (those already
//!   run count), a rejection stops its races at once;
//! - a **decided** key keeps the verdict its own races reached (or confirmed): another
//!   host's timing verdict is a prior, and a prior never outranks this engine's
//!   measurement — so a changing fleet entry cannot flip a host back and forth;
//! - except a **mismatch**: it rejects the variant on that key here too, adopted or not,
//!   for good (a wrong answer seen anywhere is never risked).
//!
//! Fleet verdicts are not copied into the local file; the file holds what this engine
//! measured, confirmed or overturned, and it keeps working while Redis is gone.
//!
//! This file holds the link (the client, the channel, what a worker calls); the link
//! thread, which reads the engine's state, is `fleet_live.rs`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

use crate::autotune::{SpecCacheKey, VerdictRecord};
use crate::backend::DeviceInfo;
use crate::fleet::{DeviceModel, Fleet, FleetConfig, FleetKey};
use crate::policy::KernelVerdict;

use super::error::EngineError;
use super::keys::{Hint, KeyState, PriorSource};
use super::registry::Kernel;
use super::tuning::TuningKey;

/// Verdict changes that may wait for the link thread (each is a few dozen bytes).
const OFFER_CAPACITY: usize = 4096;
/// How often the link thread looks at the client's statuses and copy when no verdict
/// change comes.
pub(super) const POLL: Duration = Duration::from_millis(20);
/// How long `shutdown` waits for the verdicts of this engine to reach a Redis that
/// answers (none while it does not: the client keeps nothing past its drop).
pub(crate) const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);
/// The link thread's name.
pub(super) const THREAD_NAME: &str = "photofinish-fleet-link";

/// The fleet client's configuration (`EngineBuilder::fleet_config`).
pub(crate) type Config = FleetConfig;

/// One verdict change for the fleet: plain values (the verdict's reason is the one the
/// store keeps, `Measured` or `Mismatch`), so that the worker's send allocates nothing.
#[derive(Debug, Clone)]
pub(super) struct Offer {
    pub(super) device: usize,
    pub(super) conservative: SpecCacheKey,
    pub(super) speculative: SpecCacheKey,
    pub(super) key: TuningKey,
    pub(super) verdict: VerdictRecord,
}

pub(super) enum Msg {
    Offer(Offer),
    Stop,
}

/// The engine's fleet: off, or a connected client and the link thread's channel.
#[derive(Debug, Default)]
pub(crate) struct FleetLink {
    pub(super) on: Option<On>,
}

#[derive(Debug)]
pub(super) struct On {
    pub(super) fleet: Arc<Fleet>,
    tx: Sender<Msg>,
    pub(super) rx: Receiver<Msg>,
    /// Offers sent and not yet handed to the client.
    pub(super) queued: Arc<AtomicU64>,
    warned_full: AtomicBool,
    pub(super) thread: Mutex<Option<JoinHandle<()>>>,
}

impl FleetLink {
    /// Connects to the fleet at `url` (see `Fleet::connect_with`): a URL that does not
    /// parse or refused credentials are `EngineError::Fleet`; a Redis that does not
    /// answer gives a link that connects in the background (`Event::FleetUnavailable`).
    pub(crate) fn connect(url: Option<&str>, config: &Config) -> Result<Self, EngineError> {
        let Some(url) = url else {
            return Ok(FleetLink::default());
        };
        let fleet = Fleet::connect_with(url, config.clone()).map_err(EngineError::Fleet)?;
        tracing::info!(
            url = fleet.url(),
            available = fleet.is_available(),
            "fleet store connected"
        );
        let (tx, rx) = bounded(OFFER_CAPACITY);
        Ok(FleetLink {
            on: Some(On {
                fleet: Arc::new(fleet),
                tx,
                rx,
                queued: Arc::new(AtomicU64::new(0)),
                warned_full: AtomicBool::new(false),
                thread: Mutex::new(None),
            }),
        })
    }

    /// The client, when the engine has a fleet.
    pub(crate) fn client(&self) -> Option<&Fleet> {
        self.on.as_ref().map(|on| &*on.fleet)
    }

    /// The fleet's verdict on speculative variant `spec` of `state`'s key as a prior:
    /// a mismatch on any device first, else the first device's entry. Reads the
    /// client's in-memory copy only.
    pub(crate) fn prior(
        &self,
        devices: &[DeviceInfo],
        kernel: &Kernel,
        state: &KeyState,
        spec: usize,
    ) -> Option<Hint> {
        let on = self.on.as_ref()?;
        let mut found: Option<Hint> = None;
        for (device, info) in devices.iter().enumerate() {
            let key = fleet_key(info, &kernel.keys[0], &kernel.keys[spec], state.key);
            let Some(entry) = on.fleet.get(&key) else {
                continue;
            };
            if entry.verdict.verdict == KernelVerdict::Undecided {
                continue;
            }
            let mismatch = entry.is_mismatch();
            let hint = Hint {
                device,
                verdict: entry.verdict,
                source: PriorSource::Fleet,
            };
            if mismatch {
                return Some(hint);
            }
            found.get_or_insert(hint);
        }
        found
    }

    /// Hands a verdict change of this engine to the link thread, for the fleet. The
    /// worker path: one `try_send`, never a wait (see the module docs).
    pub(crate) fn offer(
        &self,
        device: usize,
        kernel: &Kernel,
        state: &KeyState,
        spec: usize,
        verdict: VerdictRecord,
    ) {
        let Some(on) = &self.on else {
            return;
        };
        let offer = Offer {
            device,
            conservative: kernel.keys[0],
            speculative: kernel.keys[spec.clamp(1, kernel.keys.len() - 1)],
            key: state.key,
            verdict,
        };
        on.queued.fetch_add(1, Ordering::AcqRel);
        match on.tx.try_send(Msg::Offer(offer)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                on.queued.fetch_sub(1, Ordering::AcqRel);
                if !on.warned_full.swap(true, Ordering::Relaxed) {
                    tracing::warn!("fleet: the link's queue is full; a verdict change was not shared (it stays in the local store)");
                }
            }
        }
    }

    /// Waits up to `timeout` until every verdict change handed over so far is in Redis
    /// (or refused there as sticky); true when none is left. True at once without a
    /// fleet.
    pub(crate) fn flush(&self, timeout: Duration) -> bool {
        let Some(on) = &self.on else {
            return true;
        };
        let deadline = Instant::now() + timeout;
        while on.queued.load(Ordering::Acquire) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        on.fleet
            .flush(deadline.saturating_duration_since(Instant::now()))
    }

    /// At shutdown, after the workers are joined: sends what is queued, waits (up to
    /// [`SHUTDOWN_FLUSH`], and only while Redis answers) for it to reach Redis, and
    /// joins the link thread.
    pub(crate) fn stop(&self) {
        let Some(on) = &self.on else {
            return;
        };
        let handle = on.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            let _ = on.tx.send(Msg::Stop);
            if handle.join().is_err() {
                tracing::error!("the fleet link thread ended by panic");
            }
        }
    }
}

/// The fleet key of the pair (`conservative`, `speculative`) on the device `info`
/// for tuning key `key`.
pub(crate) fn fleet_key(
    info: &DeviceInfo,
    conservative: &SpecCacheKey,
    speculative: &SpecCacheKey,
    key: TuningKey,
) -> FleetKey {
    FleetKey {
        device: device_model(info),
        driver_version: info.driver_version.clone(),
        shader_hash: conservative.shader_hash,
        binding_sig: conservative.binding_sig,
        conservative: variant_hash(conservative),
        speculative: variant_hash(speculative),
        tuning_key: key.hash64(),
        tuning_key_display: key.to_string(),
    }
}

/// A device's model as hosts share it. A Vulkan adapter id is
/// `<vendor hex>:<device hex>:<name>`; any other (the CPU backend's
/// `cpu:<arch>:<threads>`, a test backend's) is its own name with ids 0.
fn device_model(info: &DeviceInfo) -> DeviceModel {
    let hex = |s: Option<&str>| {
        s.filter(|s| s.len() == 4)
            .and_then(|s| u32::from_str_radix(s, 16).ok())
    };
    let mut parts = info.adapter_id.splitn(3, ':');
    let ids = (hex(parts.next()), hex(parts.next()), parts.next());
    match ids {
        (Some(vendor_id), Some(device_id), Some(name)) => DeviceModel {
            vendor_id,
            device_id,
            name: name.to_owned(),
        },
        _ => DeviceModel {
            vendor_id: 0,
            device_id: 0,
            name: info.adapter_id.clone(),
        },
    }
}

/// One variant's identity (shader, bindings, workgroup size, specialisation) in 64
/// bits (FNV-1a), the tuning key left out: the key names it on its own.
fn variant_hash(k: &SpecCacheKey) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let words = [
        k.shader_hash,
        k.binding_sig,
        u64::from(k.workgroup_size[0]),
        u64::from(k.workgroup_size[1]),
        u64::from(k.workgroup_size[2]),
        k.spec_hash,
    ];
    words
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .fold(FNV_OFFSET, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(adapter_id: &str) -> DeviceInfo {
        let backend = super::super::TestBackend::new(1, 1, 1);
        let mut info = crate::backend::Backend::devices(&backend)[0].clone();
        info.adapter_id = adapter_id.to_owned();
        info
    }

    #[test]
    fn a_vulkan_adapter_id_gives_vendor_device_and_name() {
        let m = device_model(&info("10de:2335:NVIDIA H200"));
        assert_eq!((m.vendor_id, m.device_id), (0x10de, 0x2335));
        assert_eq!(m.name, "NVIDIA H200");
        for other in ["cpu:x86_64:16", "test:0", "zz:yy:name", "abc:def:x", ""] {
            let m = device_model(&info(other));
            assert_eq!((m.vendor_id, m.device_id, m.name.as_str()), (0, 0, other));
        }
    }

    #[test]
    fn variants_differing_in_workgroup_size_have_different_fleet_keys() {
        let a = SpecCacheKey {
            shader_hash: 1,
            binding_sig: 2,
            workgroup_size: [64, 1, 1],
            spec_hash: 0,
        };
        let b = SpecCacheKey {
            workgroup_size: [128, 1, 1],
            ..a
        };
        assert_ne!(variant_hash(&a), variant_hash(&b));
        let key = TuningKey::for_bytes(4096, None);
        let i = info("test:0");
        assert_ne!(
            fleet_key(&i, &a, &a, key).to_string(),
            fleet_key(&i, &a, &b, key).to_string()
        );
    }
}
