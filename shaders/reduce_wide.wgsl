// reduce, speculative (wide): built to run at the memory's bandwidth. Each workgroup
// takes tiles of 1024 vec4<u32> (16 KiB) in a grid-stride loop over tiles; each
// invocation loads four vec4s of a tile at once (four independent loads in flight, each
// of the four loads of a workgroup is one contiguous 4 KiB run) into four accumulators.
// The plan asks for a few workgroups per multiprocessor, not one per tile, so the
// per-workgroup tree reduction and the one global atomic add per workgroup are paid a
// thousand times, not once per 16 KiB. The ragged end (fewer than a tile of vec4s) is
// shared out one vec4 per invocation. The input is zero padded to whole vec4s.

struct Params {
    words: u32,
}

var<immediate> params: Params;

@group(0) @binding(0) var<storage, read> data: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> total: atomic<u32>;

var<workgroup> partial: array<u32, 256>;

const TILE: u32 = 1024u;

@compute @workgroup_size(256)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let vecs = (params.words + 3u) / 4u;
    let tiles = vecs / TILE;
    var a = vec4<u32>(0u);
    var b = vec4<u32>(0u);
    var c = vec4<u32>(0u);
    var d = vec4<u32>(0u);
    for (var t = wg.x; t < tiles; t += groups.x) {
        let base = t * TILE + lid;
        a += data[base];
        b += data[base + 256u];
        c += data[base + 512u];
        d += data[base + 768u];
    }
    for (var i = tiles * TILE + wg.x * 256u + lid; i < vecs; i += groups.x * 256u) {
        a += data[i];
    }
    let s = (a + b) + (c + d);
    partial[lid] = (s.x + s.y) + (s.z + s.w);
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
