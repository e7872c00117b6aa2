// predict: clamped predictions of test ratings held on the device, for each
// of MODELS models side by side, and, per workgroup and model, the sum of
// squared and of absolute errors at `sums[sums_at + workgroup * MODELS + g]`
// (the host adds the workgroups in f64). Specialised per run like `sgd`.
//
// A row's slot-map entry is `1 + slot` for a row in the slab, or, with
// IN_WINDOW set, the index of a row staged read-only in the upload window
// for this step (evaluation never changes what the slab holds). UNKNOWN
// marks a user or item unseen in training: that side adds neither bias nor
// factors.

// `Params`: declared by the host (kernels::kernel_params), prepended.

const SLOT_VEC4: u32 = ROW_VEC4 * MODELS;

@group(0) @binding(0) var<storage, read> slab: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> test: array<u32>;  // (user, item, rating bits)
@group(0) @binding(2) var<storage, read_write> sums: array<vec2<f32>>;
@group(0) @binding(3) var<uniform> params: Params;
@group(0) @binding(4) var<storage, read> window: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> slot_map: array<u32>;

// Vec4 `c` of model `g`'s copy of the row with slot-map entry `e`.
fn row_vec(e: u32, g: u32, c: u32) -> vec4<f32> {
    let at = g * ROW_VEC4 + c;
    if ((e & IN_WINDOW) != 0u) {
        return window[(e & ~IN_WINDOW) * SLOT_VEC4 + at];
    }
    return slab[(e - 1u) * SLOT_VEC4 + at];
}

var<workgroup> partial: array<vec2<f32>, WORKGROUP>;

@compute @workgroup_size(WORKGROUP)
fn predict(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let wg_index = wg.x + wg.y * nwg.x;
    let n = wg_index * WORKGROUP + lid;
    let live = n < params.count;
    var eu = ABSENT;
    var ei = ABSENT;
    var r = 0.0;
    if (live) {
        let s = (params.first + n) * 3u;
        let user = test[s];
        let item = test[s + 1u];
        r = bitcast<f32>(test[s + 2u]);
        if (user != UNKNOWN) {
            eu = slot_map[user];
        }
        if (item != UNKNOWN) {
            ei = slot_map[params.n_users + item];
        }
    }
    for (var g = 0u; g < MODELS; g++) {
        var err = vec2<f32>(0.0);
        if (live) {
            var pred = params.mean;
            if (eu != ABSENT) {
                pred += row_vec(eu, g, BV)[BL];
            }
            if (ei != ABSENT) {
                pred += row_vec(ei, g, BV)[BL];
            }
            if (eu != ABSENT && ei != ABSENT) {
                var acc = vec4<f32>(0.0);
                for (var c = 0u; c < BV; c++) {
                    acc += row_vec(eu, g, c) * row_vec(ei, g, c);
                }
                acc += row_vec(eu, g, BV) * row_vec(ei, g, BV) * TAIL_F;
                pred += acc.x + acc.y + acc.z + acc.w;
            }
            let e = r - clamp(pred, params.min_rating, params.max_rating);
            err = vec2<f32>(e * e, abs(e));
        }
        partial[lid] = err;
        workgroupBarrier();
        for (var stride = WORKGROUP / 2u; stride > 0u; stride >>= 1u) {
            if (lid < stride) {
                partial[lid] += partial[lid + stride];
            }
            workgroupBarrier();
        }
        if (lid == 0u) {
            sums[params.sums_at + wg_index * MODELS + g] = partial[0];
        }
        workgroupBarrier();
    }
}
