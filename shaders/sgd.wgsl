// sgd: Hogwild per-sample SGD of biased MF over a batch of
// (slot_u, slot_i, rating) samples, reaching rows only through slot indices,
// for `models` models side by side (a grid search; 1 otherwise).
//
// Slot layout (DESIGN.md §1, §4): one slot holds every model's copy of a row,
// `row_vec4` vec4s each. A copy is `rank` factors, the bias at float index
// `rank`, and zero padding to a whole number of vec4s. Factor lanes and the
// bias lane get their own update; padding lanes stay zero. Both rows are
// updated from their old values. One read of a sample drives the updates of
// all models, model g with its own learning rate and regularisation
// (`rates[g]`, the schedule already applied). Concurrent updates of one row
// may race and lose an update: that is Hogwild!, accepted as in Factorbird,
// LIBMF and cuMF_SGD. Deterministic mode dispatches conflict-free waves
// instead, one dispatch each.
//
// Each invocation adds the squared errors it saw (before its updates) into
// its own accumulator, `loss[n * models + g]` for the n-th sample of a
// dispatch and model g: no two invocations of a dispatch share one, and the
// dispatches of a step run one after another, so no reduction (and no
// barrier) is needed. The host reads the accumulators back once per epoch and
// adds them in f64.

struct Params {
    first: u32,     // first sample of this dispatch in the sample buffer
    count: u32,     // samples in this dispatch
    row_vec4: u32,  // vec4s per model's copy of a row
    rank: u32,      // k
    models: u32,    // copies side by side in a slot
    bias_reg: f32,
    mean: f32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read_write> slab: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> samples: array<u32>;  // 3 words per sample
@group(0) @binding(2) var<storage, read_write> loss: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;
@group(0) @binding(4) var<storage, read> rates: array<vec2<f32>>;  // (lr, reg) per model

@compute @workgroup_size(64)
fn sgd(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let n = (wg.x + wg.y * nwg.x) * 64u + lid;
    if (n >= params.count) {
        return;
    }
    let width = params.row_vec4 * params.models;
    let s = (params.first + n) * 3u;
    let su = samples[s] * width;
    let si = samples[s + 1u] * width;
    let r = bitcast<f32>(samples[s + 2u]);
    let k = vec4<u32>(params.rank);
    let lanes = vec4<u32>(0u, 1u, 2u, 3u);
    let bv = params.rank / 4u;
    let bl = params.rank % 4u;
    for (var g = 0u; g < params.models; g++) {
        let pu = su + g * params.row_vec4;
        let qi = si + g * params.row_vec4;
        let lr = rates[g].x;
        let reg = rates[g].y;
        var acc = vec4<f32>(0.0);
        for (var c = 0u; c < params.row_vec4; c++) {
            let m = select(vec4<f32>(0.0), vec4<f32>(1.0), lanes + vec4<u32>(c * 4u) < k);
            acc += slab[pu + c] * slab[qi + c] * m;
        }
        let bu = slab[pu + bv][bl];
        let bi = slab[qi + bv][bl];
        let e = r - (params.mean + bu + bi + (acc.x + acc.y + acc.z + acc.w));
        loss[n * params.models + g] += e * e;

        for (var c = 0u; c < params.row_vec4; c++) {
            let lane = lanes + vec4<u32>(c * 4u);
            let fm = select(vec4<f32>(0.0), vec4<f32>(1.0), lane < k);
            let bm = select(vec4<f32>(0.0), vec4<f32>(1.0), lane == k);
            let p = slab[pu + c];
            let q = slab[qi + c];
            let gp = fm * (e * q - reg * p) + bm * (e - params.bias_reg * p);
            let gq = fm * (e * p - reg * q) + bm * (e - params.bias_reg * q);
            slab[pu + c] = p + lr * gp;
            slab[qi + c] = q + lr * gq;
        }
    }
}
