// gather_rows: rows at given slots of the slab into a dense window
// (write-back to the host, export). The inverse of scatter_rows.

struct Params {
    first: u32,     // first entry of `slots` (and row of the window) to move
    count: u32,     // rows to move
    row_vec4: u32,  // vec4s per slot
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> slab: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> window: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> slots: array<u32>;
@group(0) @binding(3) var<uniform> params: Params;

@compute @workgroup_size(64)
fn gather_rows(
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
    window[params.first * params.row_vec4 + idx] = slab[slots[params.first + j] * params.row_vec4 + c];
}
