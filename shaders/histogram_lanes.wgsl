// histogram, speculative (lane columns): 16 sub-histograms per workgroup in shared
// memory (16 KiB, Vulkan's guaranteed maxComputeSharedMemorySize), interleaved so that
// bin b of column c sits at b * 16 + c, and invocation i counts into column i % 16. Of
// the 32 invocations of a 32-wide subgroup at most two then add to one address or one
// bank, whatever the data: skewed input (few hot bins) costs about what uniform input
// costs, where one set of shared bins serialises every collision. Loads are vec4<u32>
// (16 bytes per invocation and step) in a grid-stride loop; the plan asks for a few workgroups per multiprocessor, so each merges its 4096
// counters (one global atomic add per non-empty bin) once for a large share of the
// input. Correct for any workgroup count >= 1 and any subgroup size (the columns are
// only a spreading; every add is atomic).

struct Params {
    len: u32,
}

var<immediate> params: Params;

@group(0) @binding(0) var<storage, read> data: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> bins: array<atomic<u32>, 256>;

const COLUMNS: u32 = 16u;

var<workgroup> cols: array<atomic<u32>, 4096>;

// Counts the first `n` (at most 4) bytes of `w` into column `col`.
fn count_word(w: u32, n: u32, col: u32) {
    for (var k = 0u; k < n; k++) {
        atomicAdd(&cols[(((w >> (k * 8u)) & 0xffu) << 4u) | col], 1u);
    }
}

@compute @workgroup_size(256)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    for (var k = lid; k < 256u * COLUMNS; k += 256u) {
        atomicStore(&cols[k], 0u);
    }
    workgroupBarrier();

    let col = lid & (COLUMNS - 1u);
    let full = params.len / 16u;
    for (var v = wg.x * 256u + lid; v < full; v += groups.x * 256u) {
        let q = data[v];
        count_word(q.x, 4u, col);
        count_word(q.y, 4u, col);
        count_word(q.z, 4u, col);
        count_word(q.w, 4u, col);
    }
    // The ragged end, fewer than 16 bytes past the last whole vec4 (the padding zeros
    // beyond the input's length are not counted).
    let rest = params.len - full * 16u;
    if rest != 0u && wg.x == 0u && lid == 0u {
        let q = data[full];
        count_word(q.x, min(rest, 4u), col);
        count_word(q.y, min(max(rest, 4u) - 4u, 4u), col);
        count_word(q.z, min(max(rest, 8u) - 8u, 4u), col);
        count_word(q.w, max(rest, 12u) - 12u, col);
    }
    workgroupBarrier();

    // Invocation i sums bin i's columns, starting at its own column so that a
    // subgroup's reads spread over the banks.
    var sum = 0u;
    for (var j = 0u; j < COLUMNS; j++) {
        sum += atomicLoad(&cols[(lid << 4u) | ((lid + j) & (COLUMNS - 1u))]);
    }
    if sum != 0u {
        atomicAdd(&bins[lid], sum);
    }
}
