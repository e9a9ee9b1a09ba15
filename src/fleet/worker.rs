//! The fleet client's one background thread (`photofinish-fleet`): all of its network
//! I/O — the connection, the pub/sub subscription, reloads, the write queue and its
//! script — and what it shares with the handle ([`Shared`]: the mirror and counters).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use redis::{RedisError, Script};

use crate::sync::{Arc, AtomicBool, AtomicU64, Mutex, MutexGuard, Ordering};

use super::config::{FleetConfig, FleetStatus};
use super::conn::{self, Commands, Target};
use super::entry::{decode, may_replace, FleetEntry};

/// How often the fleet thread looks at its queue while it waits for pub/sub messages.
const POLL: Duration = Duration::from_millis(20);

/// The write every host makes, atomically inside Redis: store the value unless the key
/// holds a mismatch rejection and this value is not one (sticky), then announce the key.
/// Returns 1 when stored, 0 when refused. A value there that is not JSON is ours to
/// replace (it is under our prefix, at our key).
pub(super) const WRITE_SCRIPT: &str = r"
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
pub(super) struct Write {
    pub(super) key: String,
    pub(super) entry: FleetEntry,
    pub(super) json: String,
}

/// What the handle and the thread share. The mirror's lock is never held across any
/// network I/O: the thread builds what it writes there first.
#[derive(Debug, Default)]
pub(super) struct Shared {
    pub(super) mirror: Mutex<HashMap<String, FleetEntry>>,
    pub(super) available: AtomicBool,
    pub(super) written: AtomicU64,
    pub(super) refused_sticky: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) outstanding: AtomicU64,
    pub(super) skipped_values: AtomicU64,
    pub(super) not_shared: AtomicU64,
    /// Moves on every change of the mirror (see `Fleet::generation`).
    pub(super) generation: AtomicU64,
}

impl Shared {
    pub(super) fn mirror(&self) -> MutexGuard<'_, HashMap<String, FleetEntry>> {
        // Every critical section is one map operation: a poisoned lock still guards a
        // consistent map.
        self.mirror.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts `entry` in the mirror unless a sticky mismatch is there; true when the
    /// mirror changed.
    pub(super) fn offer(&self, key: &str, entry: FleetEntry) -> bool {
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

/// The first contact's outcome, for `connect_with`.
pub(super) enum First {
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
pub(super) struct Worker {
    pub(super) target: Target,
    pub(super) config: FleetConfig,
    pub(super) shared: Arc<Shared>,
    pub(super) rx: Receiver<Write>,
    pub(super) status_tx: Sender<FleetStatus>,
    pub(super) first: Option<Sender<First>>,
    pub(super) reported_down: bool,
    /// The latest write per key not yet in Redis (coalesced: last writer wins, a
    /// mismatch is kept).
    pub(super) pending: HashMap<String, Write>,
    /// The latest write per key this client made, to write again when a restarted
    /// Redis has lost it (bounded by `max_pending`).
    pub(super) own: HashMap<String, Write>,
    pub(super) script: Script,
    pub(super) prefix: String,
    pub(super) channel: String,
}

impl Worker {
    pub(super) fn run(mut self) {
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
