// map_rows: sets entries of the device's slot map, one u32 per global row
// (0 = not on the device, 1 + slot = in that slab slot, IN_WINDOW | index =
// in the upload window), from the step's (row, entry) pairs. The host lists
// no row twice in one dispatch, so the writes never collide.
//
// ABSENT, IN_WINDOW, UNKNOWN and WORKGROUP are prepended by the host
// (`kernels::prelude`).

// `Params`: declared by the host (kernels::kernel_params), prepended.

@group(0) @binding(0) var<storage, read_write> slot_map: array<u32>;
@group(0) @binding(1) var<storage, read> moves: array<u32>;
@group(0) @binding(2) var<uniform> params: Params;

@compute @workgroup_size(WORKGROUP)
fn map_rows(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let k = (wg.x + wg.y * nwg.x) * WORKGROUP + lid;
    if (k >= params.count) {
        return;
    }
    let at = params.first + 2u * k;
    slot_map[moves[at]] = moves[at + 1u];
}
