//! Starting an engine from its builder's resolved settings: opens the backend (announced
//! once), each device's autotune store and mailbox, the fleet link, the saver thread
//! when a store has a file, one supervised worker per queue and the dispatch watchdog.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::autotune::{AutotuneStore, DeviceIdentity, LoadMode};
use crate::backend::{Backend, BackendError, BackendKind, DeviceInfo};
use crate::speculator::AdaptiveSpeculator;

use super::builder::{
    default_autotune_dir, BackendChoice, EngineBuilder, Persistence, DEFAULT_BUSY_WAIT,
    DEFAULT_MAX_SEARCHING,
};
use super::core::{Config, Core};
use super::devices::{DeviceSlot, DeviceTune, QueueSlot};
use super::error::EngineError;
use super::events::{Event, EventBus};
use super::handle::Engine;
use super::mailbox::Gate;
use super::registry::Registry;
use super::saver::{self, SaveQueue};
use super::supervisor;

impl EngineBuilder {
    /// Opens the backend and starts the workers.
    pub fn build(self) -> Result<Engine, EngineError> {
        start(self)
    }
}

/// Starts the engine `builder` describes, its settings resolved against the environment.
fn start(builder: EngineBuilder) -> Result<Engine, EngineError> {
    let settings = builder.settings(&crate::config::Env::read());
    let bus = EventBus::new(builder.event_capacity);
    let (backend, reason) = match builder.instance.clone() {
        Some(b) => (b, "backend instance given to the builder".to_string()),
        None => open_backend(builder.choice)?,
    };
    backend.set_dispatch_timeout(builder.dispatch_timeout);
    let devices_info = backend.devices().to_vec();
    let fleet =
        super::fleet::FleetLink::connect(settings.fleet_url.as_deref(), &builder.fleet_config)?;
    let dir = autotune_dir(&builder.persistence, backend.kind());
    let tunes: Vec<DeviceTune> = devices_info
        .iter()
        .map(|info| open_autotune(info, dir.as_deref()))
        .collect();
    // Saves happen on one background thread, started only when there is a file
    // to save to.
    let saves = tunes
        .iter()
        .any(|t| t.path.is_some())
        .then(|| SaveQueue::new(tunes.len()));
    tracing::info!(
        backend = %backend.kind(),
        devices = ?devices_info.iter().map(|d| &d.name).collect::<Vec<_>>(),
        %reason,
        "photofinish engine backend selected"
    );
    let busy_wait = settings
        .busy_wait
        .unwrap_or_else(|| auto_busy_wait(backend.queues().len()));
    let mut devices = Vec::with_capacity(devices_info.len());
    for info in &devices_info {
        let queues: Vec<QueueSlot> = backend
            .queues()
            .iter()
            .filter(|q| q.device == info.index)
            .map(|&id| QueueSlot {
                id,
                users: AtomicU32::new(0),
            })
            .collect();
        devices.push(DeviceSlot {
            mailbox: super::mailbox::Mailbox::new(
                builder.channel_capacity,
                settings
                    .max_searching
                    .unwrap_or_else(|| auto_max_searching(queues.len())),
                busy_wait,
            ),
            load: super::contention::DeviceLoad::new(queues.len()),
            queues,
            lost: Default::default(),
            shares_cores: info.device_type == "cpu",
        });
    }
    if devices.iter().all(|d| d.queues.is_empty()) {
        return Err(EngineError::NoBackend(BackendError::NoDevice(
            "the backend opened no compute queue".into(),
        )));
    }
    let core = Arc::new(Core {
        backend: Arc::clone(&backend),
        registry: Registry::default(),
        bus: Arc::new(bus),
        gate: Gate::new(),
        preloads: Default::default(),
        devices,
        config: Config {
            audit_period: builder.audit_period,
            verify_always: builder.verify_always,
            max_group: settings.max_group.max(1),
            mode: builder.mode,
            busy_wait,
            dispatch_timeout: builder.dispatch_timeout,
            max_keys_per_kernel: builder.max_keys_per_kernel,
            key_transfer: builder.key_transfer,
        },
        speculator: AdaptiveSpeculator::new(builder.threshold_pct),
        tunes,
        saves,
        fleet,
        next_device: AtomicUsize::new(0),
        max_workgroups_x: devices_info
            .iter()
            .map(|d| d.limits.max_workgroup_count[0])
            .min()
            .unwrap_or(u32::MAX),
    });
    core.bus.publish_sticky(Event::BackendSelected {
        kind: backend.kind(),
        devices: devices_info.iter().map(|d| d.name.clone()).collect(),
        reason,
    });
    let saver = match core.saves {
        Some(_) => {
            let core = Arc::clone(&core);
            Some(saver::spawn(move || {
                if let Some(queue) = &core.saves {
                    queue.run(|device| {
                        if let Some(tune) = core.tunes.get(device) {
                            queue.record(device, tune.path.as_deref(), tune.save());
                        }
                    });
                }
            })?)
        }
        None => None,
    };
    let engine = Engine {
        core: Arc::clone(&core),
        workers: Mutex::new(Vec::new()),
        saver: Mutex::new(saver),
    };
    // After `engine` exists, so that a failure below still stops the link thread.
    #[cfg(feature = "redis")]
    super::fleet_live::start(&core)?;
    for (device, slot) in core.devices.iter().enumerate() {
        for q in &slot.queues {
            let handle = supervisor::spawn(Arc::clone(&core), q.id)?;
            engine
                .workers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((device, handle));
        }
    }
    if let Some(timeout) = builder.dispatch_timeout {
        let workers = engine
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(_, handle)| handle.worker())
            .collect();
        supervisor::spawn_watchdog(&core, workers, timeout)?;
    }
    Ok(engine)
}

/// The directory autotune files go to for `backend`, if any.
fn autotune_dir(persistence: &Persistence, backend: BackendKind) -> Option<PathBuf> {
    match persistence {
        Persistence::Off => None,
        Persistence::Dir(d) => Some(d.clone()),
        Persistence::Default if is_test_backend(backend) => None,
        Persistence::Default => {
            let dir = default_autotune_dir();
            if dir.is_none() {
                tracing::warn!("no user cache directory; the autotune map is kept in memory only");
            }
            dir
        }
    }
}

/// Whether `kind` is the test backend (feature `test-util`), which keeps no autotune
/// file unless told to.
fn is_test_backend(kind: BackendKind) -> bool {
    #[cfg(any(test, feature = "test-util"))]
    return kind == BackendKind::Test;
    #[cfg(not(any(test, feature = "test-util")))]
    return {
        let _ = kind;
        false
    };
}

/// The default of [`EngineBuilder::max_searching`] for a device with `workers` workers:
/// half of them, at least [`DEFAULT_MAX_SEARCHING`].
fn auto_max_searching(workers: usize) -> usize {
    (workers / 2).max(DEFAULT_MAX_SEARCHING)
}

/// The default busy wait for an engine of `workers` workers: [`DEFAULT_BUSY_WAIT`]
/// where the machine has a hardware thread for each and one more, otherwise zero.
fn auto_busy_wait(workers: usize) -> Duration {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    if threads > workers.saturating_add(1) {
        DEFAULT_BUSY_WAIT
    } else {
        Duration::ZERO
    }
}

/// Loads `info`'s autotune store from `dir` (a missing file is an empty store; an
/// unusable one is logged and replaced by an empty store, never fatal).
fn open_autotune(info: &DeviceInfo, dir: Option<&std::path::Path>) -> DeviceTune {
    let identity = DeviceIdentity {
        device_uuid: info.device_uuid,
        driver_version: info.driver_version.clone(),
    };
    let adapter_id = info.adapter_id.clone();
    let Some(dir) = dir else {
        return DeviceTune::new(AutotuneStore::new(identity), None, adapter_id, None);
    };
    let path = dir.join(identity.store_file_name());
    match AutotuneStore::load(&path, &identity, LoadMode::FreshOnError) {
        Ok((store, report)) => {
            tracing::info!(
                device = info.index,
                path = %path.display(),
                outcome = ?report.outcome,
                verdicts = report.verdicts,
                entries = report.entries,
                stale = report.stale,
                "autotune store opened"
            );
            DeviceTune::new(store, Some(path), adapter_id, Some(report))
        }
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "autotune file unusable; starting empty");
            DeviceTune::new(AutotuneStore::new(identity), Some(path), adapter_id, None)
        }
    }
}

/// Opens the backend `choice` asks for, with the reason for the choice (logged and
/// published once, as `Event::BackendSelected`, by `build`).
///
/// `Auto` tries Vulkan first (a loader and at least one device with a compute queue);
/// when that fails for any reason it opens the CPU backend and says why in the reason.
fn open_backend(choice: BackendChoice) -> Result<(Arc<dyn Backend>, String), EngineError> {
    match choice {
        BackendChoice::Cpu => Ok((open_cpu()?, "the CPU backend was asked for".to_string())),
        BackendChoice::Vulkan => {
            open_vulkan().map(|b| (b, "the Vulkan backend was asked for".to_string()))
        }
        BackendChoice::Auto => match open_vulkan() {
            Ok(b) => Ok((b, "auto: a Vulkan device was found".to_string())),
            Err(e) => {
                tracing::info!(error = %e, "auto: no Vulkan device; using the CPU backend");
                Ok((
                    open_cpu()?,
                    format!("auto: no Vulkan device ({e}); using the CPU backend"),
                ))
            }
        },
    }
}

fn open_cpu() -> Result<Arc<dyn Backend>, EngineError> {
    let cpu = crate::backend::cpu::CpuBackend::new().map_err(EngineError::NoBackend)?;
    Ok(Arc::new(cpu))
}

#[cfg(feature = "vulkan")]
fn open_vulkan() -> Result<Arc<dyn Backend>, EngineError> {
    let vk = crate::backend::vulkan::VulkanBackend::new().map_err(EngineError::NoBackend)?;
    Ok(Arc::new(vk))
}

#[cfg(not(feature = "vulkan"))]
fn open_vulkan() -> Result<Arc<dyn Backend>, EngineError> {
    Err(EngineError::BackendNotCompiled(BackendKind::Vulkan))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_a_devices_workers_search_and_at_least_four() {
        for (workers, searching) in [(1, 4), (4, 4), (9, 4), (10, 5), (16, 8), (24, 12)] {
            assert_eq!(auto_max_searching(workers), searching, "{workers} workers");
        }
    }

    #[test]
    fn busy_waits_only_with_a_hardware_thread_for_every_waiter() {
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        // A worker per hardware thread (the CPU backend) leaves none for the caller.
        assert_eq!(auto_busy_wait(threads), Duration::ZERO);
        assert_eq!(auto_busy_wait(threads - 1), Duration::ZERO);
        assert_eq!(auto_busy_wait(usize::MAX), Duration::ZERO);
        if threads >= 2 {
            assert_eq!(auto_busy_wait(threads - 2), DEFAULT_BUSY_WAIT);
        }
    }
}
