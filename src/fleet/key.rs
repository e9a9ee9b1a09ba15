//! The key of one fleet entry and its string form in Redis. Plain data: no I/O.

use std::fmt;

/// The layout version of fleet keys and values. It is part of every key
/// (`photofinish:v1:…`) and of the pub/sub channel, so hosts of another layout never read
/// or overwrite this one's entries.
pub const FLEET_SCHEMA_VERSION: u32 = 1;

/// The prefix every key of this schema starts with: `photofinish:v<schema>:`.
pub fn fleet_key_prefix() -> String {
    format!("photofinish:v{FLEET_SCHEMA_VERSION}:")
}

/// The pub/sub channel on which every write announces its key:
/// `photofinish:v<schema>:verdicts`. A channel is not a key, so it never shows in a
/// `SCAN` of the prefix.
pub fn fleet_channel() -> String {
    format!("photofinish:v{FLEET_SCHEMA_VERSION}:verdicts")
}

/// A device *model*, as hosts of a fleet share it: not the per-card UUID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceModel {
    /// The PCI (or Vulkan) vendor id.
    pub vendor_id: u32,
    /// The device id.
    pub device_id: u32,
    /// The device's name as the driver reports it.
    pub name: String,
}

/// Where one verdict lives in the fleet: the device model and driver it was measured
/// with, the kernel, the variant pair and the tuning key (SPEC §13).
///
/// The schema version is not a field: every key is written and read under
/// [`FLEET_SCHEMA_VERSION`]. Its string form ([`Display`](fmt::Display)) is
///
/// ```text
/// photofinish:v<schema>:<vendor>:<device>:<name>:<driver>:<shader>:<bindings>:<conservative>:<speculative>:<tuning>
/// ```
///
/// with `<vendor>` and `<device>` as 8 lowercase hex digits, `<name>` and `<driver>`
/// percent-encoded (every byte outside `A-Z a-z 0-9 . _ ~ -` becomes `%XX`, so neither
/// holds a `:`), and the five hashes as 16 lowercase hex digits. For example
/// `photofinish:v1:000010de:00002335:NVIDIA%20H200:570.86.15:…`.
///
/// The tuning key is identified by its hash alone; [`tuning_key_display`] is written
/// into the stored value (field `tuning_key`) for people reading Redis, and two keys
/// that differ only in it are one key.
///
/// [`tuning_key_display`]: FleetKey::tuning_key_display
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FleetKey {
    /// The device model.
    pub device: DeviceModel,
    /// The driver's name and version.
    pub driver_version: String,
    /// The kernel's shader hash (its conservative variant's `SpecCacheKey::shader_hash`).
    pub shader_hash: u64,
    /// The kernel's binding signature (`SpecCacheKey::binding_sig`).
    pub binding_sig: u64,
    /// The conservative variant's shader hash.
    pub conservative: u64,
    /// The speculative variant's shader hash.
    pub speculative: u64,
    /// The tuning key's hash (SPEC §8), opaque here.
    pub tuning_key: u64,
    /// The tuning key as it displays (e.g. `64KiB/app:7`); not part of the identity.
    pub tuning_key_display: String,
}

impl fmt::Display for FleetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "photofinish:v{FLEET_SCHEMA_VERSION}:{:08x}:{:08x}:{}:{}:{:016x}:{:016x}:{:016x}:{:016x}:{:016x}",
            self.device.vendor_id,
            self.device.device_id,
            PercentEncoded(&self.device.name),
            PercentEncoded(&self.driver_version),
            self.shader_hash,
            self.binding_sig,
            self.conservative,
            self.speculative,
            self.tuning_key,
        )
    }
}

/// Writes a string with every byte outside `A-Z a-z 0-9 . _ ~ -` as `%XX`.
struct PercentEncoded<'a>(&'a str);

impl fmt::Display for PercentEncoded<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0.as_bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-') {
                write!(f, "{}", char::from(b))?;
            } else {
                write!(f, "%{b:02X}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, driver: &str) -> FleetKey {
        FleetKey {
            device: DeviceModel {
                vendor_id: 0x10de,
                device_id: 0x2335,
                name: name.into(),
            },
            driver_version: driver.into(),
            shader_hash: 1,
            binding_sig: 2,
            conservative: 3,
            speculative: 4,
            tuning_key: 0xabc,
            tuning_key_display: "64KiB".into(),
        }
    }

    #[test]
    fn string_form_is_documented_layout() {
        assert_eq!(
            key("NVIDIA H200", "570.86.15").to_string(),
            "photofinish:v1:000010de:00002335:NVIDIA%20H200:570.86.15:\
             0000000000000001:0000000000000002:0000000000000003:0000000000000004:0000000000000abc"
        );
        assert!(key("x", "y").to_string().starts_with(&fleet_key_prefix()));
        assert_eq!(fleet_channel(), "photofinish:v1:verdicts");
    }

    #[test]
    fn names_with_colons_cannot_forge_another_key() {
        // Without escaping, these two would give one string.
        let a = key("a:b", "c");
        let b = key("a", "b:c");
        assert_ne!(a.to_string(), b.to_string());
        assert_eq!(a.to_string().matches(':').count(), 10);
        assert!(key("é%", "").to_string().contains(":%C3%A9%25::"));
    }

    #[test]
    fn display_string_is_not_identity() {
        let mut a = key("x", "y");
        let s = a.to_string();
        a.tuning_key_display = "other".into();
        assert_eq!(a.to_string(), s);
    }
}
