// scan, speculative: fused tiled prefilter + confirm, speculating that matches are
// sparse. A workgroup takes one 8 KiB tile, prefilters it a word (four positions) at a
// time on the pattern's first byte, confirms candidates against the tile's bytes alone
// and collects the matches in a short list in shared memory. The tile rolls back (writes
// no positions; the host confirms it serially) when a candidate's pattern would run
// past the tile edge (its in-tile prefix matched), or when the tile has more matches
// than its slot holds.
//
// Output, u32 words: one slot per tile — [status: 1 committed, 2 rolled back]
// [matches] [SLOT_CAPACITY positions, in any order] — then [committed tiles]
// [rolled-back tiles], the counter tail.

const TILE_BYTES: u32 = 8192u;
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

var<workgroup> straddles: atomic<u32>;
var<workgroup> found: atomic<u32>;
var<workgroup> list: array<u32, 16>;

fn input_byte(p: u32) -> u32 {
    return (data[p >> 2u] >> ((p & 3u) * 8u)) & 0xffu;
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

    for (var t = group.x; t < params.tiles; t += groups.x) {
        let start = t * TILE_BYTES;
        let end = min(start + TILE_BYTES, params.len);
        if lid == 0u {
            atomicStore(&straddles, 0u);
            atomicStore(&found, 0u);
        }
        workgroupBarrier();

        // Word j of invocation lid is the tile's word lid + 256 j: a subgroup reads
        // neighbouring words, one coalesced load for four positions each, and all
        // eight loads are issued before the first is needed. Confirming reads the
        // tile's bytes only (a candidate needing more rolls the tile back).
        let end_word = (end + 3u) / 4u;
        var words: array<u32, 8>;
        for (var j = 0u; j < 8u; j++) {
            let i = start / 4u + lid + j * 256u;
            words[j] = select(0u, data[min(i, end_word - 1u)], i < end_word);
        }
        for (var j = 0u; j < 8u; j++) {
            let v = words[j];
            if !has_byte(v, first) {
                continue;
            }
            let i = start / 4u + lid + j * 256u;
            for (var b = 0u; b < 4u; b++) {
                let p = i * 4u + b;
                let q = p - start;
                if p < end && p + params.pat_len <= params.len
                    && ((v >> (b * 8u)) & 0xffu) == first {
                    var k = 1u;
                    while k < params.pat_len && q + k < TILE_BYTES
                        && input_byte(p + k) == pattern_byte(k) {
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
        // Nobody may reset the flags for the next tile while another invocation
        // still reads them for this one.
        workgroupBarrier();
    }
}
