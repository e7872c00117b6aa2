// sgd: Hogwild per-sample SGD of biased MF over a batch of
// (slot_u, slot_i, rating) samples, reaching rows only through slot indices.
//
// Row layout (DESIGN.md §1): `rank` factors, the bias at float index `rank`,
// zero padding to a whole number of vec4s. Factor lanes and the bias lane get
// their own update; padding lanes stay zero. Both rows are updated from their
// old values. Concurrent updates of one row may race and lose an update: that
// is Hogwild!, accepted as in Factorbird, LIBMF and cuMF_SGD. Deterministic
// mode dispatches conflict-free waves instead, one dispatch each.
//
// Each workgroup adds the squared errors it saw (before its updates) into its
// own accumulator, read back once per epoch for the training RMSE.

struct Params {
    first: u32,     // first sample of this dispatch in the sample buffer
    count: u32,     // samples in this dispatch
    row_vec4: u32,  // vec4s per slot
    rank: u32,      // k
    lr: f32,
    reg: f32,
    bias_reg: f32,
    mean: f32,
}

@group(0) @binding(0) var<storage, read_write> slab: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> samples: array<u32>;  // 3 words per sample
@group(0) @binding(2) var<storage, read_write> loss: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;

var<workgroup> partial: array<f32, 64>;

@compute @workgroup_size(64)
fn sgd(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let wg_index = wg.x + wg.y * nwg.x;
    let n = wg_index * 64u + lid;
    var sq = 0.0;
    if (n < params.count) {
        let s = (params.first + n) * 3u;
        let pu = samples[s] * params.row_vec4;
        let qi = samples[s + 1u] * params.row_vec4;
        let r = bitcast<f32>(samples[s + 2u]);
        let k = vec4<u32>(params.rank);
        let lanes = vec4<u32>(0u, 1u, 2u, 3u);

        var acc = vec4<f32>(0.0);
        for (var c = 0u; c < params.row_vec4; c++) {
            let m = select(vec4<f32>(0.0), vec4<f32>(1.0), lanes + vec4<u32>(c * 4u) < k);
            acc += slab[pu + c] * slab[qi + c] * m;
        }
        let bv = params.rank / 4u;
        let bl = params.rank % 4u;
        let bu = slab[pu + bv][bl];
        let bi = slab[qi + bv][bl];
        let e = r - (params.mean + bu + bi + (acc.x + acc.y + acc.z + acc.w));
        sq = e * e;

        for (var c = 0u; c < params.row_vec4; c++) {
            let lane = lanes + vec4<u32>(c * 4u);
            let fm = select(vec4<f32>(0.0), vec4<f32>(1.0), lane < k);
            let bm = select(vec4<f32>(0.0), vec4<f32>(1.0), lane == k);
            let p = slab[pu + c];
            let q = slab[qi + c];
            let gp = fm * (e * q - params.reg * p) + bm * (e - params.bias_reg * p);
            let gq = fm * (e * p - params.reg * q) + bm * (e - params.bias_reg * q);
            slab[pu + c] = p + params.lr * gp;
            slab[qi + c] = q + params.lr * gq;
        }
    }
    partial[lid] = sq;
    workgroupBarrier();
    for (var stride = 32u; stride > 0u; stride >>= 1u) {
        if (lid < stride) {
            partial[lid] += partial[lid + stride];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        loss[wg_index] += partial[0];
    }
}
