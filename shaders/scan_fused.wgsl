// scan, speculative: fused tiled prefilter + confirm. A workgroup loads one 8 KiB tile
// into shared memory, prefilters positions on the pattern's first byte and confirms
// candidates against the tile alone. A candidate whose pattern would run past the tile
// edge (its in-tile prefix matched) cannot be confirmed here: the whole tile rolls
// back (writes no match bits) and the host confirms it serially.
//
// Output, u32 words: [bitmap: ceil(len / 32)] [status per tile: 1 committed,
// 2 rolled back] [committed tiles] [rolled-back tiles] — the last two words are the
// counter tail.

const TILE_BYTES: u32 = 8192u;
const TILE_WORDS: u32 = 2048u;

struct Params {
    len: u32,
    pat_len: u32,
    tiles: u32,
    reserved: u32,
    pattern: vec4<u32>,
}

var<immediate> params: Params;

@group(0) @binding(0) var<storage, read> data: array<u32>;
@group(0) @binding(1) var<storage, read_write> out: array<atomic<u32>>;

var<workgroup> tile: array<u32, 2048>;
var<workgroup> straddles: atomic<u32>;

fn tile_byte(q: u32) -> u32 {
    return (tile[q >> 2u] >> ((q & 3u) * 8u)) & 0xffu;
}

fn pattern_byte(k: u32) -> u32 {
    return (params.pattern[k >> 2u] >> ((k & 3u) * 8u)) & 0xffu;
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let words = (params.len + 31u) / 32u;
    let status_base = words;
    let tail = words + params.tiles;
    let first = pattern_byte(0u);
    let data_words = arrayLength(&data);

    for (var t = group.x; t < params.tiles; t += groups.x) {
        let start = t * TILE_BYTES;
        let end = min(start + TILE_BYTES, params.len);
        for (var i = lid; i < TILE_WORDS; i += 256u) {
            let g = start / 4u + i;
            var v = 0u;
            if g < data_words {
                v = data[g];
            }
            tile[i] = v;
        }
        if lid == 0u {
            atomicStore(&straddles, 0u);
        }
        workgroupBarrier();

        var bits = 0u;
        for (var b = 0u; b < 32u; b++) {
            let q = lid * 32u + b;
            let p = start + q;
            if p < end && p + params.pat_len <= params.len && tile_byte(q) == first {
                var k = 1u;
                while k < params.pat_len && q + k < TILE_BYTES && tile_byte(q + k) == pattern_byte(k) {
                    k++;
                }
                if k == params.pat_len {
                    bits |= 1u << b;
                } else if q + k == TILE_BYTES {
                    atomicStore(&straddles, 1u);
                }
            }
        }
        workgroupBarrier();

        let rolled_back = atomicLoad(&straddles) != 0u;
        let w = start / 32u + lid;
        if !rolled_back && w < words {
            atomicStore(&out[w], bits);
        }
        if lid == 0u {
            if rolled_back {
                atomicStore(&out[status_base + t], 2u);
                atomicAdd(&out[tail + 1u], 1u);
            } else {
                atomicStore(&out[status_base + t], 1u);
                atomicAdd(&out[tail], 1u);
            }
        }
        // Nobody may reset `straddles` or reload `tile` for the next tile while
        // another invocation still reads them for this one.
        workgroupBarrier();
    }
}
