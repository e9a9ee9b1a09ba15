// out[i] = in[i] * 3 + add, one item per invocation, 64 invocations per workgroup.
struct Params { add: u32, n: u32 }
var<immediate> params: Params;
@group(0) @binding(0) var<storage, read> input: array<u32>;
@group(0) @binding(1) var<storage, read_write> output: array<u32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    if id.x < params.n { output[id.x] = input[id.x] * 3u + params.add; }
}
