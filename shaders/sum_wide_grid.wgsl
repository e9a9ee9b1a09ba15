// sum, conservative (wide grid): wrapping sum of u32 words over a fixed, wide grid. The
// plan launches the same number of workgroups whatever the input's size, so a small
// input pays for the whole grid (each workgroup's tree reduction and global atomic add)
// and a large one is spread over every core. Each invocation loads packed vec4<u32>s in
// a grid-stride loop (the input is zero padded to whole vec4s), folds its lanes, and the
// workgroup reduces in shared memory with one global atomic add.

struct Params {
    words: u32,
}

var<immediate> params: Params;

@group(0) @binding(0) var<storage, read> data: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> total: atomic<u32>;

var<workgroup> partial: array<u32, 256>;

@compute @workgroup_size(256)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let vecs = (params.words + 3u) / 4u;
    var acc = vec4<u32>(0u);
    let stride = groups.x * 256u;
    for (var i = gid.x; i < vecs; i += stride) {
        acc += data[i];
    }
    partial[lid] = (acc.x + acc.y) + (acc.z + acc.w);
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
