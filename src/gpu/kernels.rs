//! The four WGSL kernels of DESIGN.md §5, embedded with `include_str!`, each
//! with an explicit bind group layout:
//!
//! | binding | scatter_rows | gather_rows | sgd | predict |
//! |---|---|---|---|---|
//! | 0 | slab (rw) | slab (r) | slab (rw) | slab (r) |
//! | 1 | upload window (r) | download window (rw) | samples (r) | samples (r) |
//! | 2 | slots (r) | slots (r) | loss (rw) | error sums (rw) |
//! | 3 | params (uniform, dynamic offset) | same | same | same |
//! | 4 | | | rates (r): (η_t, λ) per model | upload window (r): rows staged read-only for evaluation |
//!
//! `sgd.wgsl` has a second entry point, `sgd_tail`, on `sgd`'s layout: it
//! runs deterministic mode's tail of small waves in one workgroup.
//!
//! `sgd` and `predict` serve `models` models side by side (a grid search):
//! one slot holds every model's copy of a row, `row_vec4` vec4s each.
//!
//! `sgd` and `predict` are specialised per run: [`specialize`] prepends the
//! rank, the row width and the number of models as WGSL constants, so that
//! the row loops have fixed trip counts. The compiler then unrolls them and
//! keeps both rows of a sample in registers (each row is read once and
//! written once per model), and the factor/bias lane masks fold away. The
//! kernels are compiled once per backend, never per batch.

/// WGSL source of every kernel, by name: what the shader test validates
/// (`sgd` and `predict` after [`specialize`]).
pub const SHADERS: [(&str, &str); 4] = [
    ("scatter_rows", include_str!("../../shaders/scatter_rows.wgsl")),
    ("gather_rows", include_str!("../../shaders/gather_rows.wgsl")),
    ("sgd", include_str!("../../shaders/sgd.wgsl")),
    ("predict", include_str!("../../shaders/predict.wgsl")),
];

/// Invocations per workgroup of every kernel (`@workgroup_size(64)`).
pub const WORKGROUP: u32 = 64;

/// Size of one parameter block; blocks sit at multiples of [`PARAMS_STRIDE`]
/// in one uniform buffer and are chosen with a dynamic offset per dispatch.
pub const PARAMS_SIZE: u64 = 32;
/// Every adapter's `min_uniform_buffer_offset_alignment` is at most 256.
pub const PARAMS_STRIDE: u64 = 256;

/// Parameters of `scatter_rows` and `gather_rows`.
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct MoveParams {
    pub first: u32,
    pub count: u32,
    pub row_vec4: u32,
    pub _pad: u32,
}

/// Parameters of `sgd`; the learning rate and regularisation of each model
/// are in the `rates` binding, the shapes in the specialisation constants.
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SgdParams {
    pub first: u32,
    /// Samples (`sgd`), or waves (`sgd_tail`).
    pub count: u32,
    pub bias_reg: f32,
    pub mean: f32,
    /// `sgd_tail`: the word of `samples` where the waves' ends start.
    pub ends: u32,
    /// `sgd`: invocations, each running every `width`-th sample in order
    /// (`count` runs every sample at once).
    pub width: u32,
    pub _pad: [u32; 2],
}

/// Parameters of `predict`.
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PredictParams {
    pub first: u32,
    pub count: u32,
    pub mean: f32,
    pub min_rating: f32,
    pub max_rating: f32,
    pub _pad: [u32; 3],
}

/// The shape `sgd` and `predict` are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// Factors per row (k).
    pub rank: u32,
    /// Models side by side in a slot (a grid search; 1 otherwise).
    pub models: u32,
}

/// `src` with the WGSL constants of `spec` in front: `RANK`, `ROW_VEC4`
/// (vec4s of one model's copy of a row), `MODELS`, `BV` and `BL` (the vec4
/// and lane of the bias, at float index `RANK`), and `TAIL_F` / `TAIL_B`
/// (1.0 on the factor / bias lanes of vec4 `BV`; its other lanes are padding).
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
         const TAIL_B: vec4<f32> = {};\n\n{src}",
        crate::model::row_stride(k as usize) / 4,
        spec.models.max(1),
        k / 4,
        k % 4,
        lane(&|l| l < k % 4),
        lane(&|l| l == k % 4),
    )
}

/// A compiled kernel and its bind group layout.
pub struct Kernel {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

/// All four kernels, compiled once per device. `sgd_tail` is the second
/// entry point of `sgd.wgsl`, on `sgd`'s bind group layout (one bind group
/// serves both).
pub struct Kernels {
    pub scatter: Kernel,
    pub gather: Kernel,
    pub sgd: Kernel,
    pub sgd_tail: Kernel,
    pub predict: Kernel,
}

/// Invocations of `sgd_tail`'s one workgroup (`TAIL_GROUP` in `sgd.wgsl`).
/// Deterministic mode hands it the waves after the first wave smaller than
/// this.
pub const TAIL_GROUP: u32 = 256;

fn storage(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

fn params_entry() -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding: 3,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: true,
            min_binding_size: wgpu::BufferSize::new(PARAMS_SIZE),
        },
        count: None,
    }
}

/// The kernels of `entries`, entry points of one module (the first named as
/// its file, compiled for `spec`), on one bind group layout.
fn kernels<const N: usize>(
    device: &wgpu::Device,
    spec: Spec,
    rw: [bool; 3],
    extra_read: bool,
    entries: [&str; N],
) -> [Kernel; N] {
    let name = entries[0];
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(name),
        source: wgpu::ShaderSource::Wgsl(source(name, spec).into()),
    });
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(&format!("{name} bind group layout")),
        entries: &[storage(0, !rw[0]), storage(1, !rw[1]), storage(2, !rw[2]), params_entry(), storage(4, true)]
            [..if extra_read { 5 } else { 4 }],
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(&format!("{name} pipeline layout")),
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

/// The WGSL source of kernel `name`, specialised for `spec` where it takes
/// constants.
pub fn source(name: &str, spec: Spec) -> String {
    let src = SHADERS.iter().find(|(k, _)| *k == name).expect("known kernel").1;
    match name {
        "sgd" | "predict" => specialize(src, spec),
        _ => src.to_string(),
    }
}

impl Kernels {
    /// Compiles the four kernels, `sgd` and `predict` for `spec`.
    pub fn new(device: &wgpu::Device, spec: Spec) -> Self {
        let [scatter] = kernels(device, spec, [true, false, false], false, ["scatter_rows"]);
        let [gather] = kernels(device, spec, [false, true, false], false, ["gather_rows"]);
        let [sgd, sgd_tail] = kernels(device, spec, [true, false, true], true, ["sgd", "sgd_tail"]);
        let [predict] = kernels(device, spec, [false, false, true], true, ["predict"]);
        Kernels { scatter, gather, sgd, sgd_tail, predict }
    }
}

/// Workgroup counts for `invocations` threads: 1-D while it fits in
/// `max_per_dim` workgroups, 2-D past that (the kernels linearise
/// `workgroup_id.x + workgroup_id.y * num_workgroups.x`).
pub fn dispatch_size(invocations: u64, max_per_dim: u32) -> (u32, u32) {
    let groups = invocations.div_ceil(WORKGROUP as u64).max(1);
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
        assert_eq!(dispatch_size(1, 65535), (1, 1));
        assert_eq!(dispatch_size(64 * 65535, 65535), (65535, 1));
        let (x, y) = dispatch_size(64 * 65536, 65535);
        assert_eq!(y, 2);
        assert!(x as u64 * y as u64 * 64 >= 64 * 65536 && x <= 65535);
    }

    #[test]
    fn every_shader_parses_and_validates_with_naga() {
        // Every bias lane, the smallest and largest ranks, one and 8 models.
        let specs = [(1, 1), (2, 1), (3, 8), (4, 1), (32, 1), (32, 8), (1024, 1)];
        for (name, _) in SHADERS {
            for (rank, models) in specs {
                let src = source(name, Spec { rank, models });
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
                    assert!(module.entry_points.iter().any(|ep| ep.name == "sgd_tail"), "sgd.wgsl lacks sgd_tail");
                }
            }
        }
    }

    #[test]
    fn specialisation_places_the_bias_lane() {
        let src = specialize("", Spec { rank: 33, models: 2 });
        assert!(src.contains("const ROW_VEC4: u32 = 9u;"), "{src}");
        assert!(src.contains("const BV: u32 = 8u;") && src.contains("const BL: u32 = 1u;"), "{src}");
        assert!(src.contains("const TAIL_F: vec4<f32> = vec4<f32>(1.0, 0.0, 0.0, 0.0);"), "{src}");
        assert!(src.contains("const TAIL_B: vec4<f32> = vec4<f32>(0.0, 1.0, 0.0, 0.0);"), "{src}");
        assert!(src.contains("const MODELS: u32 = 2u;"), "{src}");
        let src = specialize("", Spec { rank: 32, models: 1 });
        assert!(src.contains("const TAIL_F: vec4<f32> = vec4<f32>(0.0, 0.0, 0.0, 0.0);"), "{src}");
        assert!(src.contains("const TAIL_B: vec4<f32> = vec4<f32>(1.0, 0.0, 0.0, 0.0);"), "{src}");
    }
}
