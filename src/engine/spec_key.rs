//! The autotune key of a variant ([`spec_cache_key`]): a hash of its code, entry point,
//! binding layout, push constants and workgroup size that stays the same across builds
//! and Rust versions, as the autotune file's keys must.

use crate::autotune::SpecCacheKey;
use crate::backend::{BindingAccess, KernelVariant};

/// 64-bit FNV-1a: a hash that stays the same across builds and Rust versions, as the
/// autotune file's keys must.
fn fnv1a(bytes: impl IntoIterator<Item = u8>, mut hash: u64) -> u64 {
    for b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// The autotune key of a variant: its SPIR-V (or, without SPIR-V, its name) and entry
/// point, its binding layout and push constants, its workgroup size. No
/// specialisation constants are used, so `spec_hash` is 0.
pub(crate) fn spec_cache_key(variant: &KernelVariant) -> SpecCacheKey {
    let code = match &variant.spirv {
        Some(words) => fnv1a(words.iter().flat_map(|w| w.to_le_bytes()), FNV_OFFSET),
        None => fnv1a(variant.name.bytes(), FNV_OFFSET),
    };
    let shader_hash = fnv1a(variant.entry_point.bytes(), code);
    let layout = variant.bindings.iter().flat_map(|b| {
        let access: u8 = match b.access {
            BindingAccess::Read => 0,
            BindingAccess::Write => 1,
            BindingAccess::ReadWrite => 2,
        };
        b.slot.to_le_bytes().into_iter().chain([access])
    });
    let binding_sig = fnv1a(
        layout.chain(variant.push_constant_bytes.to_le_bytes()),
        FNV_OFFSET,
    );
    SpecCacheKey {
        shader_hash,
        binding_sig,
        workgroup_size: variant.workgroup_size,
        spec_hash: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        assert_eq!(fnv1a(*b"", FNV_OFFSET), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(*b"a", FNV_OFFSET), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(*b"foobar", FNV_OFFSET), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn variants_of_a_workload_get_distinct_stable_keys() {
        for workload in crate::kernels::builtin() {
            let variants = workload.variants();
            let a = spec_cache_key(&variants[0]);
            let b = spec_cache_key(&variants[1]);
            assert_ne!(a, b, "{}", workload.name());
            assert_eq!(a, spec_cache_key(&workload.variants()[0]));
        }
    }
}
