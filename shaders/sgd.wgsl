// sgd: Hogwild per-sample SGD of biased MF over a batch of
// (slot_u, slot_i, rating) samples, reaching rows only through slot indices,
// for MODELS models side by side (a grid search; 1 otherwise).
//
// Specialised per run: the host prepends the constants RANK, ROW_VEC4 (vec4s
// of one model's copy of a row), MODELS, BV and BL (the vec4 and lane of the
// bias), and TAIL_F / TAIL_B (1.0 on the factor / bias lanes of vec4 BV), see
// `kernels::specialize`. With the loop bounds known, the compiler unrolls the
// row loops and keeps both rows in registers: each float of a row is read
// once and written once per model, and the padding is never touched.
//
// Slot layout (DESIGN.md §1, §4): one slot holds every model's copy of a row,
// ROW_VEC4 vec4s each. A copy is RANK factors, the bias at float index RANK,
// and zero padding to a whole number of vec4s, so vec4s 0..BV hold factors
// only and vec4 BV holds the last factors, the bias and the padding. Factor
// lanes and the bias lane get their own update; padding lanes stay zero. Both
// rows are updated from their old values. One read of a sample drives the
// updates of all models, model g with its own learning rate and
// regularisation (`rates[g]`, the schedule already applied). Concurrent
// updates of one row may race and lose an update: that is Hogwild!, accepted
// as in Factorbird, LIBMF and cuMF_SGD. How many may race is bounded by the
// width W of a Hogwild step (`params.width`): W invocations, invocation n
// running samples n, n + W, n + 2W, ... in order, as cuMF_SGD's
// batch-Hogwild! does; W = the step's sample count runs them all at once.
// Deterministic mode runs conflict-free waves in order instead: the large
// ones one dispatch each (`sgd`, W = the wave), the tail of small ones in one
// workgroup (`sgd_tail`).
//
// Each invocation adds the squared errors it saw (before its updates) into
// its own accumulator, `loss[n * MODELS + g]` for invocation n of a dispatch
// and model g: no two invocations of a dispatch share one, and the
// dispatches of a step run one after another, so no reduction (and no
// barrier) is needed. The host reads the accumulators back once per epoch and
// adds them in f64.

struct Params {
    first: u32,     // first sample of this dispatch in the sample buffer
    count: u32,     // samples in this dispatch (`sgd`), waves (`sgd_tail`)
    bias_reg: f32,
    mean: f32,
    ends: u32,      // `sgd_tail`: word index in `samples` of the waves' ends
    width: u32,     // `sgd`: invocations; each runs every width-th sample
}

const SLOT_VEC4: u32 = ROW_VEC4 * MODELS;
// Invocations of the one workgroup of `sgd_tail`.
const TAIL_GROUP: u32 = 256u;

@group(0) @binding(0) var<storage, read_write> slab: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> samples: array<u32>;  // 3 words per sample
@group(0) @binding(2) var<storage, read_write> loss: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;
@group(0) @binding(4) var<storage, read> rates: array<vec2<f32>>;  // (lr, reg) per model

// Sample `j` of the sample buffer: (slot_u, slot_i, rating bits).
fn sample(j: u32) -> vec3<u32> {
    return vec3<u32>(samples[j * 3u], samples[j * 3u + 1u], samples[j * 3u + 2u]);
}

// The updates of sample `x` (its squared error goes to accumulator `n`,
// unique within the dispatch), for every model.
fn update(x: vec3<u32>, n: u32) {
    let su = x.x * SLOT_VEC4;
    let si = x.y * SLOT_VEC4;
    let r = bitcast<f32>(x.z);
    var p: array<vec4<f32>, ROW_VEC4>;  // vec4s 0..BV: factors only
    var q: array<vec4<f32>, ROW_VEC4>;
    var pt = vec4<f32>(0.0);  // the tail vec4 BV: last factors, bias, padding
    var qt = vec4<f32>(0.0);
    for (var g = 0u; g < MODELS; g++) {
        let pu = su + g * ROW_VEC4;
        let qi = si + g * ROW_VEC4;
        var acc = vec4<f32>(0.0);
        for (var c = 0u; c < BV; c++) {
            p[c] = slab[pu + c];
            q[c] = slab[qi + c];
            acc += p[c] * q[c];
        }
        // Only the factor and bias lanes of the tail are read and written:
        // the padding is never touched.
        for (var l = 0u; l <= BL; l++) {
            pt[l] = slab[pu + BV][l];
            qt[l] = slab[qi + BV][l];
        }
        acc += pt * qt * TAIL_F;
        let e = r - (params.mean + pt[BL] + qt[BL] + (acc.x + acc.y + acc.z + acc.w));
        loss[n * MODELS + g] += e * e;

        let lr = rates[g].x;
        let reg = rates[g].y;
        for (var c = 0u; c < BV; c++) {
            slab[pu + c] = p[c] + lr * (e * q[c] - reg * p[c]);
            slab[qi + c] = q[c] + lr * (e * p[c] - reg * q[c]);
        }
        let pn = pt + lr * (TAIL_F * (e * qt - reg * pt) + TAIL_B * (e - params.bias_reg * pt));
        let qn = qt + lr * (TAIL_F * (e * pt - reg * qt) + TAIL_B * (e - params.bias_reg * qt));
        for (var l = 0u; l <= BL; l++) {
            slab[pu + BV][l] = pn[l];
            slab[qi + BV][l] = qn[l];
        }
    }
}

// One wave, or in Hogwild the whole step: `params.width` invocations, each
// running its samples in order (one sample each when the width is the
// count).
@compute @workgroup_size(64)
fn sgd(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let n = (wg.x + wg.y * nwg.x) * 64u + lid;
    if (n >= params.width || n >= params.count) {
        return;
    }
    // The next sample is loaded before this one's updates, so that its load
    // overlaps them rather than adding to the chain of an invocation's
    // samples (the samples are read-only; the rows are not, and are read
    // only when their update starts).
    var x = sample(params.first + n);
    for (var j = n; j < params.count; j += params.width) {
        let k = min(j + params.width, params.count - 1u);
        let next = sample(params.first + k);
        update(x, n);
        x = next;
    }
}

// Deterministic mode's small waves, `params.count` of them, in order, in one
// workgroup: wave w is samples `first`.. (or the previous wave's end) up to
// `samples[params.ends + w]`. A storage barrier between waves makes each
// wave's writes visible to the next within the workgroup, so this equals one
// dispatch per wave, without a dispatch's cost per wave: the long tail of
// waves that a hot row's many ratings in one batch make.
@compute @workgroup_size(TAIL_GROUP)
fn sgd_tail(@builtin(local_invocation_index) lid: u32) {
    var start = params.first;
    for (var w = 0u; w < params.count; w++) {
        let end = samples[params.ends + w];
        for (var j = start + lid; j < end; j += TAIL_GROUP) {
            update(sample(j), j - params.first);
        }
        start = end;
        storageBarrier();
    }
}
