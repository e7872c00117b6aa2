// sgd: per-sample SGD of biased MF over the training ratings held on the
// device, for MODELS models side by side (a grid search; 1 otherwise). A
// kernel turns a rating's (user, item) into slots itself, through the slot
// map (entry 1 + slot), so the host never touches a rating.
//
// Specialised per run: the host prepends the constants RANK, ROW_VEC4 (vec4s
// of one model's copy of a row), MODELS, BV and BL (the vec4 and lane of the
// bias), and TAIL_F / TAIL_B (1.0 on the factor / bias lanes of vec4 BV),
// after the shared ones (ABSENT, IN_WINDOW, WORKGROUP, TAIL_GROUP); see
// `kernels::prelude` and `kernels::specialize`. With the loop bounds known,
// the compiler unrolls the row loops and keeps both rows in registers: each
// float of a row is read once and written once per model, and the padding is
// never touched.
//
// Slot layout: one slot holds every model's copy of a row, ROW_VEC4 vec4s
// each. A copy is RANK factors, the bias at float index RANK, and zero
// padding to a whole number of vec4s. Both rows are updated from their old
// values; model g uses its own learning rate and regularisation (`rates[g]`,
// the schedule already applied).
//
// Work comes as parts: `parts[k]` = (first rating, ratings) of the layout,
// each walked in order. `sgd` runs `width` invocations over the parts
// `first_part ..< first_part + parts`: invocation n takes ratings n, n +
// width, n + 2·width, ... of every part in turn, so at most `width` ratings
// update at once (cuMF_SGD's batch-Hogwild!); concurrent updates of one row
// may race and lose an update, as Hogwild! accepts. Deterministic mode hands
// it one conflict-free wave as a part with `width` its length (every rating
// at once, none sharing a row), and the tail of small waves to `sgd_tail`,
// one workgroup walking its parts in order with a storage barrier between.
//
// Each invocation adds the squared errors it saw (before its updates) into
// its own accumulator, `loss[n * MODELS + g]`: no two invocations of a
// dispatch share one, and the dispatches of an epoch run one after another,
// so no reduction (and no barrier) is needed. The host reads them back once
// per epoch and adds them in f64.

// `Params`: declared by the host (kernels::kernel_params), prepended.

const SLOT_VEC4: u32 = ROW_VEC4 * MODELS;

@group(0) @binding(0) var<storage, read_write> slab: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> ratings: array<u32>;  // (user, item, rating bits)
@group(0) @binding(2) var<storage, read_write> loss: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;
@group(0) @binding(4) var<storage, read> rates: array<vec2<f32>>;  // (lr, reg) per model
@group(0) @binding(5) var<storage, read> slot_map: array<u32>;
@group(0) @binding(6) var<storage, read> parts: array<vec2<u32>>;  // (first rating, ratings)

// Rating `i` of the layout: (user, item, rating bits).
fn rating(i: u32) -> vec3<u32> {
    let k = (i - params.base) * 3u;
    return vec3<u32>(ratings[k], ratings[k + 1u], ratings[k + 2u]);
}

// The updates of rating `x` (its squared error goes to accumulator `n`,
// unique within the dispatch), for every model. A row missing from the slab
// would be a scheduling bug: such a rating is skipped rather than reading
// another row's slot.
fn update(x: vec3<u32>, n: u32) {
    let eu = slot_map[x.x];
    let ei = slot_map[params.n_users + x.y];
    if (eu == ABSENT || ei == ABSENT || ((eu | ei) & IN_WINDOW) != 0u) {
        return;
    }
    let su = (eu - 1u) * SLOT_VEC4;
    let si = (ei - 1u) * SLOT_VEC4;
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

@compute @workgroup_size(WORKGROUP)
fn sgd(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let n = (wg.x + wg.y * nwg.x) * WORKGROUP + lid;
    if (n >= params.width) {
        return;
    }
    for (var k = params.first_part; k < params.first_part + params.parts; k++) {
        let part = parts[k];
        if (n >= part.y) {
            continue;
        }
        // The next rating is loaded before this one's updates, so that its
        // load overlaps them rather than adding to the chain of an
        // invocation's ratings (the ratings are read-only; the rows are
        // not, and are read only when their update starts).
        var x = rating(part.x + n);
        for (var j = n; j < part.y; j += params.width) {
            let next = rating(part.x + min(j + params.width, part.y - 1u));
            update(x, n);
            x = next;
        }
    }
}

// The parts `first_part ..< first_part + parts` in order, in one workgroup:
// a storage barrier between parts makes each one's writes visible to the
// next within the workgroup, so this equals one dispatch per part, without a
// dispatch's cost per part: deterministic mode's long tail of small waves
// that a hot row's many ratings in one part make.
@compute @workgroup_size(TAIL_GROUP)
fn sgd_tail(@builtin(local_invocation_index) lid: u32) {
    for (var k = params.first_part; k < params.first_part + params.parts; k++) {
        let part = parts[k];
        for (var j = lid; j < part.y; j += TAIL_GROUP) {
            update(rating(part.x + j), lid);
        }
        storageBarrier();
    }
}

// The blocked order's round: the parts `first_part ..< first_part + parts`
// share no row (their blocks share no user bin and no item bin), so each is
// walked in order by a worker of its own and nothing races. One invocation
// per part here; `sgd_blocked_lanes` gives a part a workgroup instead.
@compute @workgroup_size(WORKGROUP)
fn sgd_blocked(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let n = (wg.x + wg.y * nwg.x) * WORKGROUP + lid;
    if (n >= params.parts) {
        return;
    }
    let part = parts[params.first_part + n];
    for (var j = 0u; j < part.y; j++) {
        update(rating(part.x + j), n);
    }
}

// A blocked part per workgroup of LANES lanes (the first power of two at
// least ROW_VEC4), as cuMF_SGD gives a warp to a sample: lane c holds vec4 c
// of both rows (lane BV the last factors and the biases), the dot product is
// a tree reduction in workgroup memory, and each lane updates its own vec4s.
// A lane reads back only what it wrote, so workgroup barriers suffice.
// `sgd_tiles_lanes` puts TILE such workers side by side in one workgroup:
// worker `member`'s lanes use `lane_dot[member · LANES ..]` and
// `lane_bias[member]`.
var<workgroup> lane_dot: array<f32, TILE_LANES>;
var<workgroup> lane_bias: array<vec2<f32>, TILE>;
var<workgroup> lane_len: u32;

// Rating `x`'s update by lane `lane` of worker `member` (its squared error
// into accumulator `n`); `live`: the worker has a rating at this step. Every
// lane of the workgroup calls it at every step, live or not, so that the
// barriers stay in uniform control flow.
fn lanes_update(x: vec3<u32>, live: bool, lane: u32, member: u32, n: u32) {
    let at = member * LANES;
    let eu = slot_map[x.x];
    let ei = slot_map[params.n_users + x.y];
    let ok = live && lane <= BV && eu != ABSENT && ei != ABSENT && ((eu | ei) & IN_WINDOW) == 0u;
    let su = (max(eu, 1u) - 1u) * SLOT_VEC4;
    let si = (max(ei, 1u) - 1u) * SLOT_VEC4;
    let r = bitcast<f32>(x.z);
    for (var g = 0u; g < MODELS; g++) {
        let pu = su + g * ROW_VEC4 + lane;
        let qi = si + g * ROW_VEC4 + lane;
        var p = vec4<f32>(0.0);
        var q = vec4<f32>(0.0);
        if (ok) {
            p = slab[pu];
            q = slab[qi];
        }
        var d = p * q;
        if (lane == BV) {
            d = d * TAIL_F;
            lane_bias[member] = vec2<f32>(p[BL], q[BL]);
        }
        lane_dot[at + lane] = d.x + d.y + d.z + d.w;
        workgroupBarrier();
        for (var stride = LANES / 2u; stride > 0u; stride >>= 1u) {
            if (lane < stride) {
                lane_dot[at + lane] += lane_dot[at + lane + stride];
            }
            workgroupBarrier();
        }
        let e = r - (params.mean + lane_bias[member].x + lane_bias[member].y + lane_dot[at]);
        if (lane == 0u && ok) {
            loss[n * MODELS + g] += e * e;
        }
        let lr = rates[g].x;
        let reg = rates[g].y;
        if (ok && lane < BV) {
            slab[pu] = p + lr * (e * q - reg * p);
            slab[qi] = q + lr * (e * p - reg * q);
        }
        if (ok && lane == BV) {
            let pn = p + lr * (TAIL_F * (e * q - reg * p) + TAIL_B * (e - params.bias_reg * p));
            let qn = q + lr * (TAIL_F * (e * p - reg * q) + TAIL_B * (e - params.bias_reg * q));
            for (var l = 0u; l <= BL; l++) {
                slab[pu][l] = pn[l];
                slab[qi][l] = qn[l];
            }
        }
        // lane_dot and lane_bias are reused by the next update.
        workgroupBarrier();
    }
}

@compute @workgroup_size(LANES)
fn sgd_blocked_lanes(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let w = wg.x + wg.y * nwg.x;
    if (w >= params.parts) {
        return;
    }
    let part = parts[params.first_part + w];
    if (lane == 0u) {
        lane_len = part.y;
    }
    let len = workgroupUniformLoad(&lane_len);
    for (var j = 0u; j < len; j++) {
        lanes_update(rating(part.x + j), true, lane, 0u, w);
    }
}

// ---------------------------------------------------------------------------
// The blocked order in tiles, for a slab that holds every row (see
// docs/ARCHITECTURE.md, "Schedules"): one dispatch per tile shift c of sweep
// v, one workgroup per tile k (G = num_workgroups tiles a side, bins = G ·
// TILE), worker j of the tile being global worker i = k · TILE + j. Round r
// of the tile gives worker i block (α(i), β(((k + c) mod G) · TILE + (j + r)
// mod TILE)): the TILE rounds run in the tiles' order with a storage barrier
// between, so no dispatch per round. The blocks of a round share no row, the
// tiles of a dispatch share none either: nothing races.
//
// `parts`, read as words from word `first_part` on: the block starts (bins²
// + 1 words: block b is ratings starts[b] ..< starts[b + 1]), then per sweep
// α (bins), β (bins), the shifts (G, used by the host), the rounds (TILE).
// Params: `starts_at` (the block starts' first word), `sweep`, `shift` and
// `sweeps`; `base` is 0 (ratings resident). Sweep v of a block is the v-th of
// `sweeps` equal cuts of its ratings, as the host's layout cuts it.

fn word(w: u32) -> u32 {
    return parts[w >> 1u][w & 1u];
}

// Block `b`'s part in sweep `v`: [start, end) of the layout. len·v/sweeps as
// q·v + rem·v/sweeps (q = len / sweeps), so nothing overflows for up to 2^16
// sweeps.
fn sweep_part(b: u32, v: u32) -> vec2<u32> {
    let sweeps = params.sweeps;
    let s = word(params.starts_at + b);
    let len = word(params.starts_at + b + 1u) - s;
    let q = len / sweeps;
    let rem = len % sweeps;
    return vec2<u32>(s + q * v + (rem * v) / sweeps, s + q * (v + 1u) + (rem * (v + 1u)) / sweeps);
}

// Where worker (k, j)'s blocks come from in this dispatch: the word of its
// user bin α(i), of the first item bin of its tile shifted by c, and of the
// rounds' order.
fn tile_words(k: u32, j: u32, g: u32) -> vec3<u32> {
    let bins = g * TILE;
    let sweep = params.starts_at + bins * bins + 1u + params.sweep * (2u * bins + g + TILE);
    return vec3<u32>(sweep + k * TILE + j, sweep + bins + ((k + params.shift) % g) * TILE, sweep + 2u * bins + g);
}

// Worker j's block in round f of the tile.
fn tile_block(w: vec3<u32>, j: u32, f: u32, bins: u32) -> vec2<u32> {
    let r = word(w.z + f);
    return sweep_part(word(w.x) * bins + word(w.y + (j + r) % TILE), params.sweep);
}

@compute @workgroup_size(TILE)
fn sgd_tiles(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) j: u32,
) {
    let w = tile_words(wg.x, j, nwg.x);
    let i = wg.x * TILE + j;
    for (var f = 0u; f < TILE; f++) {
        let span = tile_block(w, j, f, nwg.x * TILE);
        for (var x = span.x; x < span.y; x++) {
            update(rating(x), i);
        }
        storageBarrier();
    }
}

// `sgd_tiles` with a worker of LANES lanes (`lanes_update`): the tile's
// TILE workers side by side in one workgroup, all of them stepping through
// the round's longest block so that the barriers stay in uniform control
// flow.
var<workgroup> tile_len: array<u32, TILE>;
var<workgroup> tile_longest: u32;

@compute @workgroup_size(TILE_LANES)
fn sgd_tiles_lanes(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let j = lid / LANES;
    let lane = lid % LANES;
    let w = tile_words(wg.x, j, nwg.x);
    let i = wg.x * TILE + j;
    for (var f = 0u; f < TILE; f++) {
        let span = tile_block(w, j, f, nwg.x * TILE);
        let len = span.y - span.x;
        if (lane == 0u) {
            tile_len[j] = len;
        }
        workgroupBarrier();
        if (lid == 0u) {
            var m = 0u;
            for (var u = 0u; u < TILE; u++) {
                m = max(m, tile_len[u]);
            }
            tile_longest = m;
        }
        let longest = workgroupUniformLoad(&tile_longest);
        for (var n = 0u; n < longest; n++) {
            let live = n < len;
            var x = vec3<u32>(0u);
            if (live) {
                x = rating(span.x + n);
            }
            lanes_update(x, live, lane, j, i);
        }
        storageBarrier();
    }
}
