// fsum, conservative: the f32 sum in one fixed order — each invocation adds the
// elements of one 1024-element chunk one after the other and writes the chunk's sum;
// the host adds the chunks' sums in order. The same order as the CPU reference, so the
// answer is bit-exact everywhere IEEE single precision adds round to nearest.

struct Params {
    elems: u32,
}

var<immediate> params: Params;

@group(0) @binding(0) var<storage, read> data: array<f32>;
@group(0) @binding(1) var<storage, read_write> partials: array<f32>;

@compute @workgroup_size(256)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let chunks = (params.elems + 1023u) / 1024u;
    for (var c = gid.x; c < chunks; c += groups.x * 256u) {
        let start = c * 1024u;
        let end = min(start + 1024u, params.elems);
        var acc = 0.0;
        for (var i = start; i < end; i++) {
            acc += data[i];
        }
        partials[c] = acc;
    }
}
