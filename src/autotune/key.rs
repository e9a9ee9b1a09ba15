//! The keys and records of the autotune map, and the identity of the device they were
//! measured on. Plain data: no shared state, no I/O.
//!
//! Each key names one thing, from the smallest up:
//!
//! | key | names | |
//! |---|---|---|
//! | [`SpecCacheKey`] | one compiled shader variant (its `spec_hash` carries the tuning key and specialisation values) | SPEC §3 |
//! | [`AutotuneKey`] | a variant on one adapter: what a tuning record is stored under | SPEC §3 |
//! | [`SpeculativeVariantKeys`] | a conservative/speculative pair on one adapter, borrowed and `Copy` | SPEC §3 |
//! | [`VariantPairKey`] | the same pair owned: what a verdict is stored under (`From` the borrowed one, as `PathBuf` from `&Path`) | |
//!
//! Outside this module, `TuningKey` (the engine's: a kind of batch) and
//! `fleet::FleetKey` (the fleet store's key string: the pair and tuning key on a
//! device model and driver, SPEC §13) build on these; none of them converts into
//! another except the two pair forms.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// What identifies one compiled shader variant: the shader, its binding layout, its
/// workgroup size and its specialisation constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SpecCacheKey {
    /// Hash of the shader's SPIR-V (or source).
    pub shader_hash: u64,
    /// Hash of the binding layout (slots, access, types).
    pub binding_sig: u64,
    /// The workgroup size the variant was compiled for.
    pub workgroup_size: [u32; 3],
    /// Hash of the specialisation constants.
    pub spec_hash: u64,
}

/// The key of one autotune entry: a shader variant on one adapter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AutotuneKey {
    /// The shader variant.
    pub cache_key: SpecCacheKey,
    /// The adapter it was measured on (`DeviceInfo::adapter_id`).
    pub adapter_id: String,
}

impl AutotuneKey {
    /// The key of `cache_key` on the adapter `adapter_id`.
    pub fn new(cache_key: &SpecCacheKey, adapter_id: &str) -> Self {
        Self {
            cache_key: *cache_key,
            adapter_id: adapter_id.to_owned(),
        }
    }
}

impl fmt::Display for AutotuneKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = &self.cache_key;
        let [x, y, z] = k.workgroup_size;
        write!(
            f,
            "{}/{:016x}:{:016x}:{x}x{y}x{z}:{:016x}",
            self.adapter_id, k.shader_hash, k.binding_sig, k.spec_hash
        )
    }
}

/// The tuning a winning variant ran with.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AutotuneRecord {
    /// Workgroup size.
    pub workgroup_size: [u32; 3],
    /// Loop unroll factor.
    pub unroll: u32,
    /// Tile shape.
    pub tile: [u32; 3],
    /// When it was recorded, RFC 3339 UTC (see [`AutotuneRecord::timestamp_now`]).
    pub recorded_at: String,
}

impl AutotuneRecord {
    /// The current time as RFC 3339 UTC with second precision, e.g.
    /// `2025-03-01T12:00:00Z`, for [`AutotuneRecord::recorded_at`]. A clock set before
    /// 1970 reads as the epoch.
    pub fn timestamp_now() -> String {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        rfc3339_utc(secs)
    }
}

/// Formats seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian).
fn rfc3339_utc(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm, shifted so the
    // era starts on 0000-03-01 and every quantity stays unsigned).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

/// The device and driver a set of autotune entries was measured with. A driver change
/// makes entries measured under the old driver stale: kept, reported, never used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct DeviceIdentity {
    /// The device UUID (`DeviceInfo::device_uuid`; all zero for the CPU backend).
    pub device_uuid: [u8; 16],
    /// The driver's name and version (`DeviceInfo::driver_version`).
    pub driver_version: String,
}

impl DeviceIdentity {
    /// The UUID as 32 lowercase hex digits, as the store file writes it.
    pub fn uuid_hex(&self) -> String {
        self.device_uuid
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Parses 32 hex digits back into a UUID; `None` for anything else.
    pub fn parse_uuid_hex(hex: &str) -> Option<[u8; 16]> {
        let bytes = hex.as_bytes();
        if bytes.len() != 32 || !bytes.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let mut uuid = [0u8; 16];
        for (out, pair) in uuid.iter_mut().zip(bytes.chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).ok()?;
            *out = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(uuid)
    }

    /// A file name for this device's store, `autotune-<uuid>.json`, so that an engine
    /// with several devices keeps one file per device.
    pub fn store_file_name(&self) -> String {
        format!("autotune-{}.json", self.uuid_hex())
    }
}

impl fmt::Display for DeviceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "device {} (driver {:?})",
            self.uuid_hex(),
            self.driver_version
        )
    }
}

/// The keys of one conservative/speculative pair on one adapter. Borrows, and is `Copy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpeculativeVariantKeys<'a> {
    /// The conservative (known good) variant.
    pub conservative: &'a SpecCacheKey,
    /// The speculative variant.
    pub speculative: &'a SpecCacheKey,
    /// The adapter both run on.
    pub adapter_id: &'a str,
}

/// The owned form of [`SpeculativeVariantKeys`]: what a kernel verdict is stored under.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VariantPairKey {
    /// The conservative variant.
    pub conservative: SpecCacheKey,
    /// The speculative variant.
    pub speculative: SpecCacheKey,
    /// The adapter both run on.
    pub adapter_id: String,
}

impl From<SpeculativeVariantKeys<'_>> for VariantPairKey {
    fn from(keys: SpeculativeVariantKeys<'_>) -> Self {
        Self {
            conservative: *keys.conservative,
            speculative: *keys.speculative,
            adapter_id: keys.adapter_id.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_709_210_096), "2024-02-29T12:34:56Z");
        assert_eq!(rfc3339_utc(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn uuid_hex_round_trips_and_rejects_junk() {
        let id = DeviceIdentity {
            device_uuid: [0xab, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 0xff],
            driver_version: "x".into(),
        };
        let hex = id.uuid_hex();
        assert_eq!(hex, "ab0102030405060708090a0b0c0d0eff");
        assert_eq!(DeviceIdentity::parse_uuid_hex(&hex), Some(id.device_uuid));
        assert_eq!(DeviceIdentity::parse_uuid_hex("ab"), None);
        assert_eq!(DeviceIdentity::parse_uuid_hex(&"zz".repeat(16)), None);
        assert_eq!(DeviceIdentity::parse_uuid_hex(&"é".repeat(16)), None);
        assert_eq!(
            DeviceIdentity::parse_uuid_hex("+1+1+1+1+1+1+1+1+1+1+1+1+1+1+1+1"),
            None
        );
    }
}
