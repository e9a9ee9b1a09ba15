// scan, conservative: every position is checked against the whole pattern. Each
// invocation owns 32 consecutive positions and writes their match bits as one word of
// the output bitmap (bit b of word w: a match starts at 32 * w + b).

struct Params {
    len: u32,
    pat_len: u32,
    tiles: u32,
    reserved: u32,
    pattern: vec4<u32>,
}

var<immediate> params: Params;

@group(0) @binding(0) var<storage, read> data: array<u32>;
@group(0) @binding(1) var<storage, read_write> bitmap: array<u32>;

fn input_byte(p: u32) -> u32 {
    return (data[p >> 2u] >> ((p & 3u) * 8u)) & 0xffu;
}

fn pattern_byte(k: u32) -> u32 {
    return (params.pattern[k >> 2u] >> ((k & 3u) * 8u)) & 0xffu;
}

@compute @workgroup_size(256)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let words = (params.len + 31u) / 32u;
    let stride = groups.x * 256u;
    for (var w = gid.x; w < words; w += stride) {
        var bits = 0u;
        for (var b = 0u; b < 32u; b++) {
            let p = w * 32u + b;
            if p + params.pat_len <= params.len {
                var k = 0u;
                while k < params.pat_len && input_byte(p + k) == pattern_byte(k) {
                    k++;
                }
                if k == params.pat_len {
                    bits |= 1u << b;
                }
            }
        }
        bitmap[w] = bits;
    }
}
