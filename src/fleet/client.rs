//! The [`Fleet`] client: the handle callers use (never any network I/O) and the one
//! background thread that does all of it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use redis::{RedisError, Script};

use crate::sync::{Arc, AtomicBool, AtomicU64, Mutex, MutexGuard, Ordering};

use super::conn::{self, Commands, Target};
use super::entry::{decode, encode, may_replace, FleetEntry};
use super::key::{fleet_channel, fleet_key_prefix, FleetKey};

/// What went wrong connecting to the fleet, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// The URL is not one the fleet understands.
    #[error("fleet URL {url:?} is not usable: {detail}; write redis://host:port/db, redis+cluster://host:port,host:port, or a comma-separated list of redis:// URLs for a cluster")]
    BadUrl {
        /// The URL, its password replaced by `***`.
        url: String,
        /// What the parser said.
        detail: String,
    },
    /// The server refused the credentials, or wants some.
    #[error("the fleet's Redis at {url} refused authentication ({detail}); put the user and password in the URL (redis://user:password@host:port/db) or check the server's ACL")]
    AuthFailed {
        /// The URL, its password replaced by `***`.
        url: String,
        /// What the server said.
        detail: String,
    },
    /// No server answered, and [`FleetConfig::require_available`] asked for one.
    #[error("the fleet's Redis at {url} did not answer ({detail}); start it or check the address, or leave FleetConfig::require_available off to run on and reconnect in the background")]
    Unreachable {
        /// The URL, its password replaced by `***`.
        url: String,
        /// The connection error.
        detail: String,
    },
    /// The fleet's thread could not be started.
    #[error(
        "could not start the fleet's thread: {detail}; the process may be out of threads or memory"
    )]
    Thread {
        /// The OS error.
        detail: String,
    },
}

/// A change of the fleet's reachability, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FleetStatus {
    /// Redis cannot be reached (or stopped answering): reads come from the last copy,
    /// writes are kept (up to [`FleetConfig::max_pending`]) until it is back.
    Unavailable {
        /// Why, in the client's words.
        reason: String,
    },
    /// Redis answers again: the copy was read afresh and the kept writes are being sent.
    Restored,
}

/// How a [`Fleet`] connects and how much it holds. `FleetConfig::default()` suits most
/// uses.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// How long one attempt to open a connection may take (default 1 s).
    pub connect_timeout: Duration,
    /// How long one command may take before the connection counts as lost and is
    /// reopened (default 5 s; a server busy longer than this is treated as down).
    pub command_timeout: Duration,
    /// How long [`Fleet::connect_with`] waits for the first contact and the first read of
    /// every entry before it returns a client still connecting (default 3 s).
    pub connect_wait: Duration,
    /// The first wait before reconnecting (default 50 ms); it doubles per failed try.
    pub backoff_initial: Duration,
    /// The longest wait between tries (default 5 s).
    pub backoff_max: Duration,
    /// Writes [`Fleet::publish`] can queue for the fleet thread (default 1 024); when it
    /// is full the oldest queued write is dropped and counted.
    pub queue_capacity: usize,
    /// Keys whose latest write the fleet thread keeps while Redis is down (default
    /// 4 096); past that a new key's write is dropped and counted.
    pub max_pending: usize,
    /// Fail [`Fleet::connect_with`] with [`FleetError::Unreachable`] instead of returning
    /// a client that connects in the background (default false).
    pub require_available: bool,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_secs(5),
            connect_wait: Duration::from_secs(3),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            queue_capacity: 1024,
            max_pending: 4096,
            require_available: false,
        }
    }
}

/// Counters of what the fleet client did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FleetStats {
    /// Entries written to Redis.
    pub written: u64,
    /// Writes Redis refused because the key holds a mismatch (sticky).
    pub refused_sticky: u64,
    /// Writes dropped: the oldest of a full queue, or a new key past
    /// [`FleetConfig::max_pending`] while Redis was down.
    pub dropped: u64,
    /// Writes accepted but not yet in Redis (queued or kept while down).
    pub outstanding: u64,
    /// Values under the prefix that were not ours (malformed or foreign): skipped, logged.
    pub skipped_values: u64,
    /// Keep-racing verdicts given to [`Fleet::publish`]: nothing to share, not sent.
    pub not_shared: u64,
}

/// How often the fleet thread looks at its queue while it waits for pub/sub messages.
const POLL: Duration = Duration::from_millis(20);

/// The write every host makes, atomically inside Redis: store the value unless the key
/// holds a mismatch rejection and this value is not one (sticky), then announce the key.
/// Returns 1 when stored, 0 when refused. A value there that is not JSON is ours to
/// replace (it is under our prefix, at our key).
const WRITE_SCRIPT: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur and ARGV[2] ~= 'mismatch' then
  local ok, v = pcall(cjson.decode, cur)
  if ok and type(v) == 'table' and v['reason'] == 'mismatch' then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[3], KEYS[1])
return 1
";

/// One write on its way to Redis.
#[derive(Debug, Clone)]
struct Write {
    key: String,
    entry: FleetEntry,
    json: String,
}

/// What the handle and the thread share. The mirror's lock is never held across any
/// network I/O: the thread builds what it writes there first.
#[derive(Debug, Default)]
struct Shared {
    mirror: Mutex<HashMap<String, FleetEntry>>,
    available: AtomicBool,
    written: AtomicU64,
    refused_sticky: AtomicU64,
    dropped: AtomicU64,
    outstanding: AtomicU64,
    skipped_values: AtomicU64,
    not_shared: AtomicU64,
    /// Moves on every change of the mirror (see `Fleet::generation`).
    generation: AtomicU64,
}

impl Shared {
    fn mirror(&self) -> MutexGuard<'_, HashMap<String, FleetEntry>> {
        // Every critical section is one map operation: a poisoned lock still guards a
        // consistent map.
        self.mirror.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts `entry` in the mirror unless a sticky mismatch is there; true when the
    /// mirror changed.
    fn offer(&self, key: &str, entry: FleetEntry) -> bool {
        let mut mirror = self.mirror();
        if may_replace(mirror.get(key), &entry) && mirror.get(key) != Some(&entry) {
            mirror.insert(key.to_owned(), entry);
            return true;
        }
        false
    }

    /// Counts a change of the mirror.
    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn skip(&self, key: &str, why: &str) {
        self.skipped_values.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            key,
            why,
            "fleet: skipped a value under photofinish's prefix that is not a photofinish verdict"
        );
    }
}

/// A client of the fleet's verdict store (see the module docs).
///
/// Every method returns at once: reads come from an in-memory copy, writes go to a
/// bounded queue, and one background thread (`photofinish-fleet`) does all the network
/// I/O. Dropping the client stops that thread; writes still queued are lost unless
/// [`Fleet::flush`] sent them first.
#[derive(Debug)]
pub struct Fleet {
    shared: Arc<Shared>,
    tx: Sender<Write>,
    /// A second receiver of the queue, so a full queue can drop its oldest write.
    oldest: Receiver<Write>,
    statuses: Receiver<FleetStatus>,
    url: String,
}

impl Fleet {
    /// Connects to the fleet at `url` with [`FleetConfig::default`].
    pub fn connect(url: &str) -> Result<Fleet, FleetError> {
        Self::connect_with(url, FleetConfig::default())
    }

    /// Connects to the fleet at `url`: starts the fleet thread and waits (at most
    /// [`FleetConfig::connect_wait`]) for its first contact and first read of every
    /// entry. A URL that does not parse is [`FleetError::BadUrl`]; credentials refused
    /// are [`FleetError::AuthFailed`]; a server that does not answer gives a client in
    /// the unavailable state that reconnects in the background (its first status is
    /// [`FleetStatus::Unavailable`]), or [`FleetError::Unreachable`] under
    /// [`FleetConfig::require_available`].
    pub fn connect_with(url: &str, config: FleetConfig) -> Result<Fleet, FleetError> {
        let target = conn::parse(url, config.connect_timeout, config.command_timeout)?;
        let shared = Arc::new(Shared::default());
        let (tx, rx) = bounded(config.queue_capacity.max(1));
        let (status_tx, statuses) = bounded(64);
        let (first_tx, first_rx) = bounded(1);
        let worker = Worker {
            target,
            config: config.clone(),
            shared: Arc::clone(&shared),
            rx: rx.clone(),
            status_tx,
            first: Some(first_tx),
            reported_down: false,
            pending: HashMap::new(),
            own: HashMap::new(),
            script: Script::new(WRITE_SCRIPT),
            prefix: fleet_key_prefix(),
            channel: fleet_channel(),
        };
        std::thread::Builder::new()
            .name("photofinish-fleet".into())
            .spawn(move || worker.run())
            .map_err(|e| FleetError::Thread {
                detail: e.to_string(),
            })?;
        let redacted = conn::redact(url);
        match first_rx.recv_timeout(config.connect_wait) {
            Ok(First::Auth(detail)) => {
                return Err(FleetError::AuthFailed {
                    url: redacted,
                    detail,
                })
            }
            Ok(First::Down(detail)) if config.require_available => {
                return Err(FleetError::Unreachable {
                    url: redacted,
                    detail,
                })
            }
            Err(_) if config.require_available => {
                return Err(FleetError::Unreachable {
                    url: redacted,
                    detail: format!("no answer within {:?}", config.connect_wait),
                })
            }
            _ => {}
        }
        Ok(Fleet {
            shared,
            tx,
            oldest: rx,
            statuses,
            url: redacted,
        })
    }

    /// The entry under `key` in the local copy, clamped; `None` when the fleet has none
    /// (or this client has not read it yet). Never waits on Redis.
    pub fn get(&self, key: &FleetKey) -> Option<FleetEntry> {
        self.shared.mirror().get(&key.to_string()).cloned()
    }

    /// Every entry of the local copy, by key string.
    pub fn entries(&self) -> Vec<(String, FleetEntry)> {
        let mirror = self.shared.mirror();
        mirror.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Shares `entry` under `key`: it is in the local copy at once (unless the key holds
    /// a mismatch and `entry` is not one) and queued for the fleet thread, which writes
    /// it under the sticky-mismatch rule and announces it. Never blocks: when the queue
    /// is full its oldest write is dropped ([`FleetStats::dropped`]). A keep-racing
    /// verdict is not shared ([`FleetStats::not_shared`]).
    pub fn publish(&self, key: &FleetKey, entry: FleetEntry) {
        let Some(json) = encode(&entry, &key.tuning_key_display) else {
            self.shared.not_shared.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let key = key.to_string();
        let entry = entry.clamped();
        // This client's own write: not a change `generation` counts.
        self.shared.offer(&key, entry.clone());
        self.shared.outstanding.fetch_add(1, Ordering::AcqRel);
        let mut write = Write { key, entry, json };
        loop {
            match self.tx.try_send(write) {
                Ok(()) => return,
                Err(TrySendError::Full(back)) => {
                    write = back;
                    if self.oldest.try_recv().is_ok() {
                        self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                        self.shared.outstanding.fetch_sub(1, Ordering::AcqRel);
                    }
                }
                Err(TrySendError::Disconnected(_)) => {
                    // The thread is gone (it only stops with this handle): count it.
                    self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                    self.shared.outstanding.fetch_sub(1, Ordering::AcqRel);
                    return;
                }
            }
        }
    }

    /// True while the fleet thread is connected and has read every entry.
    pub fn is_available(&self) -> bool {
        self.shared.available.load(Ordering::Acquire)
    }

    /// The reachability changes, in order: [`FleetStatus::Unavailable`] when Redis goes
    /// (or is not there at connect), [`FleetStatus::Restored`] when it is back. The
    /// channel holds 64; a change that finds it full is dropped (the state is always
    /// [`Fleet::is_available`]). Clones share one stream: each change goes to one reader.
    pub fn statuses(&self) -> Receiver<FleetStatus> {
        self.statuses.clone()
    }

    /// A count that moves whenever the local copy takes a change from Redis (the copy
    /// read at connect or after a reconnect, an entry read after a live announcement
    /// that differs from the copy's) — not for this client's own writes. Poll it to
    /// learn that other hosts changed something without reading every entry; never
    /// waits on Redis.
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    /// Counters of what the client did.
    pub fn stats(&self) -> FleetStats {
        let s = &self.shared;
        FleetStats {
            written: s.written.load(Ordering::Relaxed),
            refused_sticky: s.refused_sticky.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            outstanding: s.outstanding.load(Ordering::Acquire),
            skipped_values: s.skipped_values.load(Ordering::Relaxed),
            not_shared: s.not_shared.load(Ordering::Relaxed),
        }
    }

    /// Waits up to `timeout` until every accepted write is in Redis (or refused there,
    /// and what Redis kept instead is in the local copy);
    /// true when none is outstanding. For shutdown and tests: it blocks its caller, so a
    /// worker never calls it.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.shared.outstanding.load(Ordering::Acquire) == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The URL, its password replaced by `***`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// The first contact's outcome, for `connect_with`.
enum First {
    Ready,
    Auth(String),
    Down(String),
}

/// Why a connected spell ended.
enum Ended {
    Stop,
    Lost(RedisError),
}

/// The fleet thread's state.
struct Worker {
    target: Target,
    config: FleetConfig,
    shared: Arc<Shared>,
    rx: Receiver<Write>,
    status_tx: Sender<FleetStatus>,
    first: Option<Sender<First>>,
    reported_down: bool,
    /// The latest write per key not yet in Redis (coalesced: last writer wins, a
    /// mismatch is kept).
    pending: HashMap<String, Write>,
    /// The latest write per key this client made, to write again when a restarted
    /// Redis has lost it (bounded by `max_pending`).
    own: HashMap<String, Write>,
    script: Script,
    prefix: String,
    channel: String,
}

impl Worker {
    fn run(mut self) {
        let mut backoff = self.config.backoff_initial;
        loop {
            match self
                .target
                .open(self.config.connect_timeout, self.config.command_timeout)
            {
                Ok((mut commands, mut sub)) => {
                    backoff = self.config.backoff_initial;
                    match self.connected(&mut commands, &mut sub) {
                        Ended::Stop => return,
                        Ended::Lost(e) => self.went_down(&e),
                    }
                }
                Err(e) => {
                    if conn::is_auth_error(&e) {
                        if let Some(first) = self.first.take() {
                            let _ = first.send(First::Auth(e.to_string()));
                            return;
                        }
                    }
                    self.went_down(&e);
                }
            }
            if !self.wait_draining(backoff) {
                return;
            }
            backoff = (backoff * 2).min(self.config.backoff_max);
        }
    }

    /// Marks the fleet unavailable and says so, once per outage.
    fn went_down(&mut self, e: &RedisError) {
        self.shared.available.store(false, Ordering::Release);
        if let Some(first) = self.first.take() {
            let _ = first.send(First::Down(e.to_string()));
        }
        if !self.reported_down {
            self.reported_down = true;
            tracing::warn!(error = %e, "fleet: Redis unavailable; verdicts are kept locally and sent when it is back");
            let _ = self.status_tx.try_send(FleetStatus::Unavailable {
                reason: e.to_string(),
            });
        }
    }

    /// Waits `dur`, moving queued writes into `pending` meanwhile; false when the
    /// handle is gone.
    fn wait_draining(&mut self, dur: Duration) -> bool {
        let deadline = Instant::now() + dur;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            match self.rx.recv_timeout(left) {
                Ok(w) => self.keep(w),
                Err(RecvTimeoutError::Timeout) => return true,
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
    }

    /// Moves every queued write into `pending`; false when the handle is gone.
    fn drain(&mut self) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(w) => self.keep(w),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }

    /// Keeps `w` as its key's pending write: it replaces the one there (which no longer
    /// counts as outstanding) unless that one is a mismatch and `w` is not.
    fn keep(&mut self, w: Write) {
        let outstanding = &self.shared.outstanding;
        match self.pending.get(&w.key) {
            Some(old) if !may_replace(Some(&old.entry), &w.entry) => {
                outstanding.fetch_sub(1, Ordering::AcqRel);
            }
            Some(_) => {
                outstanding.fetch_sub(1, Ordering::AcqRel);
                self.pending.insert(w.key.clone(), w);
            }
            None if self.pending.len() >= self.config.max_pending => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                outstanding.fetch_sub(1, Ordering::AcqRel);
            }
            None => {
                self.pending.insert(w.key.clone(), w);
            }
        }
    }

    /// One connected spell: subscribe, read every entry, then write and listen until
    /// the connection fails or the handle is dropped.
    fn connected(&mut self, commands: &mut Commands, sub: &mut redis::Connection) -> Ended {
        let mut pubsub = sub.as_pubsub();
        // Subscribe before the scan, so no write between the two is missed.
        if let Err(e) = pubsub.subscribe(&self.channel) {
            return Ended::Lost(e);
        }
        if let Err(e) = pubsub.set_read_timeout(Some(POLL)) {
            return Ended::Lost(e);
        }
        if let Err(e) = self.reload(commands) {
            return Ended::Lost(e);
        }
        self.shared.available.store(true, Ordering::Release);
        if let Some(first) = self.first.take() {
            let _ = first.send(First::Ready);
        }
        if std::mem::take(&mut self.reported_down) {
            tracing::info!("fleet: Redis restored");
            let _ = self.status_tx.try_send(FleetStatus::Restored);
        }
        loop {
            if !self.drain() {
                return Ended::Stop;
            }
            if let Err(e) = self.flush_pending(commands) {
                return Ended::Lost(e);
            }
            match pubsub.get_message() {
                Ok(msg) => {
                    if msg.get_channel_name() != self.channel {
                        continue;
                    }
                    let key = String::from_utf8_lossy(msg.get_payload_bytes()).into_owned();
                    if !key.starts_with(&self.prefix) {
                        continue;
                    }
                    if let Err(e) = self.refresh(commands, &key) {
                        return Ended::Lost(e);
                    }
                }
                Err(e) if e.is_timeout() => {}
                Err(e) => return Ended::Lost(e),
            }
        }
    }

    /// Reads every entry under the prefix and makes the mirror that copy, keeping what
    /// this client has not sent yet and every mismatch it knew; queues again its own
    /// writes that Redis lost (a restart without persistence).
    fn reload(&mut self, commands: &mut Commands) -> Result<(), RedisError> {
        let keys = commands.scan_prefix(&self.prefix)?;
        let mut fresh = HashMap::with_capacity(keys.len());
        for key in keys {
            match read_value(commands, &key)? {
                Ok(Some(entry)) => {
                    fresh.insert(key, entry);
                }
                Err(why) => self.shared.skip(&key, &why),
                Ok(None) => {}
            }
        }
        let lost: Vec<Write> = self
            .own
            .values()
            .filter(|w| !fresh.contains_key(&w.key) && !self.pending.contains_key(&w.key))
            .cloned()
            .collect();
        for w in lost {
            self.shared.outstanding.fetch_add(1, Ordering::AcqRel);
            self.keep(w);
        }
        let mut mirror = self.shared.mirror();
        for (key, entry) in mirror.drain() {
            if entry.is_mismatch() && may_replace(fresh.get(&key), &entry) {
                fresh.insert(key, entry);
            }
        }
        for w in self.pending.values() {
            if may_replace(fresh.get(&w.key), &w.entry) {
                fresh.insert(w.key.clone(), w.entry.clone());
            }
        }
        *mirror = fresh;
        drop(mirror);
        self.shared.changed();
        Ok(())
    }

    /// Sends every pending write; one that fails stays pending.
    fn flush_pending(&mut self, commands: &mut Commands) -> Result<(), RedisError> {
        let keys: Vec<String> = self.pending.keys().cloned().collect();
        for key in keys {
            let Some(w) = self.pending.get(&key) else {
                continue;
            };
            let reason = if w.entry.is_mismatch() {
                "mismatch"
            } else {
                "measured"
            };
            let stored: i64 = self
                .script
                .key(&w.key)
                .arg(&w.json)
                .arg(reason)
                .arg(&self.channel)
                .invoke(commands.con())?;
            let Some(w) = self.pending.remove(&key) else {
                continue;
            };
            // The write stops counting as outstanding only once its whole effect is in
            // place — for a refused one, the mismatch re-read into the mirror — so a
            // `flush` that returned sees what Redis kept.
            let done = if stored == 1 {
                self.shared.written.fetch_add(1, Ordering::Relaxed);
                if self.own.len() < self.config.max_pending || self.own.contains_key(&key) {
                    self.own.insert(key, w);
                }
                Ok(())
            } else {
                self.shared.refused_sticky.fetch_add(1, Ordering::Relaxed);
                self.refresh(commands, &key)
            };
            self.shared.outstanding.fetch_sub(1, Ordering::AcqRel);
            done?;
        }
        Ok(())
    }

    /// Reads `key` again and puts what Redis holds in the mirror.
    fn refresh(&mut self, commands: &mut Commands, key: &str) -> Result<(), RedisError> {
        match read_value(commands, key)? {
            Ok(Some(entry)) => {
                if self.shared.offer(key, entry) {
                    self.shared.changed();
                }
            }
            Err(why) => self.shared.skip(key, &why),
            Ok(None) => {
                // Deleted (by an operator): forget it, unless a mismatch or a write
                // of ours not sent yet.
                let mut mirror = self.shared.mirror();
                if mirror.get(key).is_some_and(|e| !e.is_mismatch())
                    && !self.pending.contains_key(key)
                {
                    mirror.remove(key);
                    drop(mirror);
                    self.shared.changed();
                }
            }
        }
        Ok(())
    }
}

/// `GET key`, decoded: `Ok(Ok(None))` when there is none, `Ok(Err(why))` when what is
/// there is not one of ours (not JSON of our layout, or not a string at all:
/// `WRONGTYPE`), `Err` when the connection failed.
fn read_value(
    commands: &mut Commands,
    key: &str,
) -> Result<Result<Option<FleetEntry>, String>, RedisError> {
    match redis::cmd("GET")
        .arg(key)
        .query::<Option<Vec<u8>>>(commands.con())
    {
        Ok(None) => Ok(Ok(None)),
        Ok(Some(bytes)) => Ok(decode(&bytes).map(Some)),
        Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => Err(e),
        Err(e) if e.code().is_some() => Ok(Err(e.to_string())),
        Err(e) => Err(e),
    }
}
