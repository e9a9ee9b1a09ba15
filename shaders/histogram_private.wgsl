// histogram, speculative: workgroup-shared privatisation. Each workgroup counts into
// its own 256 bins in shared memory, then merges them with one global atomic add per
// non-empty bin. On skewed input this turns contended global atomics into cheap
// shared ones. Grid-stride loop: correct for any workgroup count >= 1.

struct Params {
    len: u32,
}

var<immediate> params: Params;

@group(0) @binding(0) var<storage, read> data: array<u32>;
@group(0) @binding(1) var<storage, read_write> bins: array<atomic<u32>, 256>;

var<workgroup> local_bins: array<atomic<u32>, 256>;

@compute @workgroup_size(256)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    atomicStore(&local_bins[lid], 0u);
    workgroupBarrier();

    let words = (params.len + 3u) / 4u;
    let stride = groups.x * 256u;
    for (var w = gid.x; w < words; w += stride) {
        let word = data[w];
        let base = w * 4u;
        for (var k = 0u; k < 4u; k++) {
            if base + k < params.len {
                atomicAdd(&local_bins[(word >> (k * 8u)) & 0xffu], 1u);
            }
        }
    }
    workgroupBarrier();

    let count = atomicLoad(&local_bins[lid]);
    if count != 0u {
        atomicAdd(&bins[lid], count);
    }
}
