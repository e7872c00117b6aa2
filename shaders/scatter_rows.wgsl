// scatter_rows: staged rows from the upload window into their slots of the
// slab. One invocation moves one vec4 of one row; window row `first + j`
// goes to slot `moves[slots_at + j]`. Dispatched 2-D past 65,535 workgroups
// along x. WORKGROUP is prepended by the host (`kernels::prelude`).

// `Params`: declared by the host (kernels::kernel_params), prepended.

@group(0) @binding(0) var<storage, read_write> slab: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> window: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> moves: array<u32>;
@group(0) @binding(3) var<uniform> params: Params;

@compute @workgroup_size(WORKGROUP)
fn scatter_rows(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = (wg.x + wg.y * nwg.x) * WORKGROUP + lid;
    if (idx >= params.count * params.row_vec4) {
        return;
    }
    let j = idx / params.row_vec4;
    let c = idx - j * params.row_vec4;
    slab[moves[params.slots_at + j] * params.row_vec4 + c] = window[(params.first + j) * params.row_vec4 + c];
}
