// fsum, speculative: as the conservative variant, one invocation per 1024-element
// chunk, but reading the chunk as vec4s into four running sums, added at the end —
// a quarter of the loop's iterations and wider loads, and a different association of
// the additions: its sums differ from the conservative ones in their last bits (an f32
// tolerance accepts them, exact comparison does not).

struct Params {
    elems: u32,
}

var<immediate> params: Params;

@group(0) @binding(0) var<storage, read> data: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> partials: array<f32>;

@compute @workgroup_size(256)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let chunks = (params.elems + 1023u) / 1024u;
    // The input is zero padded to whole vec4s.
    let vecs = (params.elems + 3u) / 4u;
    for (var c = gid.x; c < chunks; c += groups.x * 256u) {
        let start = c * 256u;
        let end = min(start + 256u, vecs);
        var acc = vec4<f32>(0.0);
        for (var v = start; v < end; v++) {
            acc += data[v];
        }
        partials[c] = (acc.x + acc.y) + (acc.z + acc.w);
    }
}
