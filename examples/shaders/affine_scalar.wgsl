// affine, conservative: y[i] = a * x[i] + b (u32, wrapping), one element per
// invocation, grid-stride so any workgroup count covers any length.

struct Params {
    n: u32,
    a: u32,
    b: u32,
}

var<immediate> params: Params;

@group(0) @binding(0) var<storage, read> x: array<u32>;
@group(0) @binding(1) var<storage, read_write> y: array<u32>;

@compute @workgroup_size(64)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let stride = groups.x * 64u;
    for (var i = gid.x; i < params.n; i += stride) {
        y[i] = params.a * x[i] + params.b;
    }
}
