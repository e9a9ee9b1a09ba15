//! Specialisation constants a kernel variant declares ([`Specialization`], SPEC §12):
//! the SPIR-V constants whose values a pipeline is compiled with (a workgroup size, an
//! unroll factor, items per invocation), the candidate values of each, and how a tuning
//! key picks among them. It owns the declaration and the pick only: the engine loads a
//! pipeline per set of values (`registry.rs`), trace-JIT compiles the one a predicted
//! key needs ahead of it (`trace_jit.rs`), and the store's `spec_hash` names the values
//! (`keys.rs`). It never loads anything itself.

use std::fmt;
use std::sync::Arc;

use crate::backend::KernelVariant;

use super::error::EngineError;
use super::tuning::TuningKey;

/// One specialisation constant: its SPIR-V id (`layout(constant_id = …)`, WGSL
/// `@id(…)`), a name for events and logs, and the values a key may pick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecConstant {
    /// The `SpecId` the SPIR-V module decorates the constant with.
    pub id: u32,
    /// A name for events and logs (e.g. `"unroll"`).
    pub name: String,
    /// The values a tuning key may pick, in order; never empty.
    pub candidates: Vec<u32>,
}

/// Picks, for a tuning key, one candidate index per constant (in declaration order).
type Chooser = dyn Fn(&TuningKey) -> Vec<usize> + Send + Sync;

/// The specialisation constants of one kernel variant and how each tuning key picks
/// their values. Each distinct set of values is its own pipeline, compiled when a
/// batch first needs it — or ahead of it, in the background, when trace-JIT predicts
/// the key that needs it (SPEC §12).
///
/// Without [`choose_by`](Specialization::choose_by), a key of size class `4 KiB × 2^i`
/// takes candidate `i` of every constant (the last one from then on): bigger batches,
/// later candidates.
///
/// ```
/// use photofinish::{Specialization, TuningKey};
///
/// let spec = Specialization::new()
///     .constant(0, "unroll", &[1, 2, 4])
///     .constant(1, "items", &[1, 8]);
/// assert_eq!(spec.values_for(&TuningKey::for_bytes(4096, None)), vec![(0, 1), (1, 1)]);
/// assert_eq!(spec.values_for(&TuningKey::for_bytes(8192, None)), vec![(0, 2), (1, 8)]);
/// assert_eq!(spec.values_for(&TuningKey::for_bytes(1 << 20, None)), vec![(0, 4), (1, 8)]);
/// // An application's own pick: by its application key.
/// let by_app = spec.choose_by(|key| vec![key.app_key().unwrap_or(0) as usize, 0]);
/// assert_eq!(by_app.values_for(&TuningKey::for_bytes(64, Some(1))), vec![(0, 2), (1, 1)]);
/// ```
#[derive(Clone, Default)]
pub struct Specialization {
    constants: Vec<SpecConstant>,
    chooser: Option<Arc<Chooser>>,
}

impl fmt::Debug for Specialization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Specialization")
            .field("constants", &self.constants)
            .field("chooser", &self.chooser.is_some())
            .finish()
    }
}

impl Specialization {
    /// No constants yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same, with constant `id` (its SPIR-V `SpecId`), called `name`, taking one
    /// of `candidates`.
    pub fn constant(mut self, id: u32, name: impl Into<String>, candidates: &[u32]) -> Self {
        self.constants.push(SpecConstant {
            id,
            name: name.into(),
            candidates: candidates.to_vec(),
        });
        self
    }

    /// The same, with `choose` picking each key's candidates: it returns one candidate
    /// index per constant, in declaration order (an index past the end takes the last
    /// candidate; a missing one the first).
    pub fn choose_by(
        self,
        choose: impl Fn(&TuningKey) -> Vec<usize> + Send + Sync + 'static,
    ) -> Self {
        Specialization {
            chooser: Some(Arc::new(choose)),
            ..self
        }
    }

    /// The declared constants.
    pub fn constants(&self) -> &[SpecConstant] {
        &self.constants
    }

    /// The values `key` picks: (constant id, value), in declaration order.
    pub fn values_for(&self, key: &TuningKey) -> Vec<(u32, u32)> {
        let picks = match &self.chooser {
            Some(choose) => choose(key),
            None => {
                let step = key
                    .size_class_bytes()
                    .trailing_zeros()
                    .saturating_sub(super::tuning::MIN_SIZE_CLASS_BYTES.trailing_zeros())
                    as usize;
                vec![step; self.constants.len()]
            }
        };
        self.constants
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pick = picks.get(i).copied().unwrap_or(0);
                let last = c.candidates.len().saturating_sub(1);
                (c.id, c.candidates.get(pick.min(last)).copied().unwrap_or(0))
            })
            .collect()
    }

    /// Checks the declaration against `variant`: at least one constant, each with a
    /// candidate, no id twice, and — where the variant has SPIR-V — every id one its
    /// module declares.
    pub(crate) fn check(&self, kernel: &str, variant: &KernelVariant) -> Result<(), EngineError> {
        let invalid = |reason: String, fix: &'static str| EngineError::InvalidKernel {
            kernel: kernel.to_string(),
            reason,
            fix,
        };
        if self.constants.is_empty() {
            return Err(invalid(
                format!("variant `{}` declares a specialisation with no constant", variant.name),
                "add a constant with `Specialization::constant`, or register the variant without a specialisation",
            ));
        }
        let declared = variant.specialisation_constant_ids();
        for (i, c) in self.constants.iter().enumerate() {
            if c.candidates.is_empty() {
                return Err(invalid(
                    format!(
                        "specialisation constant {} (`{}`) of variant `{}` has no candidate value",
                        c.id, c.name, variant.name
                    ),
                    "give each constant at least one candidate value",
                ));
            }
            if self.constants[..i].iter().any(|o| o.id == c.id) {
                return Err(invalid(
                    format!(
                        "specialisation constant {} of variant `{}` is declared twice",
                        c.id, variant.name
                    ),
                    "declare each constant id once",
                ));
            }
            if variant.spirv.is_some() && !declared.contains(&c.id) {
                return Err(invalid(
                    format!(
                        "variant `{}` declares specialisation constant {} (`{}`), which its SPIR-V does not have (it has {declared:?})",
                        variant.name, c.id, c.name
                    ),
                    "use the ids of the shader's `layout(constant_id = …)` / `@id(…)` constants",
                ));
            }
        }
        Ok(())
    }
}

/// The 64-bit name of a set of values, folded into a tuning key's `spec_hash`
/// (FNV-1a over the key's hash and each (id, value), stable across builds); the key's
/// own hash when there are none. Never 0.
pub(crate) fn spec_hash(key_hash: u64, values: &[(u32, u32)]) -> u64 {
    if values.is_empty() {
        return key_hash;
    }
    let bytes = key_hash.to_le_bytes().into_iter().chain(
        values
            .iter()
            .flat_map(|&(id, v)| id.to_le_bytes().into_iter().chain(v.to_le_bytes())),
    );
    let hash = bytes.fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    hash.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BindingAccess;

    #[test]
    fn an_id_the_spirv_lacks_is_refused_and_one_it_has_is_taken() {
        // A module header and one `OpDecorate %5 SpecId 3`.
        let words: Arc<[u32]> = Arc::from(vec![
            0x0723_0203,
            0x0001_0000,
            0,
            6,
            0,
            (4 << 16) | 71,
            5,
            1,
            3,
        ]);
        let layout = [BindingAccess::Read, BindingAccess::Write];
        let variant = KernelVariant::spirv("k/spec", words, [64, 1, 1], &layout, 0);
        assert_eq!(variant.specialisation_constant_ids(), vec![3]);
        let ok = Specialization::new().constant(3, "unroll", &[1, 4]);
        assert!(ok.check("k", &variant).is_ok());
        let wrong = Specialization::new().constant(7, "unroll", &[1, 4]);
        let Err(EngineError::InvalidKernel { reason, .. }) = wrong.check("k", &variant) else {
            panic!("an unknown id must be InvalidKernel");
        };
        assert!(
            reason.contains("constant 7") && reason.contains("[3]"),
            "{reason}"
        );
        let empty = Specialization::new().constant(3, "unroll", &[]);
        assert!(empty.check("k", &variant).is_err());
        let twice = ok.clone().constant(3, "again", &[2]);
        assert!(twice.check("k", &variant).is_err());
    }

    #[test]
    fn the_hash_names_the_values_and_keeps_the_key_without_them() {
        let key = TuningKey::for_bytes(1 << 16, None).hash64();
        assert_eq!(spec_hash(key, &[]), key);
        let a = spec_hash(key, &[(0, 64)]);
        let b = spec_hash(key, &[(0, 128)]);
        assert_ne!(a, b);
        assert_ne!(a, key);
        assert_eq!(a, spec_hash(key, &[(0, 64)]), "stable");
    }
}
