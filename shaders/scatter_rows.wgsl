// scatter_rows: staged rows from the upload window into their slots of the slab.
//
// One invocation moves one vec4 of one row; row j of the window goes to slot
// slots[j]. Dispatched 2-D when the vec4 count needs more than 65,535
// workgroups along x.

struct Params {
    first: u32,     // first entry of `slots` (and row of the window) to move
    count: u32,     // rows to move
    row_vec4: u32,  // vec4s per slot
    _pad: u32,
}

@group(0) @binding(0) var<storage, read_write> slab: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> window: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> slots: array<u32>;
@group(0) @binding(3) var<uniform> params: Params;

@compute @workgroup_size(64)
fn scatter_rows(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = (wg.x + wg.y * nwg.x) * 64u + lid;
    if (idx >= params.count * params.row_vec4) {
        return;
    }
    let j = idx / params.row_vec4;
    let c = idx - j * params.row_vec4;
    slab[slots[params.first + j] * params.row_vec4 + c] = window[params.first * params.row_vec4 + idx];
}
