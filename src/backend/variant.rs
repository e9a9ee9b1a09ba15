//! Kernel variants as a backend loads them: their bindings (slot, access, descriptor
//! arrays), their SPIR-V, WGSL or CPU code, workgroup size and push constants, and the
//! handle a loaded variant gets.

use std::fmt;
use std::sync::Arc;

use super::*;

/// How a kernel uses a binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum BindingAccess {
    /// Read only (an input).
    Read,
    /// Written (an output; zero-initialised before the dispatch).
    Write,
    /// Read and written (an input whose final contents are read back).
    ReadWrite,
}

impl BindingAccess {
    /// True when the kernel may read the binding.
    pub fn reads(self) -> bool {
        matches!(self, BindingAccess::Read | BindingAccess::ReadWrite)
    }
    /// True when the kernel may write the binding (and so it is read back).
    pub fn writes(self) -> bool {
        matches!(self, BindingAccess::Write | BindingAccess::ReadWrite)
    }
}

/// One storage-buffer binding of a kernel: descriptor set 0, binding `slot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct BindingDesc {
    /// The binding number in descriptor set 0.
    pub slot: u32,
    /// How the kernel uses it.
    pub access: BindingAccess,
    /// The scalar its elements are made of, where reflected from the shader (WGSL, or
    /// SPIR-V through [`KernelVariant::from_spirv`]); `None` for a hand declaration.
    /// The engine checks a declared [`Agreement`](crate::policy::Agreement) against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub element: Option<Scalar>,
    /// The element of a descriptor array (WGSL `binding_array<array<T>, n>`) this
    /// buffer is bound to: an array of `n` buffers is `n` descriptions of one slot with
    /// indices `0..n`, in order, each taking one buffer of the job. 0 for a plain
    /// binding. Arrays are read-only, and need a device with descriptor indexing
    /// ([`DeviceInfo::bindless`]).
    #[serde(default)]
    pub index: u32,
}

impl BindingDesc {
    /// Binding `slot`, used as `access`, of elements not declared.
    pub fn new(slot: u32, access: BindingAccess) -> Self {
        BindingDesc {
            slot,
            access,
            element: None,
            index: 0,
        }
    }
}

/// The slots of `bindings` with their descriptor counts, in order; `Err` says what is
/// wrong: a (slot, index) declared twice, an array whose indices are not `0..n` in a
/// row, or a written array.
pub(crate) fn descriptor_counts(bindings: &[BindingDesc]) -> Result<Vec<(u32, u32)>, String> {
    let mut counts: Vec<(u32, u32)> = Vec::new();
    for b in bindings {
        if let Some((slot, count)) = counts.last_mut() {
            if *slot == b.slot && b.index == *count {
                *count += 1;
                continue;
            }
        }
        match () {
            _ if counts.iter().any(|(slot, _)| *slot == b.slot) => {
                return Err(if b.index == 0 {
                    format!("binding {} is declared twice", b.slot)
                } else {
                    format!(
                        "element {} of binding {}'s descriptor array is out of place (the elements of an array come in a row, from 0)",
                        b.index, b.slot
                    )
                });
            }
            _ if b.index != 0 => {
                return Err(format!(
                    "binding {}'s descriptor array starts at element {}, not 0",
                    b.slot, b.index
                ))
            }
            _ => counts.push((b.slot, 1)),
        }
    }
    for (slot, count) in &counts {
        let written = bindings
            .iter()
            .any(|b| b.slot == *slot && b.access.writes());
        if *count > 1 && written {
            return Err(format!(
                "binding {slot} is a written descriptor array; descriptor arrays must be read-only"
            ));
        }
    }
    Ok(counts)
}

/// CPU implementation of a kernel variant: the CPU backend calls it with one byte slice
/// per binding (in the order of [`KernelVariant::bindings`]; written bindings arrive
/// zero-filled or, for `ReadWrite`, holding their input), the push constants and the
/// workgroup count. It returns `Err(message)` for inputs it cannot run.
pub type CpuKernelFn =
    dyn Fn(&mut [Vec<u8>], &[u8], [u32; 3]) -> Result<(), String> + Send + Sync + 'static;

/// One compiled variant of a kernel, as a backend loads it.
#[derive(Clone)]
pub struct KernelVariant {
    /// A short name, e.g. `"histogram/global-atomics"`.
    pub name: String,
    /// SPIR-V words for the Vulkan backend (`None`: this variant has no GPU code).
    pub spirv: Option<Arc<[u32]>>,
    /// The entry point in the SPIR-V module.
    pub entry_point: String,
    /// The workgroup size the shader declares.
    pub workgroup_size: [u32; 3],
    /// Storage-buffer bindings in descriptor set 0, in the order dispatch buffers come.
    pub bindings: Vec<BindingDesc>,
    /// Bytes of push constants the shader declares (0: none).
    pub push_constant_bytes: u32,
    /// How many items one invocation covers when a batch is planned by items
    /// ([`Batch::for_items`](crate::Batch::for_items)): the variant's
    /// workgroups are `ceil(items / (workgroup invocations × items_per_invocation))`.
    /// 1 unless set with [`KernelVariant::with_items_per_invocation`].
    pub items_per_invocation: u32,
    /// CPU code for the CPU backend (`None`: this variant has no CPU implementation).
    pub cpu: Option<Arc<CpuKernelFn>>,
}

impl KernelVariant {
    /// A variant with CPU code only (it runs on the CPU backend and the test backend;
    /// the Vulkan backend refuses it as unsupported). `bindings` are the storage
    /// buffers in slot order (binding `i` is slot `i`); entry point `main`, workgroup
    /// size `[1, 1, 1]`.
    ///
    /// ```
    /// use photofinish::backend::{BindingAccess, KernelVariant};
    ///
    /// // out[0] = the number of input bytes that are odd.
    /// let odd = KernelVariant::cpu(
    ///     "count-odd/serial",
    ///     &[BindingAccess::Read, BindingAccess::Write],
    ///     0,
    ///     |buffers, _push_constants, _workgroups| {
    ///         let [input, out] = buffers else {
    ///             return Err("takes two buffers".into());
    ///         };
    ///         out[0] = input.iter().filter(|b| *b % 2 == 1).count() as u8;
    ///         Ok(())
    ///     },
    /// );
    /// assert_eq!(odd.bindings[1].slot, 1);
    /// assert!(odd.spirv.is_none() && odd.cpu.is_some());
    /// ```
    pub fn cpu(
        name: impl Into<String>,
        bindings: &[BindingAccess],
        push_constant_bytes: u32,
        code: impl Fn(&mut [Vec<u8>], &[u8], [u32; 3]) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        KernelVariant {
            cpu: Some(Arc::new(code)),
            ..Self::layout(name, bindings, push_constant_bytes)
        }
    }

    /// A variant with SPIR-V only (`words`, entry point `main`, declaring
    /// `workgroup_size`); `bindings` in slot order as for [`KernelVariant::cpu`].
    pub fn spirv(
        name: impl Into<String>,
        words: Arc<[u32]>,
        workgroup_size: [u32; 3],
        bindings: &[BindingAccess],
        push_constant_bytes: u32,
    ) -> Self {
        KernelVariant {
            spirv: Some(words),
            workgroup_size,
            ..Self::layout(name, bindings, push_constant_bytes)
        }
    }

    /// A variant from WGSL source, compiled with naga at run time (feature `wgsl`):
    /// its bindings (the storage buffers of `@group(0)` that `entry` uses, by
    /// `@binding`, each `Read`, `Write` or `ReadWrite` as the entry point uses it), its
    /// workgroup size and its push-constant size (a `var<immediate>` block) are
    /// reflected from the shader, not declared by hand. A shader that does not parse or
    /// validate is a [`ShaderError`] with naga's message and the line and column.
    ///
    /// ```
    /// use photofinish::backend::{BindingAccess, KernelVariant};
    ///
    /// let saxpy = KernelVariant::wgsl(
    ///     "saxpy/scalar",
    ///     "
    ///     struct Params { a: f32, n: u32 }
    ///     var<immediate> params: Params;
    ///     @group(0) @binding(0) var<storage, read> x: array<f32>;
    ///     @group(0) @binding(1) var<storage, read_write> y: array<f32>;
    ///     @compute @workgroup_size(64)
    ///     fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    ///         if id.x < params.n { y[id.x] = params.a * x[id.x] + y[id.x]; }
    ///     }",
    ///     "main",
    /// )?;
    /// assert_eq!(saxpy.workgroup_size, [64, 1, 1]);
    /// assert_eq!(saxpy.push_constant_bytes, 8);
    /// assert_eq!(saxpy.bindings[1].access, BindingAccess::ReadWrite);
    /// # Ok::<(), photofinish::backend::ShaderError>(())
    /// ```
    #[cfg(feature = "wgsl")]
    pub fn wgsl(name: impl Into<String>, source: &str, entry: &str) -> Result<Self, ShaderError> {
        wgsl::compile(name.into(), source, entry)
    }

    /// The same variant with CPU code as well, so one registration runs on every
    /// backend: the Vulkan backend runs its SPIR-V, the CPU backend (e.g. `Auto`'s
    /// fallback on a machine without a GPU) this code. The code sees the buffers as
    /// [`KernelVariant::cpu`]'s does.
    pub fn with_cpu(
        self,
        code: impl Fn(&mut [Vec<u8>], &[u8], [u32; 3]) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        KernelVariant {
            cpu: Some(Arc::new(code)),
            ..self
        }
    }

    /// The same variant covering `items` items per invocation when a batch is planned
    /// by items ([`Batch::for_items`](crate::Batch::for_items)), so a "more work per
    /// thread" variant dispatches fewer workgroups without a grid-stride loop (SPEC
    /// §10). 0 is taken as 1.
    ///
    /// ```
    /// use photofinish::backend::{BindingAccess, KernelVariant};
    ///
    /// let layout = [BindingAccess::Read, BindingAccess::Write];
    /// let scalar = KernelVariant::cpu("k/scalar", &layout, 0, |_, _, _| Ok(()));
    /// let four = scalar.clone().with_items_per_invocation(4);
    /// assert_eq!(scalar.workgroups_for_items(10, u32::MAX)?, [10, 1, 1]);
    /// assert_eq!(four.workgroups_for_items(10, u32::MAX)?, [3, 1, 1]);
    /// # Ok::<(), photofinish::PlanError>(())
    /// ```
    pub fn with_items_per_invocation(self, items: u32) -> Self {
        KernelVariant {
            items_per_invocation: items.max(1),
            ..self
        }
    }

    /// The workgroups this variant dispatches to cover `items` items:
    /// `ceil(items / (workgroup invocations × items per invocation))` in x (0 items:
    /// an empty dispatch), at most `max` (the device's `maxComputeWorkGroupCount[0]`).
    pub fn workgroups_for_items(&self, items: u64, max: u32) -> Result<[u32; 3], PlanError> {
        let per_workgroup = self
            .workgroup_size
            .iter()
            .chain(std::iter::once(&self.items_per_invocation))
            .fold(1u64, |n, &d| n.saturating_mul(u64::from(d.max(1))));
        let workgroups = items.div_ceil(per_workgroup);
        match u32::try_from(workgroups) {
            Ok(x) if x <= max => Ok([x, 1, 1]),
            _ => Err(PlanError::TooManyItems {
                variant: self.name.clone(),
                items,
                per_workgroup,
                workgroups,
                max,
            }),
        }
    }

    /// A variant from SPIR-V words with everything reflected through naga (feature
    /// `wgsl`), as [`KernelVariant::wgsl`] does for WGSL: its storage bindings (group
    /// 0) and how `entry` uses each, with their element scalars, its workgroup size and
    /// its push-constant size. The words are kept as given (not rewritten). A module
    /// naga cannot read is a [`ShaderError`]; declare it by hand with
    /// [`KernelVariant::spirv`] then (the Vulkan backend still checks a hand
    /// declaration against the module when it loads it).
    #[cfg(feature = "wgsl")]
    pub fn from_spirv(
        name: impl Into<String>,
        words: Arc<[u32]>,
        entry: &str,
    ) -> Result<Self, ShaderError> {
        wgsl::reflect_spirv(name.into(), words, entry)
    }

    /// Whether the variant binds buffers through a descriptor array (a binding with an
    /// array element past the first: see [`BindingDesc::index`]).
    pub(crate) fn declares_descriptor_array(&self) -> bool {
        self.bindings.iter().any(|b| b.index > 0)
    }

    /// Whether the variant's SPIR-V indexes a descriptor array with a non-uniform
    /// (per-invocation) index: it declares the `StorageBufferArrayNonUniformIndexing`
    /// capability (naga writes it for such an index). D9 needs `Full` descriptor
    /// indexing for such a variant, `Static` otherwise.
    pub fn indexes_descriptors_non_uniformly(&self) -> bool {
        /// `OpCapability`, and the capability's number.
        const OP_CAPABILITY: u32 = 17;
        const STORAGE_BUFFER_ARRAY_NON_UNIFORM_INDEXING: u32 = 5308;
        let Some(words) = self.spirv.as_deref() else {
            return false;
        };
        let mut at = 5; // past the header
        while let Some(&first) = words.get(at) {
            let (count, opcode) = ((first >> 16) as usize, first & 0xffff);
            if opcode == OP_CAPABILITY
                && words.get(at + 1) == Some(&STORAGE_BUFFER_ARRAY_NON_UNIFORM_INDEXING)
            {
                return true;
            }
            // Capabilities come first in a module: past them, stop.
            if opcode != OP_CAPABILITY || count == 0 {
                return false;
            }
            at += count;
        }
        false
    }

    /// The ids of the specialisation constants its SPIR-V declares (every
    /// `OpDecorate … SpecId`), in the order they appear; empty without SPIR-V.
    pub fn specialisation_constant_ids(&self) -> Vec<u32> {
        /// `OpDecorate`, and the `SpecId` decoration's number.
        const OP_DECORATE: u32 = 71;
        const SPEC_ID: u32 = 1;
        let Some(words) = self.spirv.as_deref() else {
            return Vec::new();
        };
        let mut ids = Vec::new();
        let mut at = 5; // past the header
        while let Some(&first) = words.get(at) {
            let (count, opcode) = ((first >> 16) as usize, first & 0xffff);
            if count == 0 {
                break;
            }
            if opcode == OP_DECORATE && count >= 4 && words.get(at + 2) == Some(&SPEC_ID) {
                if let Some(&id) = words.get(at + 3) {
                    ids.push(id);
                }
            }
            at += count;
        }
        ids
    }

    /// The layout alone: no code yet.
    fn layout(
        name: impl Into<String>,
        bindings: &[BindingAccess],
        push_constant_bytes: u32,
    ) -> Self {
        KernelVariant {
            name: name.into(),
            spirv: None,
            entry_point: "main".into(),
            workgroup_size: [1, 1, 1],
            bindings: (0u32..)
                .zip(bindings)
                .map(|(slot, &access)| BindingDesc::new(slot, access))
                .collect(),
            push_constant_bytes,
            items_per_invocation: 1,
            cpu: None,
        }
    }
}

impl fmt::Debug for KernelVariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KernelVariant")
            .field("name", &self.name)
            .field("spirv_words", &self.spirv.as_ref().map(|s| s.len()))
            .field("entry_point", &self.entry_point)
            .field("workgroup_size", &self.workgroup_size)
            .field("bindings", &self.bindings)
            .field("push_constant_bytes", &self.push_constant_bytes)
            .field("items_per_invocation", &self.items_per_invocation)
            .field("cpu", &self.cpu.is_some())
            .finish()
    }
}

/// A kernel variant loaded on one device: an opaque, cheap handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KernelHandle {
    /// The device it was loaded on.
    pub device: usize,
    /// The backend's own id for it.
    pub id: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn element(slot: u32, index: u32, access: BindingAccess) -> BindingDesc {
        BindingDesc {
            index,
            ..BindingDesc::new(slot, access)
        }
    }

    #[test]
    fn descriptor_arrays_are_counted_per_slot() {
        let read = BindingAccess::Read;
        let bindings = [
            element(0, 0, read),
            element(0, 1, read),
            element(0, 2, read),
            element(1, 0, BindingAccess::Write),
        ];
        assert_eq!(descriptor_counts(&bindings), Ok(vec![(0, 3), (1, 1)]));
    }

    #[test]
    fn a_repeated_slot_an_element_out_of_place_and_a_written_array_are_refused() {
        let read = BindingAccess::Read;
        let twice = [element(0, 0, read), element(0, 0, read)];
        assert!(descriptor_counts(&twice).unwrap_err().contains("twice"));
        let apart = [
            element(0, 0, read),
            element(1, 0, read),
            element(0, 1, read),
        ];
        assert!(descriptor_counts(&apart)
            .unwrap_err()
            .contains("out of place"));
        let late = [element(0, 1, read)];
        assert!(descriptor_counts(&late).unwrap_err().contains("not 0"));
        let written = [
            element(0, 0, BindingAccess::Write),
            element(0, 1, BindingAccess::Write),
        ];
        assert!(descriptor_counts(&written)
            .unwrap_err()
            .contains("read-only"));
    }
}
