// scan, speculative: fused tiled prefilter + confirm, speculating that matches are
// sparse. A workgroup loads one 8 KiB tile into shared memory, prefilters it a word
// (four positions) at a time on the pattern's first byte, confirms candidates against
// the tile alone and collects the matches in a short list. The tile rolls back (writes
// no positions; the host confirms it serially) when a candidate's pattern would run
// past the tile edge (its in-tile prefix matched), or when the tile has more matches
// than its slot holds.
//
// Output, u32 words: one slot per tile — [status: 1 committed, 2 rolled back]
// [matches] [SLOT_CAPACITY positions, in any order] — then [committed tiles]
// [rolled-back tiles], the counter tail.

const TILE_BYTES: u32 = 8192u;
const TILE_WORDS: u32 = 2048u;
const SLOT_CAPACITY: u32 = 16u;
const SLOT_WORDS: u32 = 18u;

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
var<workgroup> found: atomic<u32>;
var<workgroup> list: array<u32, 16>;

fn tile_byte(q: u32) -> u32 {
    return (tile[q >> 2u] >> ((q & 3u) * 8u)) & 0xffu;
}

fn pattern_byte(k: u32) -> u32 {
    return (params.pattern[k >> 2u] >> ((k & 3u) * 8u)) & 0xffu;
}

// True when some byte of `v` is `b` (the classic zero-byte test on v ^ b…b).
fn has_byte(v: u32, b: u32) -> bool {
    let x = v ^ (b * 0x01010101u);
    return ((x - 0x01010101u) & ~x & 0x80808080u) != 0u;
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let tail = params.tiles * SLOT_WORDS;
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
            atomicStore(&found, 0u);
        }
        workgroupBarrier();

        // Word i of the tile goes to invocation i % 256: neighbours read neighbouring
        // words, so the shared-memory reads do not collide in a bank.
        for (var i = lid; i < TILE_WORDS; i += 256u) {
            let v = tile[i];
            if has_byte(v, first) {
                for (var b = 0u; b < 4u; b++) {
                    let q = i * 4u + b;
                    let p = start + q;
                    if p < end && p + params.pat_len <= params.len
                        && ((v >> (b * 8u)) & 0xffu) == first {
                        var k = 1u;
                        while k < params.pat_len && q + k < TILE_BYTES
                            && tile_byte(q + k) == pattern_byte(k) {
                            k++;
                        }
                        if k == params.pat_len {
                            let n = atomicAdd(&found, 1u);
                            if n < SLOT_CAPACITY {
                                list[n] = p;
                            }
                        } else if q + k == TILE_BYTES {
                            atomicStore(&straddles, 1u);
                        }
                    }
                }
            }
        }
        workgroupBarrier();

        let matches = atomicLoad(&found);
        let rolled_back = atomicLoad(&straddles) != 0u || matches > SLOT_CAPACITY;
        let slot = t * SLOT_WORDS;
        if !rolled_back && lid < matches {
            atomicStore(&out[slot + 2u + lid], list[lid]);
        }
        if lid == 0u {
            if rolled_back {
                atomicStore(&out[slot], 2u);
                atomicAdd(&out[tail + 1u], 1u);
            } else {
                atomicStore(&out[slot], 1u);
                atomicStore(&out[slot + 1u], matches);
                atomicAdd(&out[tail], 1u);
            }
        }
        // Nobody may reset the flags or reload `tile` for the next tile while another
        // invocation still reads them for this one.
        workgroupBarrier();
    }
}
