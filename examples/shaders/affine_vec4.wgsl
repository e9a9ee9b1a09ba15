// affine, speculative: the same y[i] = a * x[i] + b with packed vec4 loads, four
// elements per invocation and a larger workgroup. The input is padded to whole vec4s;
// the stores past `n` are skipped so both variants write identical buffers.

struct Params {
    n: u32,
    a: u32,
    b: u32,
}

var<immediate> params: Params;

@group(0) @binding(0) var<storage, read> x: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> y: array<u32>;

@compute @workgroup_size(256)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let vecs = (params.n + 3u) / 4u;
    let stride = groups.x * 256u;
    for (var v = gid.x; v < vecs; v += stride) {
        let r = params.a * x[v] + vec4<u32>(params.b);
        let base = v * 4u;
        for (var lane = 0u; lane < 4u; lane++) {
            if base + lane < params.n {
                y[base + lane] = r[lane];
            }
        }
    }
}
