//! The WGSL kernels, embedded with `include_str!`, their shared constants and
//! their explicit bind group layouts; compiled once per backend, never per
//! step.
//!
//! | kernel family | bindings |
//! |---|---|
//! | `map_rows` | 0 slot map (rw), 1 moves (r, dynamic), 2 params |
//! | `scatter_rows` | 0 slab (rw), 1 upload window (r, dynamic), 2 moves (r, dynamic), 3 params |
//! | `gather_rows` | 0 slab (r), 1 download window (rw), 2 moves (r, dynamic), 3 params |
//! | `sgd`, `sgd_tail` | 0 slab (rw), 1 ratings (r), 2 loss (rw), 3 params, 4 rates (r), 5 slot map (r), 6 parts (r) |
//! | `predict` | 0 slab (r), 1 test ratings (r), 2 error sums (rw), 3 params, 4 upload window (r, dynamic), 5 slot map (r) |
//!
//! Params are one uniform block of [`PARAMS_SIZE`] bytes at a dynamic
//! offset, and the moves (slots, slot-map entries) and the upload window are
//! regions of one step-input buffer at dynamic offsets, so that a step's
//! inputs are one write ([`super::resources`]).
//!
//! Constants shared with the host are written once, here, and prepended to
//! every kernel ([`prelude`]): workgroup sizes and the slot map's encoding
//! ([`crate::stage::entry`]). `sgd` and `predict` are also specialised per
//! run ([`specialize`]): the rank, the row width and the number of models as
//! WGSL constants, so that the row loops have fixed trip counts, the compiler
//! unrolls them and keeps both rows of a rating in registers, and the
//! factor/bias lane masks fold away.

use crate::data::UNKNOWN;
use crate::stage::entry;

/// WGSL source of every kernel file, by name (what the shader test
/// validates, after [`source`]).
pub const SHADERS: [(&str, &str); 5] = [
    ("map_rows", include_str!("../../shaders/map_rows.wgsl")),
    ("scatter_rows", include_str!("../../shaders/scatter_rows.wgsl")),
    ("gather_rows", include_str!("../../shaders/gather_rows.wgsl")),
    ("sgd", include_str!("../../shaders/sgd.wgsl")),
    ("predict", include_str!("../../shaders/predict.wgsl")),
];

/// Invocations per workgroup of every kernel but `sgd_tail`.
pub const WORKGROUP: u32 = 64;

/// Invocations of `sgd_tail`'s one workgroup. Deterministic mode hands it
/// the waves after the first wave smaller than this.
pub const TAIL_GROUP: u32 = 256;

/// Size of one parameter block: the largest kernel's `Params` (`sgd`'s, 12
/// words); the others are smaller.
pub const PARAMS_SIZE: u64 = 48;

/// The constants every kernel shares with the host.
pub fn prelude() -> String {
    format!(
        "// Shared with the host (kernels::prelude).\n\
         const WORKGROUP: u32 = {WORKGROUP}u;\n\
         const TAIL_GROUP: u32 = {TAIL_GROUP}u;\n\
         const ABSENT: u32 = {}u;\n\
         const IN_WINDOW: u32 = {:#x}u;\n\
         const UNKNOWN: u32 = {UNKNOWN:#x}u;\n\n",
        entry::ABSENT,
        entry::IN_WINDOW,
    )
}

/// Declares a kernel parameter struct once: the Rust struct (`repr(C)`,
/// plain words) and, as `WGSL`, the same struct in WGSL under the name
/// `Params`, which [`source`] prepends to the kernel's file. Fields are
/// `u32` or `f32` only, so that Rust and WGSL lay them out alike (4 bytes
/// each, in order); a struct is a whole number of 16-byte rows, as a
/// uniform block is.
macro_rules! kernel_params {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* $field:ident : $ty:ident,)* }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
        pub struct $name {
            $($(#[$fm])* pub $field: $ty,)*
        }

        impl $name {
            /// This struct as WGSL declares it (`struct Params`).
            pub const WGSL: &'static str =
                concat!("struct Params {\n", $("    ", stringify!($field), ": ", stringify!($ty), ",\n",)* "}\n");
            /// (name, WGSL type) of every field, in order.
            pub const FIELDS: &'static [(&'static str, &'static str)] = &[$((stringify!($field), stringify!($ty)),)*];
        }
    };
}

kernel_params! {
    /// Parameters of `map_rows`.
    pub struct MapParams {
        /// Word of the moves region where the (row, entry) pairs start.
        first: u32,
        count: u32,
        pad0: u32,
        pad1: u32,
        pad2: u32,
        pad3: u32,
        pad4: u32,
        pad5: u32,
    }
}

kernel_params! {
    /// Parameters of `scatter_rows` and `gather_rows`.
    pub struct MoveParams {
        /// First window row (upload for scatter, download for gather).
        first: u32,
        count: u32,
        row_vec4: u32,
        /// Word of the moves region holding the first row's slot.
        slots_at: u32,
        pad0: u32,
        pad1: u32,
        pad2: u32,
        pad3: u32,
    }
}

kernel_params! {
    /// Parameters of the `sgd` family; the learning rate and regularisation
    /// of each model are in the `rates` binding, the shapes in the
    /// specialisation constants. Each field has one meaning; a kernel reads
    /// those it needs.
    pub struct SgdParams {
        /// `sgd`, `sgd_tail`, `sgd_blocked`: the first part of the parts
        /// table this dispatch trains.
        first_part: u32,
        /// ... and how many parts.
        parts: u32,
        /// `sgd`: invocations, each running every `width`-th rating of a part;
        /// `sgd_tail`: its workgroup.
        width: u32,
        /// Item i's global row is `n_users + i`.
        n_users: u32,
        bias_reg: f32,
        mean: f32,
        /// Layout index of `ratings[0]` on the device (a streamed window).
        base: u32,
        /// `sgd_tiles`: the word of the parts buffer where the block starts
        /// begin (read as words).
        starts_at: u32,
        /// `sgd_tiles`: the sweep this dispatch trains ...
        sweep: u32,
        /// ... the tile shift ...
        shift: u32,
        /// ... of how many sweeps an epoch (a block's sweep is the `sweep`-th
        /// of `sweeps` equal cuts of its ratings).
        sweeps: u32,
        pad0: u32,
    }
}

kernel_params! {
    /// Parameters of `predict`.
    pub struct PredictParams {
        first: u32,
        count: u32,
        /// First workgroup sum (in (squared, absolute) pairs) of this dispatch.
        sums_at: u32,
        n_users: u32,
        mean: f32,
        min_rating: f32,
        max_rating: f32,
        pad0: u32,
    }
}

/// The parameter struct of each kernel file, as [`source`] prepends it.
fn params_wgsl(name: &str) -> &'static str {
    match name {
        "map_rows" => MapParams::WGSL,
        "scatter_rows" | "gather_rows" => MoveParams::WGSL,
        "sgd" => SgdParams::WGSL,
        "predict" => PredictParams::WGSL,
        _ => unreachable!("unknown kernel file {name}"),
    }
}

/// The shape `sgd` and `predict` are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// Factors per row (k).
    pub rank: u32,
    /// Models side by side in a slot (a grid search; 1 otherwise).
    pub models: u32,
    /// Bins per tile of the blocked order (`sgd_tiles`' workgroup; 1
    /// without tiles), at most [`MAX_LANES`].
    pub tile: u32,
}

impl Spec {
    /// `rank` and `models` without tiles.
    pub fn new(rank: u32, models: u32) -> Self {
        Spec { rank, models, tile: 1 }
    }

    /// Workers of `sgd_tiles_lanes`' workgroup: the tile, or fewer where
    /// the tile's lanes would pass [`MAX_LANES`] (the host then runs
    /// `sgd_tiles`, [`Spec::tile_lanes_fit`]).
    fn lane_tile(&self) -> u32 {
        self.tile.clamp(1, tile_cap(self.rank))
    }

    /// Whether `sgd_tiles_lanes` holds the whole tile (its workgroup of
    /// tile × lanes invocations within `max_invocations`).
    pub fn tile_lanes_fit(&self, max_invocations: u32) -> bool {
        self.lane_tile() == self.tile && self.tile * lanes(self.rank) <= max_invocations.min(MAX_LANES)
    }
}

/// `src` with the WGSL constants of `spec` in front: `RANK`, `ROW_VEC4`
/// (vec4s of one model's copy of a row), `MODELS`, `BV` and `BL` (the vec4
/// and lane of the bias, at float index `RANK`), and `TAIL_F` / `TAIL_B`
/// (1.0 on the factor / bias lanes of vec4 `BV`; its other lanes are padding),
/// `LANES` (`sgd_blocked_lanes`' workgroup: [`lanes`]), `TILE` (`sgd_tiles`'
/// workgroup) and `TILE_LANES` (`sgd_tiles_lanes`' workgroup: a tile's lanes,
/// [`Spec::lane_tile`]).
pub fn specialize(src: &str, spec: Spec) -> String {
    let k = spec.rank;
    let lane = |f: &dyn Fn(u32) -> bool| {
        let v: Vec<&str> = (0..4).map(|l| if f(l) { "1.0" } else { "0.0" }).collect();
        format!("vec4<f32>({})", v.join(", "))
    };
    format!(
        "// Specialisation constants (kernels::specialize).\n\
         const RANK: u32 = {k}u;\n\
         const ROW_VEC4: u32 = {}u;\n\
         const MODELS: u32 = {}u;\n\
         const BV: u32 = {}u;\n\
         const BL: u32 = {}u;\n\
         const TAIL_F: vec4<f32> = {};\n\
         const TAIL_B: vec4<f32> = {};\n\
         const LANES: u32 = {}u;\n\
         const TILE: u32 = {}u;\n\
         const TILE_LANES: u32 = {}u;\n\n{src}",
        crate::model::row_stride(k as usize) / 4,
        spec.models.max(1),
        k / 4,
        k % 4,
        lane(&|l| l < k % 4),
        lane(&|l| l == k % 4),
        lanes(spec.rank).min(MAX_LANES),
        spec.tile.clamp(1, MAX_LANES),
        spec.lane_tile() * lanes(spec.rank).min(MAX_LANES),
    )
}

/// Lanes of `sgd_blocked_lanes`' workgroup for `rank`: the first power of
/// two at least the vec4s of a row (`ROW_VEC4`), so that the dot product's
/// tree reduction is whole ([`crate::engine::blocked::lanes`]).
pub fn lanes(rank: u32) -> u32 {
    crate::engine::blocked::lanes(rank as usize)
}

/// The most bins of the blocked order one workgroup trains at once for
/// `rank` (a tile, [`crate::engine::BlockedEpoch`]): `sgd_tiles_lanes` gives
/// each a workgroup's [`lanes`], and a workgroup holds [`MAX_LANES`]
/// invocations on every adapter. The default order's tile is at most this
/// ([`crate::engine::blocked::tile_cap`]).
pub fn tile_cap(rank: u32) -> u32 {
    crate::engine::blocked::tile_cap(rank as usize)
}

/// The most lanes `sgd_blocked_lanes` takes (every adapter runs workgroups
/// of 256); above it (ranks past 1020) a part gets one invocation.
pub const MAX_LANES: u32 = crate::engine::blocked::WORKGROUP_INVOCATIONS;

/// The WGSL source of kernel file `name`: the prelude, its `Params`
/// ([`kernel_params`]), then (for `sgd` and `predict`) the specialisation
/// for `spec`, then the file.
pub fn source(name: &str, spec: Spec) -> String {
    let src = SHADERS.iter().find(|(k, _)| *k == name).expect("known kernel").1;
    let head = prelude() + params_wgsl(name) + "\n";
    match name {
        "sgd" | "predict" => head + &specialize(src, spec),
        _ => head + src,
    }
}

/// How a kernel sees one binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    /// Storage, read and written.
    Rw,
    /// Storage, read only.
    Read,
    /// Storage, read only, at a dynamic offset (a region of the step input).
    ReadAt,
    /// The parameter block: uniform, at a dynamic offset.
    Params,
}

fn layout_entry(binding: u32, u: Use) -> wgpu::BindGroupLayoutEntry {
    let ty = match u {
        Use::Params => wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: true,
            min_binding_size: wgpu::BufferSize::new(PARAMS_SIZE),
        },
        _ => wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only: u != Use::Rw },
            has_dynamic_offset: u == Use::ReadAt,
            min_binding_size: None,
        },
    };
    wgpu::BindGroupLayoutEntry { binding, visibility: wgpu::ShaderStages::COMPUTE, ty, count: None }
}

/// A compiled kernel and its bind group layout.
pub struct Kernel {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

/// Every kernel, compiled once per device. `sgd_tail`, `sgd_blocked`,
/// `sgd_blocked_lanes`, `sgd_tiles` and `sgd_tiles_lanes` are further entry
/// points of `sgd.wgsl`, on `sgd`'s bind group layout (one bind group serves
/// them all).
pub struct Kernels {
    pub map_rows: Kernel,
    pub scatter: Kernel,
    pub gather: Kernel,
    pub sgd: Kernel,
    pub sgd_tail: Kernel,
    pub sgd_blocked: Kernel,
    pub sgd_blocked_lanes: Kernel,
    pub sgd_tiles: Kernel,
    pub sgd_tiles_lanes: Kernel,
    pub predict: Kernel,
}

/// The kernels of `entries`, entry points of the file `file` (compiled for
/// `spec`), on one bind group layout of `uses`.
fn family<const N: usize>(
    device: &wgpu::Device,
    spec: Spec,
    file: &str,
    uses: &[Use],
    entries: [&str; N],
) -> [Kernel; N] {
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(file),
        source: wgpu::ShaderSource::Wgsl(source(file, spec).into()),
    });
    let entries_layout: Vec<_> = uses.iter().enumerate().map(|(b, &u)| layout_entry(b as u32, u)).collect();
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(&format!("{file} bind group layout")),
        entries: &entries_layout,
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(&format!("{file} pipeline layout")),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    entries.map(|entry| Kernel {
        pipeline: device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        }),
        layout: layout.clone(),
    })
}

impl Kernels {
    /// Compiles every kernel, `sgd` and `predict` for `spec`.
    pub fn new(device: &wgpu::Device, spec: Spec) -> Self {
        use Use::*;
        let [map_rows] = family(device, spec, "map_rows", &[Rw, ReadAt, Params], ["map_rows"]);
        let [scatter] = family(device, spec, "scatter_rows", &[Rw, ReadAt, ReadAt, Params], ["scatter_rows"]);
        let [gather] = family(device, spec, "gather_rows", &[Read, Rw, ReadAt, Params], ["gather_rows"]);
        let [sgd, sgd_tail, sgd_blocked, sgd_blocked_lanes, sgd_tiles, sgd_tiles_lanes] = family(
            device,
            spec,
            "sgd",
            &[Rw, Read, Rw, Params, Read, Read, Read],
            ["sgd", "sgd_tail", "sgd_blocked", "sgd_blocked_lanes", "sgd_tiles", "sgd_tiles_lanes"],
        );
        let [predict] = family(device, spec, "predict", &[Read, Read, Rw, Params, ReadAt, Read], ["predict"]);
        Kernels {
            map_rows,
            scatter,
            gather,
            sgd,
            sgd_tail,
            sgd_blocked,
            sgd_blocked_lanes,
            sgd_tiles,
            sgd_tiles_lanes,
            predict,
        }
    }
}

/// Workgroup counts for `invocations` threads in groups of `group`: 1-D while
/// it fits in `max_per_dim` workgroups, 2-D past that (the kernels linearise
/// `workgroup_id.x + workgroup_id.y * num_workgroups.x`).
pub fn dispatch_size(invocations: u64, group: u32, max_per_dim: u32) -> (u32, u32) {
    let groups = invocations.div_ceil(group as u64).max(1);
    if groups <= max_per_dim as u64 {
        (groups as u32, 1)
    } else {
        let y = groups.div_ceil(max_per_dim as u64);
        let x = groups.div_ceil(y);
        (x as u32, y as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatch_goes_2d_past_the_limit() {
        assert_eq!(dispatch_size(1, 64, 65535), (1, 1));
        assert_eq!(dispatch_size(64 * 65535, 64, 65535), (65535, 1));
        let (x, y) = dispatch_size(64 * 65536, 64, 65535);
        assert_eq!(y, 2);
        assert!(x as u64 * y as u64 * 64 >= 64 * 65536 && x <= 65535);
    }

    #[test]
    fn every_shader_parses_and_validates_with_naga() {
        // Every bias lane, the smallest and largest ranks, one and 8 models.
        let specs = [(1, 1, 1), (2, 1, 4), (3, 8, 1), (4, 1, 256), (32, 1, 16), (32, 8, 3), (1024, 1, 2)];
        for (name, _) in SHADERS {
            for (rank, models, tile) in specs {
                let src = source(name, Spec { rank, models, tile });
                let module = naga::front::wgsl::parse_str(&src)
                    .unwrap_or_else(|e| panic!("{name} rank {rank}: {}", e.emit_to_string(&src)));
                naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::empty())
                    .validate(&module)
                    .unwrap_or_else(|e| panic!("{name} rank {rank}: {e:?}"));
                assert!(
                    module.entry_points.iter().any(|ep| ep.name == name),
                    "{name}.wgsl has no entry point named {name}"
                );
                if name == "sgd" {
                    for entry in ["sgd_tail", "sgd_blocked", "sgd_blocked_lanes", "sgd_tiles", "sgd_tiles_lanes"] {
                        assert!(module.entry_points.iter().any(|ep| ep.name == entry), "sgd.wgsl lacks {entry}");
                    }
                }
            }
        }
    }

    #[test]
    fn params_are_one_block_and_the_prelude_carries_the_host_constants() {
        let structs = [
            (size_of::<MapParams>(), MapParams::FIELDS),
            (size_of::<MoveParams>(), MoveParams::FIELDS),
            (size_of::<SgdParams>(), SgdParams::FIELDS),
            (size_of::<PredictParams>(), PredictParams::FIELDS),
        ];
        for (size, fields) in structs {
            assert_eq!(size, 4 * fields.len(), "plain words: {fields:?}");
            assert!(size as u64 <= PARAMS_SIZE && size % 16 == 0, "{fields:?}");
        }
        assert_eq!(structs.iter().map(|s| s.0 as u64).max(), Some(PARAMS_SIZE));
        let p = prelude();
        assert!(p.contains(&format!("const WORKGROUP: u32 = {WORKGROUP}u;")), "{p}");
        assert!(p.contains("const IN_WINDOW: u32 = 0x80000000u;") && p.contains("const ABSENT: u32 = 0u;"), "{p}");
        assert!(p.contains("const UNKNOWN: u32 = 0xffffffffu;"), "{p}");
    }

    /// The compiled `Params` of every kernel file is the Rust struct, field
    /// by field: name, byte offset and type, in order.
    #[test]
    fn each_kernel_reads_its_params_as_the_host_writes_them() {
        let files = [
            ("map_rows", MapParams::FIELDS),
            ("scatter_rows", MoveParams::FIELDS),
            ("gather_rows", MoveParams::FIELDS),
            ("sgd", SgdParams::FIELDS),
            ("predict", PredictParams::FIELDS),
        ];
        for (name, fields) in files {
            let module = naga::front::wgsl::parse_str(&source(name, Spec::new(7, 2))).unwrap();
            let (_, params) = module.types.iter().find(|(_, t)| t.name.as_deref() == Some("Params")).expect(name);
            let naga::TypeInner::Struct { members, span } = &params.inner else { panic!("{name}: Params") };
            assert_eq!(*span as usize, 4 * fields.len(), "{name}");
            assert_eq!(members.len(), fields.len(), "{name}");
            for (k, (m, (field, ty))) in members.iter().zip(fields).enumerate() {
                assert_eq!(m.name.as_deref(), Some(*field), "{name}: field {k}");
                assert_eq!(m.offset as usize, 4 * k, "{name}.{field}: offset");
                let scalar = match module.types[m.ty].inner {
                    naga::TypeInner::Scalar(s) => s,
                    ref other => panic!("{name}.{field}: {other:?}"),
                };
                let want = match *ty {
                    "u32" => naga::Scalar::U32,
                    "f32" => naga::Scalar::F32,
                    other => panic!("{name}.{field}: type {other}"),
                };
                assert_eq!(scalar, want, "{name}.{field}: type");
            }
        }
    }

    #[test]
    fn specialisation_places_the_bias_lane() {
        let src = specialize("", Spec::new(33, 2));
        assert!(src.contains("const ROW_VEC4: u32 = 9u;"), "{src}");
        assert!(src.contains("const BV: u32 = 8u;") && src.contains("const BL: u32 = 1u;"), "{src}");
        assert!(src.contains("const TAIL_F: vec4<f32> = vec4<f32>(1.0, 0.0, 0.0, 0.0);"), "{src}");
        assert!(src.contains("const TAIL_B: vec4<f32> = vec4<f32>(0.0, 1.0, 0.0, 0.0);"), "{src}");
        assert!(src.contains("const MODELS: u32 = 2u;"), "{src}");
        let src = specialize("", Spec { rank: 32, models: 1, tile: 16 });
        assert!(src.contains("const TAIL_F: vec4<f32> = vec4<f32>(0.0, 0.0, 0.0, 0.0);"), "{src}");
        assert!(src.contains("const TAIL_B: vec4<f32> = vec4<f32>(1.0, 0.0, 0.0, 0.0);"), "{src}");
        assert!(src.contains("const LANES: u32 = 16u;"), "rank 32: 9 vec4s, 16 lanes: {src}");
        assert!(src.contains("const TILE: u32 = 16u;") && src.contains("const TILE_LANES: u32 = 256u;"), "{src}");
        assert_eq!((lanes(1), lanes(3), lanes(4), lanes(128)), (1, 1, 2, 64));
        // A tile whose lanes pass a workgroup: the lanes kernel is compiled
        // smaller and not used.
        let wide = Spec { rank: 128, models: 1, tile: 8 };
        assert!(specialize("", wide).contains("const TILE_LANES: u32 = 256u;"));
        assert!(!wide.tile_lanes_fit(256) && Spec { tile: 4, ..wide }.tile_lanes_fit(256));
        assert_eq!((tile_cap(32), tile_cap(128), tile_cap(2000)), (16, 4, 1));
    }
}
