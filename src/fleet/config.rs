//! What a user of the fleet client configures and observes: [`FleetConfig`],
//! [`FleetStatus`], [`FleetStats`], and the typed [`FleetError`].

use std::time::Duration;

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
