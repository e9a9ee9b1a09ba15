// fsum, speculative: each 1024-element chunk summed by four invocations, a quarter
// each, reading vec4s into four running sums — four times the parallelism and wider
// loads, and a different association of the additions: its sums differ from the
// conservative ones in their last bits (an f32 tolerance accepts them, exact
// comparison does not). One partial sum per quarter chunk.

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
    let quarters = (params.elems + 255u) / 256u;
    // The input is zero padded to whole vec4s.
    let vecs = (params.elems + 3u) / 4u;
    for (var q = gid.x; q < quarters; q += groups.x * 256u) {
        let start = q * 64u;
        let end = min(start + 64u, vecs);
        var acc = vec4<f32>(0.0);
        for (var v = start; v < end; v++) {
            acc += data[v];
        }
        partials[q] = (acc.x + acc.y) + (acc.z + acc.w);
    }
}
