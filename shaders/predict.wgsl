// predict: clamped predictions of (loc_u, loc_i, rating) samples and, per
// workgroup, the sum of squared and of absolute errors (the host adds the
// workgroups in f64). A location is a slot of the slab, or, with its top bit
// set, a row of the upload window staged read-only for this step (evaluation
// never changes what the slab holds). 0xFFFFFFFF marks a user or item unseen
// in training: that side adds neither bias nor factors.

struct Params {
    first: u32,
    count: u32,
    row_vec4: u32,
    rank: u32,
    mean: f32,
    min_rating: f32,
    max_rating: f32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> slab: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> samples: array<u32>;  // 3 words per sample
@group(0) @binding(2) var<storage, read_write> sums: array<vec2<f32>>;
@group(0) @binding(3) var<uniform> params: Params;
@group(0) @binding(4) var<storage, read> window: array<vec4<f32>>;

const UNKNOWN: u32 = 0xFFFFFFFFu;
const IN_WINDOW: u32 = 0x80000000u;

fn row_vec(loc: u32, c: u32) -> vec4<f32> {
    if ((loc & IN_WINDOW) != 0u) {
        return window[(loc & ~IN_WINDOW) * params.row_vec4 + c];
    }
    return slab[loc * params.row_vec4 + c];
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
    var err = vec2<f32>(0.0);
    if (n < params.count) {
        let s = (params.first + n) * 3u;
        let su = samples[s];
        let si = samples[s + 1u];
        let r = bitcast<f32>(samples[s + 2u]);
        let bv = params.rank / 4u;
        let bl = params.rank % 4u;
        var pred = params.mean;
        if (su != UNKNOWN) {
            pred += row_vec(su, bv)[bl];
        }
        if (si != UNKNOWN) {
            pred += row_vec(si, bv)[bl];
        }
        if (su != UNKNOWN && si != UNKNOWN) {
            let k = vec4<u32>(params.rank);
            let lanes = vec4<u32>(0u, 1u, 2u, 3u);
            var acc = vec4<f32>(0.0);
            for (var c = 0u; c < params.row_vec4; c++) {
                let m = select(vec4<f32>(0.0), vec4<f32>(1.0), lanes + vec4<u32>(c * 4u) < k);
                acc += row_vec(su, c) * row_vec(si, c) * m;
            }
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
        sums[wg_index] = partial[0];
    }
}
