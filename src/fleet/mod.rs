//! The fleet store (SPEC §13): verdicts shared between hosts through Redis, behind the
//! cargo feature `redis`. This layer stores and carries verdicts; it never decides one,
//! and it never makes a caller wait on the network.
//!
//! - `key`: [`FleetKey`] (device model, driver, kernel, variant pair, tuning key) and
//!   its string form under the prefix `photofinish:v<schema>:`.
//! - `entry`: [`FleetEntry`] (the verdict with its window, the host, the time), its JSON
//!   form, and the two rules every copy follows.
//! - `conn`: the URL forms and the connections (one server or a cluster).
//! - `client`: [`Fleet`], the handle, and the one thread that does all network I/O.
//!
//! # What is stored
//!
//! One Redis string per verdict. The key is [`FleetKey`]'s `Display`:
//!
//! ```text
//! photofinish:v1:<vendor>:<device>:<name>:<driver>:<shader>:<bindings>:<conservative>:<speculative>:<tuning>
//! ```
//!
//! (ids as 8 hex digits, name and driver percent-encoded, hashes as 16 hex digits). The
//! value is JSON:
//!
//! ```text
//! {"verdict":"adopted"|"rejected","reason":"measured"|"mismatch",
//!  "window":{"conservative_count":N,"conservative_mean_ns":N,
//!            "speculative_count":N,"speculative_mean_ns":N,"side_compile_ns":N},
//!  "host":"…","unix_time":N,"tuning_key":"64KiB"}
//! ```
//!
//! Every write is also announced by `PUBLISH photofinish:v1:verdicts <key>`.
//!
//! # Reading, writing, consistency
//!
//! [`Fleet::connect`] subscribes to the channel, reads every key under the prefix
//! (`SCAN`, then `GET` each) into an in-memory copy, and keeps the copy live: on each
//! announcement it reads that key again. [`Fleet::get`] reads the copy only.
//! [`Fleet::publish`] puts the entry in the copy at once and queues it for the fleet
//! thread (a bounded queue; when full, the oldest queued write is dropped and counted
//! in [`FleetStats::dropped`]). [`Fleet::generation`] moves whenever the copy takes a
//! change from Redis, so a reader (the engine's fleet link) learns of other hosts'
//! changes without reading every entry.
//!
//! The last writer wins, with one exception: **a mismatch is sticky**. A key whose entry
//! is a rejection for a mismatch (`"reason":"mismatch"`) is never overwritten by
//! anything but another mismatch. Redis enforces it with a Lua script (`EVALSHA`: read
//! the key, refuse unless allowed, `SET`, `PUBLISH`, atomically), so two hosts racing
//! cannot undo a mismatch; the local copy and the writes kept while Redis is down follow
//! the same rule.
//!
//! Counts read from the fleet are clamped to [`MAX_FLEET_WINDOW_COUNT`] per arm, so a
//! forged or saturated window can always be overturned by a host's own races. A value
//! under the prefix that is not one of ours (not JSON, unknown fields, an adopted
//! mismatch…) is skipped with a `tracing::warn` and counted
//! ([`FleetStats::skipped_values`]); nothing a server holds can make the client panic.
//! Fleet entries are priors (SPEC §11): the engine re-verifies them; nothing here trusts
//! them further.
//!
//! # Failure behaviour
//!
//! All network I/O happens on one thread, `photofinish-fleet`; no method of [`Fleet`]
//! ever waits on it (a Redis that is slow, e.g. under `DEBUG SLEEP`, slows only that
//! thread). Commands time out after [`FleetConfig::command_timeout`], after which the
//! connection is reopened.
//!
//! - A URL that does not parse is [`FleetError::BadUrl`]; refused credentials at connect
//!   are [`FleetError::AuthFailed`].
//! - Redis down at connect: the client is returned unavailable (its first status is
//!   [`FleetStatus::Unavailable`]) and connects in the background, or connect fails with
//!   [`FleetError::Unreachable`] under [`FleetConfig::require_available`].
//! - Redis lost while running: [`FleetStatus::Unavailable`]; reads go on from the copy;
//!   writes are kept, the latest per key (at most [`FleetConfig::max_pending`] keys).
//!   The thread reconnects with exponential backoff (50 ms doubling to 5 s by default).
//!   When it is back: resubscribe, read every key again, send the kept writes, and
//!   [`FleetStatus::Restored`]. A restarted Redis that lost its data (no persistence)
//!   gets this client's own latest writes again.
//! - Dropping the client stops its thread; call [`Fleet::flush`] first to send what is
//!   queued.
//!
//! # URLs
//!
//! - `redis://[user:password@]host:port[/db]` (or `unix:///path/to/socket`): one server.
//! - `redis+cluster://[user:password@]host:port,[user:password@]host:port,…`, or several
//!   `redis://` URLs separated by commas: a Redis Cluster through the `redis` crate's
//!   cluster client. Keys spread over the cluster's slots; the scan runs on every
//!   primary (from `CLUSTER SLOTS`); the subscription is on the first seed node (a
//!   cluster relays `PUBLISH` to every node). Tested on a one-node cluster
//!   (`tests/fleet.rs`); a node must announce an address (`cluster-announce-ip`) for
//!   the scan to reach it.
//!
//! ```no_run
//! use photofinish::fleet::{DeviceModel, Fleet, FleetEntry, FleetKey};
//! # fn verdict() -> photofinish::autotune::VerdictRecord { unimplemented!() }
//! let fleet = Fleet::connect("redis://127.0.0.1:6379/0")?;
//! let key = FleetKey {
//!     device: DeviceModel { vendor_id: 0x10de, device_id: 0x2335, name: "NVIDIA H200".into() },
//!     driver_version: "570.86.15".into(),
//!     shader_hash: 1, binding_sig: 2, conservative: 1, speculative: 3,
//!     tuning_key: 7, tuning_key_display: "64KiB".into(),
//! };
//! fleet.publish(&key, FleetEntry::now(verdict()));
//! assert!(fleet.get(&key).is_some()); // at once, from the local copy
//! for status in fleet.statuses().try_iter() {
//!     println!("{status:?}");
//! }
//! # Ok::<(), photofinish::fleet::FleetError>(())
//! ```

mod client;
mod config;
mod conn;
mod entry;
mod key;
mod worker;

pub use client::Fleet;
pub use config::{FleetConfig, FleetError, FleetStats, FleetStatus};
pub use entry::{host_name, FleetEntry, MAX_FLEET_WINDOW_COUNT};
pub use key::{fleet_channel, fleet_key_prefix, DeviceModel, FleetKey, FLEET_SCHEMA_VERSION};
