// predict: clamped predictions of (loc_u, loc_i, rating) samples for each of
// MODELS models side by side (a slot holds every model's copy of a row,
// ROW_VEC4 vec4s each) and, per workgroup and model, the sum of squared
// and of absolute errors at `sums[workgroup * MODELS + g]` (the host adds the
// workgroups in f64). Specialised per run like `sgd`: the host prepends RANK,
// ROW_VEC4, MODELS, BV, BL, TAIL_F and TAIL_B (see `kernels::specialize`).
//
// A location is a slot of the slab, or, with its top bit set, a row of the
// upload window staged read-only for this step (evaluation never changes
// what the slab holds). 0xFFFFFFFF marks a user or item unseen in training:
// that side adds neither bias nor factors.

struct Params {
    first: u32,
    count: u32,
    mean: f32,
    min_rating: f32,
    max_rating: f32,
}

const SLOT_VEC4: u32 = ROW_VEC4 * MODELS;

@group(0) @binding(0) var<storage, read> slab: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> samples: array<u32>;  // 3 words per sample
@group(0) @binding(2) var<storage, read_write> sums: array<vec2<f32>>;
@group(0) @binding(3) var<uniform> params: Params;
@group(0) @binding(4) var<storage, read> window: array<vec4<f32>>;

const UNKNOWN: u32 = 0xFFFFFFFFu;
const IN_WINDOW: u32 = 0x80000000u;

// Vec4 `c` of model `g`'s copy of the row at `loc`.
fn row_vec(loc: u32, g: u32, c: u32) -> vec4<f32> {
    let at = g * ROW_VEC4 + c;
    if ((loc & IN_WINDOW) != 0u) {
        return window[(loc & ~IN_WINDOW) * SLOT_VEC4 + at];
    }
    return slab[loc * SLOT_VEC4 + at];
}

var<workgroup> partial: array<vec2<f32>, 64>;

@compute @workgroup_size(64)
fn predict(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let wg_index = wg.x + wg.y * nwg.x;
    let n = wg_index * 64u + lid;
    let live = n < params.count;
    var su = UNKNOWN;
    var si = UNKNOWN;
    var r = 0.0;
    if (live) {
        let s = (params.first + n) * 3u;
        su = samples[s];
        si = samples[s + 1u];
        r = bitcast<f32>(samples[s + 2u]);
    }
    for (var g = 0u; g < MODELS; g++) {
        var err = vec2<f32>(0.0);
        if (live) {
            var pred = params.mean;
            if (su != UNKNOWN) {
                pred += row_vec(su, g, BV)[BL];
            }
            if (si != UNKNOWN) {
                pred += row_vec(si, g, BV)[BL];
            }
            if (su != UNKNOWN && si != UNKNOWN) {
                var acc = vec4<f32>(0.0);
                for (var c = 0u; c < BV; c++) {
                    acc += row_vec(su, g, c) * row_vec(si, g, c);
                }
                acc += row_vec(su, g, BV) * row_vec(si, g, BV) * TAIL_F;
                pred += acc.x + acc.y + acc.z + acc.w;
            }
            let e = r - clamp(pred, params.min_rating, params.max_rating);
            err = vec2<f32>(e * e, abs(e));
        }
        partial[lid] = err;
        workgroupBarrier();
        for (var stride = 32u; stride > 0u; stride >>= 1u) {
            if (lid < stride) {
                partial[lid] += partial[lid + stride];
            }
            workgroupBarrier();
        }
        if (lid == 0u) {
            sums[wg_index * MODELS + g] = partial[0];
        }
        workgroupBarrier();
    }
}
