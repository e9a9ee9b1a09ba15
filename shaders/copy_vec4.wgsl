// Not a built-in variant: the kernels bench's copy baseline (benches/kernels.rs). A
// device-to-device copy of whole vec4<u32>s in a grid-stride loop, four vec4s in
// flight per invocation and step, the same access pattern as reduce_wide.wgsl plus the
// stores: what a compute kernel of this crate can move, read plus written, per second.

struct Params {
    vecs: u32,
}

var<immediate> params: Params;

@group(0) @binding(0) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<u32>>;

const TILE: u32 = 1024u;

@compute @workgroup_size(256)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let tiles = params.vecs / TILE;
    for (var t = wg.x; t < tiles; t += groups.x) {
        let base = t * TILE + lid;
        let a = src[base];
        let b = src[base + 256u];
        let c = src[base + 512u];
        let d = src[base + 768u];
        dst[base] = a;
        dst[base + 256u] = b;
        dst[base + 512u] = c;
        dst[base + 768u] = d;
    }
    for (var i = tiles * TILE + wg.x * 256u + lid; i < params.vecs; i += groups.x * 256u) {
        dst[i] = src[i];
    }
}
