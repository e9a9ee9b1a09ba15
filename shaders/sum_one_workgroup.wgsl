// sum, speculative (one workgroup): wrapping sum of u32 words by a single workgroup that
// loops over the whole input. The plan launches one workgroup, so a small input costs
// one workgroup's start and one tree reduction, and a large one runs on one core of the
// device. Each invocation loads one word at a time in a loop strided by the grid (so
// the shader is correct for any workgroup count), and the workgroup reduces in shared
// memory with one global atomic add.

struct Params {
    words: u32,
}

var<immediate> params: Params;

@group(0) @binding(0) var<storage, read> data: array<u32>;
@group(0) @binding(1) var<storage, read_write> total: atomic<u32>;

var<workgroup> partial: array<u32, 256>;

@compute @workgroup_size(256)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    var acc = 0u;
    let stride = groups.x * 256u;
    for (var i = gid.x; i < params.words; i += stride) {
        acc += data[i];
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var half = 128u; half > 0u; half >>= 1u) {
        if lid < half {
            partial[lid] += partial[lid + half];
        }
        workgroupBarrier();
    }
    if lid == 0u {
        atomicAdd(&total, partial[0]);
    }
}
