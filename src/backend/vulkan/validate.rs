//! SPIRV-Tools' validator in front of vulkano and the driver (SPEC §11).
//!
//! Every module a caller hands the Vulkan backend passes through here before vulkano
//! parses or reflects it and before a driver compiles it: first a header check (at
//! least SPIR-V's five header words, the magic number in the host's byte order), then
//! the validator the Vulkan ecosystem uses (`spirv-val`, built into this crate from
//! SPIRV-Tools' source by the `spirv-tools` crate), for the target environment of the
//! device's Vulkan version. vulkano's parser and reflection trust the ids and
//! operands of a module, and drivers trust far more: a malformed module that reached
//! them panicked inside vulkano or crashed lavapipe. A module refused here comes back
//! as the validator's message and never reaches either.
//!
//! This module only checks; it never builds a pipeline and holds no state (a validator
//! context is created per module: it is not `Send`, and creating one costs
//! microseconds next to the validation itself).

use std::collections::HashMap;
use std::sync::Arc;

use spirv_tools::val::{Validator, ValidatorOptions};
use spirv_tools::TargetEnv;
use vulkano::Version;

use crate::backend::BackendError;

/// SPIR-V's magic number, the first word of every module.
pub(super) const MAGIC: u32 = 0x0723_0203;

/// Words in a SPIR-V module's header: magic, version, generator, id bound, schema.
const HEADER_WORDS: usize = 5;

/// The SPIRV-Tools target environment for a device whose Vulkan version is `api` (as
/// the device was opened: the lower of what it supports and the instance's cap).
pub(super) fn target_env(api: Version) -> TargetEnv {
    if api >= Version::V1_4 {
        TargetEnv::Vulkan_1_4
    } else if api >= Version::V1_3 {
        TargetEnv::Vulkan_1_3
    } else if api >= Version::V1_2 {
        TargetEnv::Vulkan_1_2
    } else if api >= Version::V1_1 {
        TargetEnv::Vulkan_1_1
    } else {
        TargetEnv::Vulkan_1_0
    }
}

/// `spirv-val`'s name for `env`, as its `--target-env` option spells it.
pub(super) fn env_name(env: TargetEnv) -> &'static str {
    match env {
        TargetEnv::Vulkan_1_0 => "vulkan1.0",
        TargetEnv::Vulkan_1_1 => "vulkan1.1",
        TargetEnv::Vulkan_1_2 => "vulkan1.2",
        TargetEnv::Vulkan_1_3 => "vulkan1.3",
        TargetEnv::Vulkan_1_4 => "vulkan1.4",
        _ => "another environment",
    }
}

/// The module's header: long enough to hold one, and the magic number in the host's
/// byte order. Runs before anything else reads the module.
pub(super) fn check_header(words: &[u32]) -> Result<(), String> {
    if words.is_empty() {
        return Err("the module is empty".into());
    }
    if words[0] != MAGIC {
        return Err(if words[0].swap_bytes() == MAGIC {
            "the module's words are byte-swapped (a big-endian module); give them in the \
             host's byte order (`spirv_words_from_bytes` converts either order)"
                .into()
        } else {
            format!(
                "its first word is {:#010x}, not SPIR-V's magic number {MAGIC:#010x}: this \
                 is not a SPIR-V module",
                words[0]
            )
        });
    }
    if words.len() < HEADER_WORDS {
        return Err(format!(
            "the module is {} word(s), shorter than SPIR-V's {HEADER_WORDS}-word header",
            words.len()
        ));
    }
    Ok(())
}

/// Runs the header check and SPIRV-Tools' validator for a device of Vulkan version
/// `api` on `words`; `Err` is the reason a module is refused, saying what to do.
///
/// One Vulkan rule is relaxed: VUID-StandaloneSpirv-None-10684 (checked by SPIRV-Tools
/// since 2025) as it applies to `Workgroup` variables — no `ArrayStride`/`Offset` on
/// their types unless the module declares `WorkgroupMemoryExplicitLayoutKHR`. naga
/// (gfx-rs/wgpu#7696) and other compilers emit those decorations on every array type,
/// `var<workgroup>` arrays included (the built-in shaders have them), and drivers lay
/// out workgroup memory themselves. A module refused for exactly that is validated
/// again as if it declared the capability (and its extension, which needs SPIR-V 1.4:
/// the copy validated is made a 1.4 module, see [`with_workgroup_layout`]); that
/// allows those decorations, and the copy must pass every other rule. The driver gets
/// the module as given.
pub(super) fn validate(api: Version, words: &[u32]) -> Result<(), String> {
    check_header(words)?;
    match validate_as_is(api, words) {
        Err(e) if e.workgroup_layout_only() => match with_workgroup_layout(words) {
            // Vulkan 1.1 takes SPIR-V 1.4 through VK_KHR_spirv_1_4; the copy's version
            // is only for the validator.
            Some(relaxed) => {
                validate_as_is(api.max(Version::V1_2), &relaxed).map_err(Refusal::into_reason)
            }
            None => Err(e.into_reason()),
        },
        result => result.map_err(Refusal::into_reason),
    }
}

/// The validator's refusal: its VUID-carrying message, the instruction, the target.
struct Refusal {
    env: TargetEnv,
    message: String,
    instruction: String,
}

impl Refusal {
    /// True when the refusal is VUID-StandaloneSpirv-None-10684 on a `Workgroup`
    /// variable, the rule [`validate`] relaxes.
    fn workgroup_layout_only(&self) -> bool {
        self.message.contains("VUID-StandaloneSpirv-None-10684")
            && self.instruction.contains("OpVariable")
            && self.instruction.trim_end().ends_with("Workgroup")
    }

    fn into_reason(self) -> String {
        let mut reason = format!(
            "SPIRV-Tools' validator ({}) refused it: {}",
            env_name(self.env),
            self.message
        );
        if !self.instruction.is_empty() {
            reason.push_str(&format!(" (at `{}`)", self.instruction));
        }
        reason.push_str(&format!(
            "; fix the shader or its compiler's output (`spirv-val --target-env {}` on the \
             module gives the same verdict)",
            env_name(self.env)
        ));
        reason
    }
}

/// `words` as a module that may lay out workgroup memory explicitly: with
/// `OpCapability WorkgroupMemoryExplicitLayoutKHR` and its `OpExtension` after its last
/// `OpCapability`, and — as that extension needs SPIR-V 1.4 — at least version 1.4,
/// with every global variable in each entry point's interface (1.4's rule; 1.3 lists
/// only inputs and outputs). `None` where the module cannot be walked (a word count of
/// 0 or past the end, an entry point name without its nul) or has no capability.
fn with_workgroup_layout(words: &[u32]) -> Option<Vec<u32>> {
    const OP_CAPABILITY: u32 = 17;
    const OP_EXTENSION: u32 = 10;
    const OP_ENTRY_POINT: u32 = 15;
    const OP_VARIABLE: u32 = 59;
    const FUNCTION: u32 = 7;
    const WORKGROUP_MEMORY_EXPLICIT_LAYOUT: u32 = 4428;
    const EXTENSION: &[u8] = b"SPV_KHR_workgroup_memory_explicit_layout";
    const SPIRV_1_4: u32 = 0x0001_0400;

    let mut instructions = Vec::new();
    let mut at = HEADER_WORDS;
    while at < words.len() {
        let count = (words[at] >> 16) as usize;
        if count == 0 || at + count > words.len() {
            return None;
        }
        instructions.push(&words[at..at + count]);
        at += count;
    }
    let after_capabilities = instructions
        .iter()
        .rposition(|i| i[0] & 0xffff == OP_CAPABILITY)?;
    // Global variables: OpVariable (type, id, class) outside functions.
    let globals: Vec<u32> = instructions
        .iter()
        .filter(|i| i[0] & 0xffff == OP_VARIABLE && i.len() >= 4 && i[3] != FUNCTION)
        .map(|i| i[2])
        .collect();
    // The name, nul-terminated and padded to whole little-endian words.
    let mut name = EXTENSION.to_vec();
    name.resize((EXTENSION.len() / 4 + 1) * 4, 0);
    let name: Vec<u32> = name
        .chunks_exact(4)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .collect();

    let mut out = words[..HEADER_WORDS].to_vec();
    out[1] = out[1].max(SPIRV_1_4);
    for (n, inst) in instructions.iter().enumerate() {
        if inst[0] & 0xffff == OP_ENTRY_POINT {
            // Execution model, function, the name (up to the word holding its nul),
            // then the interface ids.
            let name_end = 3 + inst
                .get(3..)?
                .iter()
                .position(|w| w.to_le_bytes().contains(&0))?;
            let mut entry = inst[..=name_end].to_vec();
            let listed = &inst[name_end + 1..];
            entry.extend_from_slice(listed);
            entry.extend(globals.iter().filter(|g| !listed.contains(g)));
            entry[0] = (u32::try_from(entry.len()).ok()? << 16) | OP_ENTRY_POINT;
            out.extend_from_slice(&entry);
        } else {
            out.extend_from_slice(inst);
        }
        if n == after_capabilities {
            out.extend_from_slice(&[(2 << 16) | OP_CAPABILITY, WORKGROUP_MEMORY_EXPLICIT_LAYOUT]);
            out.push(((1 + name.len() as u32) << 16) | OP_EXTENSION);
            out.extend_from_slice(&name);
        }
    }
    Some(out)
}

/// SPIRV-Tools' validator for a device of Vulkan version `api` on `words`.
fn validate_as_is(api: Version, words: &[u32]) -> Result<(), Refusal> {
    let env = target_env(api);
    // Default options: none of the validator's `--relax-*` or `--before-hlsl-
    // legalization` leniencies (the driver gets no legalisation pass), and the block
    // layout rules of the device's Vulkan version; the device is opened without
    // `scalarBlockLayout` or `uniformBufferStandardLayout`, so no layout option widens
    // them.
    spirv_tools::val::create(Some(env))
        .validate(words, Some(ValidatorOptions::default()))
        .map_err(|e| match e.diagnostic {
            Some(d) => Refusal {
                env,
                message: d.message.trim().to_string(),
                instruction: d.notes.trim().to_string(),
            },
            None => Refusal {
                env,
                message: format!("{:?}", e.inner),
                instruction: String::new(),
            },
        })
}

/// Bytes of `Workgroup` memory the module's variables declare (every one, whichever
/// entry point uses it: an upper bound), from their types; `None` where a size cannot
/// be worked out (a type the walk does not know, a length that is no constant). Run on
/// a validated module: the validator does not know the device's
/// `maxComputeSharedMemorySize`, and a driver handed a workgroup array of 2^31
/// elements hangs or crashes compiling it.
pub(super) fn workgroup_bytes(words: &[u32]) -> Option<u64> {
    const OP_TYPE_BOOL: u32 = 20;
    const OP_TYPE_INT: u32 = 21;
    const OP_TYPE_FLOAT: u32 = 22;
    const OP_TYPE_VECTOR: u32 = 23;
    const OP_TYPE_MATRIX: u32 = 24;
    const OP_TYPE_ARRAY: u32 = 28;
    const OP_TYPE_STRUCT: u32 = 30;
    const OP_TYPE_POINTER: u32 = 32;
    const OP_CONSTANT: u32 = 43;
    const OP_VARIABLE: u32 = 59;
    const WORKGROUP: u32 = 4;

    let mut sizes: HashMap<u32, u64> = HashMap::new();
    let mut constants: HashMap<u32, u64> = HashMap::new();
    let mut pointees: HashMap<u32, u32> = HashMap::new();
    let mut total = 0u64;
    let mut at = HEADER_WORDS;
    while at < words.len() {
        let count = (words[at] >> 16) as usize;
        let ops = words.get(at + 1..at.checked_add(count)?)?;
        if count == 0 {
            return None;
        }
        match (words[at] & 0xffff, ops) {
            (OP_TYPE_BOOL, [id, ..]) => {
                sizes.insert(*id, 4);
            }
            (OP_TYPE_INT | OP_TYPE_FLOAT, [id, width, ..]) => {
                sizes.insert(*id, u64::from(*width / 8));
            }
            // A type that cannot be sized (a runtime array, a struct holding one) is
            // left out: only a workgroup variable of such a type fails the walk.
            (OP_TYPE_VECTOR | OP_TYPE_MATRIX, [id, element, n, ..]) => {
                if let Some(size) = sizes
                    .get(element)
                    .and_then(|s| s.checked_mul(u64::from(*n)))
                {
                    sizes.insert(*id, size);
                }
            }
            (OP_TYPE_ARRAY, [id, element, length, ..]) => {
                let size = sizes
                    .get(element)
                    .zip(constants.get(length))
                    .and_then(|(s, n)| s.checked_mul(*n));
                if let Some(size) = size {
                    sizes.insert(*id, size);
                }
            }
            (OP_TYPE_STRUCT, [id, members @ ..]) => {
                let size = members
                    .iter()
                    .try_fold(0u64, |sum, m| sum.checked_add(*sizes.get(m)?));
                if let Some(size) = size {
                    sizes.insert(*id, size);
                }
            }
            (OP_TYPE_POINTER, [id, _, pointee, ..]) => {
                pointees.insert(*id, *pointee);
            }
            (OP_CONSTANT, [_, id, low, rest @ ..]) => {
                let high = rest.first().copied().unwrap_or(0);
                constants.insert(*id, u64::from(*low) | (u64::from(high) << 32));
            }
            (OP_VARIABLE, [pointer, _, WORKGROUP, ..]) => {
                let size = sizes.get(pointees.get(pointer)?)?;
                total = total.checked_add(*size)?;
            }
            _ => {}
        }
        at += count;
    }
    Some(total)
}

/// SPIR-V as bytes (a `.spv` file, `include_bytes!`) as the words a
/// [`KernelVariant`](crate::backend::KernelVariant) takes. A module of either byte
/// order is accepted (SPIR-V files may be big-endian; the magic number tells); one whose
/// length is not a whole number of 4-byte words, or that does not start with the magic
/// number, is `InvalidSpirv` for `kernel`. The module's contents are validated when it
/// is loaded.
///
/// ```
/// use photofinish::backend::vulkan::spirv_words_from_bytes;
/// use photofinish::backend::BackendError;
///
/// let header = [0x0723_0203u32, 0x0001_0300, 0, 1, 0];
/// let little: Vec<u8> = header.iter().flat_map(|w| w.to_le_bytes()).collect();
/// let big: Vec<u8> = header.iter().flat_map(|w| w.to_be_bytes()).collect();
/// assert_eq!(&*spirv_words_from_bytes("k", &little)?, &header);
/// assert_eq!(&*spirv_words_from_bytes("k", &big)?, &header);
/// assert!(matches!(
///     spirv_words_from_bytes("k", &little[..7]),
///     Err(BackendError::InvalidSpirv { .. })
/// ));
/// # Ok::<(), BackendError>(())
/// ```
pub fn spirv_words_from_bytes(kernel: &str, bytes: &[u8]) -> Result<Arc<[u32]>, BackendError> {
    let invalid = |reason: String| BackendError::InvalidSpirv {
        kernel: kernel.to_string(),
        reason,
    };
    if bytes.len() % 4 != 0 {
        return Err(invalid(format!(
            "the module is {} bytes, not a whole number of 4-byte words (cut short?)",
            bytes.len()
        )));
    }
    let word = |w: &[u8]| [w[0], w[1], w[2], w[3]];
    let little = bytes
        .chunks_exact(4)
        .next()
        .map(|w| u32::from_le_bytes(word(w)));
    let decode: fn([u8; 4]) -> u32 = match little {
        Some(MAGIC) => u32::from_le_bytes,
        Some(m) if m.swap_bytes() == MAGIC => u32::from_be_bytes,
        Some(m) => {
            return Err(invalid(format!(
                "its first word is {m:#010x} (read little-endian), not SPIR-V's magic \
                 number {MAGIC:#010x} in either byte order: this is not a SPIR-V module"
            )))
        }
        None => return Err(invalid("the module is empty".into())),
    };
    Ok(bytes.chunks_exact(4).map(|w| decode(word(w))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal valid compute module (SPIR-V 1.0): `main`, local size 1, returning.
    fn minimal() -> Vec<u32> {
        // %1 = OpTypeVoid, %2 = OpTypeFunction %1, %3 = OpFunction %1 None %2,
        // %4 = OpLabel, OpReturn, OpFunctionEnd.
        let main = u32::from_le_bytes(*b"main");
        vec![
            MAGIC,
            0x0001_0000,
            0,
            5,
            0,
            (2 << 16) | 17, // OpCapability Shader
            1,
            (3 << 16) | 14, // OpMemoryModel Logical GLSL450
            0,
            1,
            (5 << 16) | 15, // OpEntryPoint GLCompute %3 "main"
            5,
            3,
            main,
            0,
            (6 << 16) | 16, // OpExecutionMode %3 LocalSize 1 1 1
            3,
            17,
            1,
            1,
            1,
            (2 << 16) | 19, // %1 = OpTypeVoid
            1,
            (3 << 16) | 33, // %2 = OpTypeFunction %1
            2,
            1,
            (5 << 16) | 54, // %3 = OpFunction %1 None %2
            1,
            3,
            0,
            2,
            (2 << 16) | 248, // %4 = OpLabel
            4,
            (1 << 16) | 253, // OpReturn
            (1 << 16) | 56,  // OpFunctionEnd
        ]
    }

    #[test]
    fn a_minimal_compute_module_validates_for_every_vulkan_version() {
        for api in [
            Version::V1_0,
            Version::V1_1,
            Version::V1_2,
            Version::V1_3,
            Version::V1_4,
        ] {
            validate(api, &minimal()).unwrap_or_else(|e| panic!("{api}: {e}"));
        }
    }

    #[test]
    fn the_target_env_follows_the_device_version() {
        assert_eq!(target_env(Version::V1_0), TargetEnv::Vulkan_1_0);
        assert_eq!(target_env(Version::V1_1), TargetEnv::Vulkan_1_1);
        assert_eq!(target_env(Version::V1_2), TargetEnv::Vulkan_1_2);
        assert_eq!(target_env(Version::V1_3), TargetEnv::Vulkan_1_3);
        assert_eq!(
            target_env(Version::major_minor(1, 3)),
            TargetEnv::Vulkan_1_3
        );
        assert_eq!(target_env(Version::V1_4), TargetEnv::Vulkan_1_4);
    }

    #[test]
    fn a_spirv_1_3_module_is_refused_for_vulkan_1_0() {
        let mut words = minimal();
        words[1] = 0x0001_0300;
        let e = validate(Version::V1_0, &words).expect_err("Vulkan 1.0 takes SPIR-V 1.0 only");
        assert!(e.contains("vulkan1.0"), "{e}");
        validate(Version::V1_1, &words).expect("Vulkan 1.1 takes SPIR-V 1.3");
    }

    #[test]
    fn headers_that_are_not_spirv_say_why() {
        assert!(check_header(&[]).unwrap_err().contains("empty"));
        let swapped: Vec<u32> = minimal().iter().map(|w| w.swap_bytes()).collect();
        assert!(check_header(&swapped).unwrap_err().contains("byte-swapped"));
        assert!(check_header(&[0xdead_beef, 1, 2, 3, 4])
            .unwrap_err()
            .contains("0xdeadbeef"));
        assert!(check_header(&[MAGIC, 0x0001_0000])
            .unwrap_err()
            .contains("header"));
    }

    #[test]
    fn the_workgroup_layout_relaxation_still_refuses_other_errors() {
        let histogram = crate::kernels::builtin()
            .iter()
            .flat_map(|w| w.variants())
            .find(|v| v.name == "histogram/workgroup-private")
            .and_then(|v| v.spirv)
            .expect("the built-in histogram has SPIR-V");
        assert!(validate_as_is(Version::V1_3, &histogram).is_err_and(|e| e.workgroup_layout_only()));
        validate(Version::V1_3, &histogram).expect("relaxed, it validates");
        // Its entry point's function id → the id bound (undefined): refused, and the
        // message is the real error, not the relaxed rule.
        let mut broken = histogram.to_vec();
        let entry = (HEADER_WORDS..broken.len())
            .find(|&i| broken[i] & 0xffff == 15)
            .expect("an OpEntryPoint");
        broken[entry + 2] = broken[3] + 7;
        let e = validate(Version::V1_3, &broken).expect_err("undefined entry point");
        assert!(!e.contains("10684"), "{e}");
    }

    #[test]
    fn workgroup_bytes_of_the_builtins_are_their_shared_arrays() {
        for v in crate::kernels::builtin().iter().flat_map(|w| w.variants()) {
            let words = v.spirv.expect("built-in SPIR-V");
            let bytes = workgroup_bytes(&words).expect("sized");
            eprintln!("{}: {bytes} bytes of workgroup memory", v.name);
            assert!(bytes <= 16 * 1024, "{}: {bytes}", v.name);
        }
        assert_eq!(workgroup_bytes(&minimal()), Some(0));
    }

    #[test]
    fn validator_messages_name_the_problem_and_the_instruction() {
        let mut words = minimal();
        // OpEntryPoint's function id → %1 (OpTypeVoid), which is not a function.
        words[12] = 1;
        let e = validate(Version::V1_3, &words).expect_err("entry point is no function");
        assert!(e.contains("SPIRV-Tools' validator (vulkan1.3)"), "{e}");
        assert!(e.contains("OpEntryPoint"), "{e}");
        assert!(e.contains("spirv-val --target-env vulkan1.3"), "{e}");
    }

    #[test]
    fn bytes_that_are_not_whole_words_or_lack_the_magic_are_invalid_spirv() {
        let bytes: Vec<u8> = minimal().iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(
            &*spirv_words_from_bytes("k", &bytes).expect("whole module"),
            &minimal()[..]
        );
        for cut in [1, 2, 3, 5, bytes.len() - 1] {
            let e = spirv_words_from_bytes("k", &bytes[..cut]).expect_err("not whole words");
            assert!(
                matches!(&e, BackendError::InvalidSpirv { reason, .. } if reason.contains("4-byte")),
                "{e}"
            );
        }
        assert!(matches!(
            spirv_words_from_bytes("k", &[]),
            Err(BackendError::InvalidSpirv { .. })
        ));
        let mut bad = bytes.clone();
        bad[0] ^= 0x10;
        let e = spirv_words_from_bytes("k", &bad).expect_err("bad magic");
        assert!(e.to_string().contains("magic"), "{e}");
    }

    /// The validator's cost on the built-in shaders: printed, and bounded so a
    /// regression to something per-module-expensive shows (one validation: 0.4–1.9 ms
    /// each on the loaded 2-core build machine; modules with workgroup arrays are
    /// validated twice, see `validate`).
    #[test]
    fn validating_the_builtin_shaders_takes_at_most_a_few_milliseconds_each() {
        let modules: Vec<(String, Arc<[u32]>)> = crate::kernels::builtin()
            .iter()
            .flat_map(|w| w.variants())
            .filter_map(|v| Some((v.name.clone(), v.spirv?)))
            .collect();
        assert!(modules.len() >= 6, "{} built-in modules", modules.len());
        let mut relaxed = 0;
        for (name, words) in &modules {
            validate(Version::V1_3, words).unwrap_or_else(|e| panic!("{name}: {e}"));
            if let Err(e) = validate_as_is(Version::V1_3, words) {
                assert!(e.workgroup_layout_only(), "{name}: {}", e.into_reason());
                relaxed += 1;
            }
        }
        // naga's `var<workgroup>` arrays carry ArrayStride: the reason for the one
        // relaxed rule (if naga stops emitting it, this count drops and the relaxation
        // can go).
        assert!(
            relaxed > 0,
            "no built-in needed the workgroup-layout relaxation"
        );
        const ROUNDS: u32 = 50;
        for (name, words) in &modules {
            let started = std::time::Instant::now();
            for _ in 0..ROUNDS {
                let _ = validate_as_is(Version::V1_3, words);
            }
            eprintln!(
                "validating {name} once as is: {:.1} µs",
                (started.elapsed() / ROUNDS).as_secs_f64() * 1e6
            );
        }
        for (name, words) in &modules {
            let started = std::time::Instant::now();
            for _ in 0..ROUNDS {
                validate(Version::V1_3, words).expect("validated above");
            }
            let each = started.elapsed() / ROUNDS;
            eprintln!(
                "validating {name} ({} words): {:.1} µs",
                words.len(),
                each.as_secs_f64() * 1e6
            );
            // Generous for a loaded 2-core machine running tests in parallel.
            assert!(
                each < std::time::Duration::from_millis(20),
                "{name}: {each:?}"
            );
        }
    }
}
