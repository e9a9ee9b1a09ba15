//! Kernels from WGSL source (feature `wgsl`, on by default): naga parses and validates
//! the shader at run time, writes the entry point as SPIR-V, and reflects what a hand
//! declaration would otherwise say — the storage buffers the entry point uses (group 0,
//! by binding number) and how it uses each, its workgroup size and its push-constant
//! (WGSL `var<immediate>`) size. This module only translates; it never loads anything
//! on a device.

use std::fmt;
use std::sync::Arc;

use naga::valid::{Capabilities, GlobalUse, ValidationFlags, Validator};
use naga::{AddressSpace, ShaderStage};

use super::{BindingAccess, BindingDesc, KernelVariant, Scalar, ScalarKind};

/// Why a WGSL kernel could not become a [`KernelVariant`]. Each says where (line and
/// column in the source, where naga gives one) and what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShaderError {
    /// The source does not parse.
    #[error("kernel `{kernel}`: WGSL does not parse{}: {message}; fix the shader source", At(*.location))]
    Parse {
        /// The variant's name.
        kernel: String,
        /// naga's message, with the offending source line marked.
        message: String,
        /// 1-based (line, column) of the error, where naga gives one.
        location: Option<(u32, u32)>,
    },
    /// The source parses but naga's validator refuses it (types, uniformity, limits).
    #[error("kernel `{kernel}`: WGSL is invalid{}: {message}; fix the shader source", At(*.location))]
    Invalid {
        /// The variant's name.
        kernel: String,
        /// naga's message, with the offending source line marked.
        message: String,
        /// 1-based (line, column) of the error, where naga gives one.
        location: Option<(u32, u32)>,
    },
    /// No compute entry point of that name.
    #[error("kernel `{kernel}`: no `@compute` entry point `{entry}` (the shader has: {found:?}); name one of its compute entry points")]
    EntryPoint {
        /// The variant's name.
        kernel: String,
        /// The entry point asked for.
        entry: String,
        /// The compute entry points the shader has.
        found: Vec<String>,
    },
    /// The shader uses something a photofinish kernel cannot bind.
    #[error("kernel `{kernel}`: {reason}; photofinish binds storage buffers in group 0 and one `var<immediate>` block, with a literal workgroup size")]
    Layout {
        /// The variant's name.
        kernel: String,
        /// What it uses.
        reason: String,
    },
    /// naga cannot read or validate a SPIR-V module given to
    /// [`KernelVariant::from_spirv`].
    #[error("kernel `{kernel}`: the SPIR-V module cannot be reflected: {message}; declare its layout by hand with `KernelVariant::spirv`")]
    Spirv {
        /// The variant's name.
        kernel: String,
        /// naga's message.
        message: String,
    },
    /// naga could not write the shader as SPIR-V.
    #[error("kernel `{kernel}`: SPIR-V output failed: {message}; simplify the shader or write SPIR-V and use `KernelVariant::spirv`")]
    SpirvOutput {
        /// The variant's name.
        kernel: String,
        /// naga's message.
        message: String,
    },
}

/// Formats an optional location as " at line L, column C".
struct At(Option<(u32, u32)>);

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some((line, column)) => write!(f, " at line {line}, column {column}"),
            None => Ok(()),
        }
    }
}

/// The SPIR-V version written: 1.3, which Vulkan 1.1 and later load.
const SPIRV_VERSION: (u8, u8) = (1, 3);

pub(super) fn compile(
    name: String,
    source: &str,
    entry: &str,
) -> Result<KernelVariant, ShaderError> {
    let location =
        |loc: Option<naga::SourceLocation>| loc.map(|l| (l.line_number, l.line_position));
    let module = naga::front::wgsl::parse_str(source).map_err(|e| ShaderError::Parse {
        kernel: name.clone(),
        message: e.emit_to_string(source).trim_end().to_owned(),
        location: location(e.location(source)),
    })?;
    let info = Validator::new(
        ValidationFlags::all(),
        Capabilities::IMMEDIATES
            | Capabilities::STORAGE_BUFFER_BINDING_ARRAY
            | Capabilities::STORAGE_BUFFER_BINDING_ARRAY_NON_UNIFORM_INDEXING,
    )
    .validate(&module)
    .map_err(|e| ShaderError::Invalid {
        kernel: name.clone(),
        message: e.emit_to_string(source).trim_end().to_owned(),
        location: location(e.location(source)),
    })?;
    let layout = reflect(&name, &module, &info, entry)?;
    let options = naga::back::spv::Options {
        lang_version: SPIRV_VERSION,
        flags: naga::back::spv::WriterFlags::empty(),
        ..Default::default()
    };
    let pipeline = naga::back::spv::PipelineOptions {
        shader_stage: ShaderStage::Compute,
        entry_point: entry.to_owned(),
    };
    let words =
        naga::back::spv::write_vec(&module, &info, &options, Some(&pipeline)).map_err(|e| {
            ShaderError::SpirvOutput {
                kernel: name.clone(),
                message: e.to_string(),
            }
        })?;
    Ok(layout.into_variant(name, Arc::from(words), entry))
}

/// A SPIR-V module's layout reflected through naga's SPIR-V reader; the words are kept
/// as given. naga's reader is not hardened against every malformed module, so a panic
/// in it is caught and reported as the module being unreadable.
pub(super) fn reflect_spirv(
    name: String,
    words: Arc<[u32]>,
    entry: &str,
) -> Result<KernelVariant, ShaderError> {
    let unreadable = |message: String| ShaderError::Spirv {
        kernel: name.clone(),
        message,
    };
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let options = naga::front::spv::Options {
        adjust_coordinate_space: false,
        strict_capabilities: false,
        block_ctx_dump_prefix: None,
    };
    let parsed = std::panic::catch_unwind(|| naga::front::spv::parse_u8_slice(&bytes, &options))
        .map_err(|_| unreadable("naga's SPIR-V reader panicked on the module".into()))?;
    let module = parsed.map_err(|e| unreadable(e.to_string()))?;
    // Reflection needs naga's analysis of which globals the entry point uses, not its
    // verdict on the module (the driver's loader and SPIRV-Tools judge that): naga's
    // reader turns some valid modules into IR its own validator refuses, so the checks
    // are off here.
    let info = Validator::new(ValidationFlags::empty(), Capabilities::all())
        .validate(&module)
        .map_err(|e| unreadable(error_chain(e.as_inner())))?;
    let layout = reflect(&name, &module, &info, entry)?;
    Ok(layout.into_variant(name, words, entry))
}

/// An error and its sources, outermost first.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        source = inner.source();
    }
    message
}

/// What a kernel's entry point declares, read from naga's module.
struct Layout {
    workgroup_size: [u32; 3],
    bindings: Vec<BindingDesc>,
    push_constant_bytes: u32,
}

impl Layout {
    fn into_variant(self, name: String, words: Arc<[u32]>, entry: &str) -> KernelVariant {
        KernelVariant {
            name,
            spirv: Some(words),
            entry_point: entry.to_owned(),
            workgroup_size: self.workgroup_size,
            bindings: self.bindings,
            push_constant_bytes: self.push_constant_bytes,
            items_per_invocation: 1,
            cpu: None,
        }
    }
}

/// The bindings `entry` uses (group 0 storage buffers, by binding number, each with its
/// access and element scalar), its workgroup size and its push-constant size.
fn reflect(
    name: &str,
    module: &naga::Module,
    info: &naga::valid::ModuleInfo,
    entry: &str,
) -> Result<Layout, ShaderError> {
    let computes = || {
        module
            .entry_points
            .iter()
            .enumerate()
            .filter(|(_, ep)| ep.stage == ShaderStage::Compute)
    };
    let Some((index, entry_point)) = computes().find(|(_, ep)| ep.name == entry) else {
        return Err(ShaderError::EntryPoint {
            kernel: name.to_owned(),
            entry: entry.to_owned(),
            found: computes().map(|(_, ep)| ep.name.clone()).collect(),
        });
    };
    let layout = |reason: String| ShaderError::Layout {
        kernel: name.to_owned(),
        reason,
    };
    if entry_point.workgroup_size_overrides.is_some() {
        return Err(layout(
            "its workgroup size comes from override constants".into(),
        ));
    }
    let uses = info.get_entry_point(index);
    let mut bindings: Vec<BindingDesc> = Vec::new();
    let mut push_constant_bytes = 0;
    for (handle, var) in module.global_variables.iter() {
        let used = uses[handle];
        if used.is_empty() {
            continue;
        }
        let label = var.name.as_deref().unwrap_or("a global");
        match var.space {
            AddressSpace::Storage { .. } => {
                let Some(binding) = &var.binding else {
                    return Err(layout(format!("`{label}` has no @group/@binding")));
                };
                if binding.group != 0 {
                    return Err(layout(format!(
                        "`{label}` is in @group({}), not 0",
                        binding.group
                    )));
                }
                let access = access_of(used);
                // A descriptor array (`binding_array<array<T>, n>`): n buffers, one slot.
                let (count, element) = match &module.types[var.ty].inner {
                    naga::TypeInner::BindingArray { base, size } => {
                        let naga::ArraySize::Constant(n) = size else {
                            return Err(layout(format!(
                                "`{label}` is a descriptor array without a fixed length"
                            )));
                        };
                        if access.writes() {
                            return Err(layout(format!(
                                "`{label}` is a descriptor array the shader writes; descriptor arrays must be read-only"
                            )));
                        }
                        (n.get(), element_of(module, *base))
                    }
                    _ => (1, element_of(module, var.ty)),
                };
                bindings.extend((0..count).map(|index| BindingDesc {
                    slot: binding.binding,
                    access,
                    element,
                    index,
                }));
            }
            AddressSpace::Immediate => {
                push_constant_bytes = module.types[var.ty].inner.size(module.to_ctx());
            }
            AddressSpace::Uniform => {
                return Err(layout(format!(
                    "`{label}` is a uniform buffer (use `var<storage, read>` or `var<immediate>`)"
                )))
            }
            AddressSpace::Handle => {
                return Err(layout(format!("`{label}` is a texture or sampler")))
            }
            _ => {}
        }
    }
    bindings.sort_by_key(|b| (b.slot, b.index));
    Ok(Layout {
        workgroup_size: entry_point.workgroup_size,
        bindings,
        push_constant_bytes,
    })
}

/// The scalar a type is made of, through arrays, vectors, matrices and atomics; a
/// struct's when all its fields agree; `None` otherwise.
fn element_of(module: &naga::Module, ty: naga::Handle<naga::Type>) -> Option<Scalar> {
    use naga::TypeInner;
    let scalar = |s: naga::Scalar| {
        let kind = match s.kind {
            naga::ScalarKind::Float | naga::ScalarKind::AbstractFloat => ScalarKind::Float,
            naga::ScalarKind::Uint => ScalarKind::Uint,
            naga::ScalarKind::Sint | naga::ScalarKind::AbstractInt => ScalarKind::Sint,
            naga::ScalarKind::Bool => ScalarKind::Bool,
        };
        Some(Scalar {
            kind,
            bytes: s.width,
        })
    };
    match &module.types[ty].inner {
        TypeInner::Scalar(s) | TypeInner::Atomic(s) => scalar(*s),
        TypeInner::Vector { scalar: s, .. } | TypeInner::Matrix { scalar: s, .. } => scalar(*s),
        TypeInner::Array { base, .. } | TypeInner::BindingArray { base, .. } => {
            element_of(module, *base)
        }
        TypeInner::Struct { members, .. } => {
            let mut scalars = members.iter().map(|m| element_of(module, m.ty));
            let first = scalars.next()??;
            scalars.all(|s| s == Some(first)).then_some(first)
        }
        _ => None,
    }
}

/// A binding's access from how the entry point uses it: written and read (atomics
/// included) is `ReadWrite`, written only `Write`, anything else (loads, `arrayLength`)
/// `Read`.
fn access_of(used: GlobalUse) -> BindingAccess {
    let reads = used.intersects(GlobalUse::READ | GlobalUse::ATOMIC);
    match (reads, used.contains(GlobalUse::WRITE)) {
        (true, true) => BindingAccess::ReadWrite,
        (false, true) => BindingAccess::Write,
        _ => BindingAccess::Read,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAXPY: &str = "
struct Params { a: f32, n: u32 }
var<immediate> params: Params;
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read_write> unused: array<f32>;
@compute @workgroup_size(64, 2)
fn saxpy(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    if i < params.n {
        y[i] = params.a * x[i] + y[i];
    }
}
@compute @workgroup_size(1)
fn other() {}
";

    #[test]
    fn bindings_access_workgroup_and_push_constants_are_reflected() {
        let v = KernelVariant::wgsl("saxpy", SAXPY, "saxpy").unwrap();
        assert_eq!(v.entry_point, "saxpy");
        assert_eq!(v.workgroup_size, [64, 2, 1]);
        assert_eq!(v.push_constant_bytes, 8);
        let f32 = Some(Scalar {
            kind: ScalarKind::Float,
            bytes: 4,
        });
        assert_eq!(
            v.bindings,
            vec![
                BindingDesc {
                    element: f32,
                    ..BindingDesc::new(0, BindingAccess::Read)
                },
                BindingDesc {
                    element: f32,
                    ..BindingDesc::new(1, BindingAccess::ReadWrite)
                },
            ],
            "the unused binding is not the entry point's"
        );
        let words = v.spirv.unwrap();
        assert_eq!(words[0], 0x0723_0203, "SPIR-V magic");
    }

    #[test]
    fn a_parse_error_says_where() {
        let bad = SAXPY.replace("let i = id.x;", "let i = id.x");
        match KernelVariant::wgsl("saxpy", &bad, "saxpy") {
            Err(e @ ShaderError::Parse { .. }) => {
                let ShaderError::Parse { location, .. } = &e else {
                    unreachable!()
                };
                assert_eq!(location.map(|l| l.0), Some(10), "{e}");
                assert!(e.to_string().contains("at line 10"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_invalid_shader_is_refused_with_naga_s_message() {
        let bad = SAXPY.replace("params.a * x[i]", "params.n * x[i]");
        match KernelVariant::wgsl("saxpy", &bad, "saxpy") {
            Err(ShaderError::Invalid { message, .. }) => assert!(!message.is_empty()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_missing_entry_point_names_the_ones_there() {
        match KernelVariant::wgsl("saxpy", SAXPY, "main") {
            Err(ShaderError::EntryPoint { found, .. }) => {
                assert_eq!(found, vec!["saxpy".to_owned(), "other".to_owned()])
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn uniforms_and_other_groups_are_layout_errors() {
        let uniform = SAXPY
            .replace("var<storage, read> x", "var<uniform> x")
            .replace(
                "array<f32>;\n@group(0) @binding(1)",
                "array<vec4<f32>, 4>;\n@group(0) @binding(1)",
            );
        let uniform = uniform.replace("x[i]", "x[0].x");
        assert!(matches!(
            KernelVariant::wgsl("saxpy", &uniform, "saxpy"),
            Err(ShaderError::Layout { .. })
        ));
        let group = SAXPY.replace("@group(0) @binding(1)", "@group(1) @binding(1)");
        assert!(matches!(
            KernelVariant::wgsl("saxpy", &group, "saxpy"),
            Err(ShaderError::Layout { .. })
        ));
    }

    #[test]
    fn write_only_and_atomic_uses_are_told_apart() {
        let src = "
@group(0) @binding(0) var<storage, read_write> out: array<u32>;
@group(0) @binding(1) var<storage, read_write> counts: array<atomic<u32>>;
@compute @workgroup_size(1)
fn main() {
    out[0] = 1u;
    atomicAdd(&counts[0], 1u);
}
";
        let v = KernelVariant::wgsl("k", src, "main").unwrap();
        let access: Vec<_> = v.bindings.iter().map(|b| b.access).collect();
        assert_eq!(access, vec![BindingAccess::Write, BindingAccess::ReadWrite]);
        let u32 = Some(Scalar {
            kind: ScalarKind::Uint,
            bytes: 4,
        });
        assert!(
            v.bindings.iter().all(|b| b.element == u32),
            "atomic<u32> is u32"
        );
    }

    #[test]
    fn a_struct_of_one_scalar_has_it_and_a_mixed_struct_has_none() {
        let src = "
struct Same { a: vec4<f32>, b: array<f32, 3> }
struct Mixed { a: f32, b: u32 }
@group(0) @binding(0) var<storage, read_write> same: array<Same>;
@group(0) @binding(1) var<storage, read_write> mixed: array<Mixed>;
@compute @workgroup_size(1)
fn main() {
    same[0].a.x = 1.0;
    mixed[0].b = 2u;
}
";
        let v = KernelVariant::wgsl("k", src, "main").unwrap();
        let elements: Vec<_> = v.bindings.iter().map(|b| b.element).collect();
        let f32 = Scalar {
            kind: ScalarKind::Float,
            bytes: 4,
        };
        assert_eq!(elements, vec![Some(f32), None]);
    }

    #[test]
    fn a_descriptor_array_is_one_slot_of_n_elements_and_must_be_read_only() {
        let src = "
enable wgpu_binding_array;
struct Words { w: array<u32> }
@group(0) @binding(0) var<storage, read> inputs: binding_array<Words, 3>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@compute @workgroup_size(1)
fn main() {
    out[0] = inputs[0].w[0] + inputs[1].w[0] + inputs[2].w[0];
}
";
        let v = KernelVariant::wgsl("k", src, "main").unwrap();
        let layout: Vec<_> = v.bindings.iter().map(|b| (b.slot, b.index)).collect();
        assert_eq!(layout, vec![(0, 0), (0, 1), (0, 2), (1, 0)]);
        let written = src
            .replace(
                "var<storage, read> inputs",
                "var<storage, read_write> inputs",
            )
            .replace(
                "out[0] = inputs[0].w[0]",
                "inputs[1].w[0] = 1u;\n    out[0] = inputs[0].w[0]",
            );
        match KernelVariant::wgsl("k", &written, "main") {
            Err(ShaderError::Layout { reason, .. }) => {
                assert!(reason.contains("read-only"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }
}
