// fsum, speculative: each workgroup sums whole 1024-element chunks together — vec4
// loads, a tree in shared memory — which is much faster than one invocation per chunk,
// but associates the additions differently: its sums differ from the conservative ones
// in their last bits (an f32 tolerance accepts them, exact comparison does not).

struct Params {
    elems: u32,
}

var<immediate> params: Params;

@group(0) @binding(0) var<storage, read> data: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> partials: array<f32>;

var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(256)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let chunks = (params.elems + 1023u) / 1024u;
    // The input is zero padded to whole vec4s.
    let vecs = (params.elems + 3u) / 4u;
    for (var c = wid.x; c < chunks; c += groups.x) {
        let v = c * 256u + lid;
        var x = vec4<f32>(0.0);
        if v < vecs {
            x = data[v];
        }
        partial[lid] = (x.x + x.y) + (x.z + x.w);
        workgroupBarrier();
        for (var half = 128u; half > 0u; half >>= 1u) {
            if lid < half {
                partial[lid] += partial[lid + half];
            }
            workgroupBarrier();
        }
        if lid == 0u {
            partials[c] = partial[0];
        }
        workgroupBarrier();
    }
}
