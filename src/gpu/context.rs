//! The wgpu context, built once: instance → adapter → device → queue, in the
//! style of wgpu's own examples. Adapter choice honours `--backend`,
//! `--adapter SUBSTRING` and wgpu's `WGPU_*` environment variables
//! (`WGPU_BACKEND`, `WGPU_ADAPTER_NAME`, `WGPU_POWER_PREF`, ...).

use serde::Serialize;

use crate::error::{Error, Result};

/// Which backend `--backend` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendChoice {
    /// The best GPU adapter; the CPU backend if there is none.
    Auto,
    Vulkan,
    Metal,
    Dx12,
    Gl,
    /// The browser's WebGPU (the page built by `scripts/web.sh`).
    #[serde(rename = "webgpu")]
    WebGpu,
    /// The multi-threaded Hogwild CPU backend (no GPU).
    Cpu,
    /// wgpu's noop backend: the whole GPU path on the host with no kernel
    /// run (buffers, writes, copies and maps are real). It measures what
    /// the host can feed an infinitely fast GPU: a ceiling, not a model.
    Noop,
}

impl crate::Named for BackendChoice {
    const ALL: &'static [Self] = &[
        BackendChoice::Auto,
        BackendChoice::Vulkan,
        BackendChoice::Metal,
        BackendChoice::Dx12,
        BackendChoice::Gl,
        BackendChoice::WebGpu,
        BackendChoice::Cpu,
        BackendChoice::Noop,
    ];
    fn name(self) -> &'static str {
        BackendChoice::name(self)
    }
    fn about(self) -> &'static str {
        match self {
            BackendChoice::Auto => "The best GPU adapter; the CPU backend if there is none",
            BackendChoice::Vulkan => "Vulkan (Linux, Windows, Android; Mesa's lavapipe without a GPU)",
            BackendChoice::Metal => "Metal (macOS, iOS)",
            BackendChoice::Dx12 => "DirectX 12 (Windows)",
            BackendChoice::Gl => "OpenGL / GLES (Mesa's llvmpipe without a GPU)",
            BackendChoice::WebGpu => "The browser's WebGPU: the page that scripts/web.sh builds, not the command line",
            BackendChoice::Cpu => "The multi-threaded CPU backend (no GPU)",
            BackendChoice::Noop => "wgpu's noop backend: the whole GPU path with no kernel run, the host's ceiling",
        }
    }
}

impl BackendChoice {
    fn backends(self) -> wgpu::Backends {
        match self {
            BackendChoice::Auto => wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all()),
            BackendChoice::Vulkan => wgpu::Backends::VULKAN,
            BackendChoice::Metal => wgpu::Backends::METAL,
            BackendChoice::Dx12 => wgpu::Backends::DX12,
            BackendChoice::Gl => wgpu::Backends::GL,
            BackendChoice::WebGpu => wgpu::Backends::BROWSER_WEBGPU,
            BackendChoice::Cpu => wgpu::Backends::empty(),
            BackendChoice::Noop => wgpu::Backends::NOOP,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Vulkan => "vulkan",
            BackendChoice::Metal => "metal",
            BackendChoice::Dx12 => "dx12",
            BackendChoice::Gl => "gl",
            BackendChoice::WebGpu => "webgpu",
            BackendChoice::Cpu => "cpu",
            BackendChoice::Noop => "noop",
        }
    }
}

/// What `rowstage devices` prints about one adapter.
#[derive(Debug, Clone, Serialize)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
    pub max_compute_workgroups_per_dimension: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_compute_workgroup_size_x: u32,
    pub max_storage_buffers_per_shader_stage: u32,
    /// Whether the adapter runs compute shaders at all. An OpenGL context
    /// older than 4.3 (or GLES older than 3.1) does not: NVIDIA's EGL gave
    /// wgpu a 3.3 context on an H100, on which opening the device failed
    /// with "Parent device is lost". Such adapters are listed, never chosen.
    pub compute_shaders: bool,
    /// Whether the adapter has timestamp queries (each epoch's device time).
    pub timestamps: bool,
    /// Whether the kernels read the steps' inputs from, and write rows
    /// back into, the very buffers the host maps (no copy between them and
    /// device buffers): where host and device share memory (integrated and
    /// software adapters, and the noop backend, whose copies the host would
    /// otherwise run) and wgpu allows it (`MAPPABLE_PRIMARY_BUFFERS`).
    pub zero_copy: bool,
    /// Offsets of uniform and storage bindings must be multiples of these.
    pub min_uniform_buffer_offset_alignment: u32,
    pub min_storage_buffer_offset_alignment: u32,
}

impl AdapterSummary {
    fn of(adapter: &wgpu::Adapter) -> Self {
        let info = adapter.get_info();
        let l = adapter.limits();
        AdapterSummary {
            name: info.name.clone(),
            backend: backend_name(info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
            max_storage_buffer_binding_size: l.max_storage_buffer_binding_size,
            max_buffer_size: l.max_buffer_size,
            max_compute_workgroups_per_dimension: l.max_compute_workgroups_per_dimension,
            max_compute_invocations_per_workgroup: l.max_compute_invocations_per_workgroup,
            max_compute_workgroup_size_x: l.max_compute_workgroup_size_x,
            max_storage_buffers_per_shader_stage: l.max_storage_buffers_per_shader_stage,
            compute_shaders: has_compute_shaders(adapter),
            timestamps: adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY),
            zero_copy: adapter.features().contains(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS)
                && !matches!(info.device_type, wgpu::DeviceType::DiscreteGpu | wgpu::DeviceType::VirtualGpu),
            min_uniform_buffer_offset_alignment: l.min_uniform_buffer_offset_alignment,
            min_storage_buffer_offset_alignment: l.min_storage_buffer_offset_alignment,
        }
    }

    /// Whether this is wgpu's noop backend, which runs no kernels.
    pub fn is_noop(&self) -> bool {
        self.backend == "noop"
    }

    /// Whether the adapter runs shaders on the CPU (lavapipe, llvmpipe: wgpu's
    /// `Cpu` device type), a few invocations at a time, rather than a whole
    /// batch at once as a GPU does.
    pub fn is_software(&self) -> bool {
        self.device_type == format!("{:?}", wgpu::DeviceType::Cpu)
    }

    /// The largest slab this adapter can bind.
    pub fn max_slab_bytes(&self) -> u64 {
        self.max_storage_buffer_binding_size.min(self.max_buffer_size)
    }
}

/// A wgpu backend as `--backend` names it.
fn backend_name(b: wgpu::Backend) -> String {
    match b {
        wgpu::Backend::BrowserWebGpu => "webgpu".into(),
        b => format!("{b:?}").to_lowercase(),
    }
}

/// Keeps adapter enumeration quiet where `XDG_RUNTIME_DIR` is unset
/// (containers, CI, ssh): Mesa's EGL probes Wayland, whose client library
/// then prints "error: XDG_RUNTIME_DIR is invalid or not set", a line that
/// looks like a failure on a run that succeeds. Points it at the temporary
/// directory where it is unset; does nothing otherwise.
///
/// # Safety
///
/// It sets an environment variable: call it at the start of `main`, before
/// any other thread starts (no thread may read the environment meanwhile).
pub unsafe fn quiet_gl_probe() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // SAFETY: the caller guarantees no other thread runs.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir()) };
    }
}

fn instance(choice: BackendChoice) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = choice.backends();
    // The noop backend only where asked for by name: it runs no kernels.
    desc.backend_options.noop.enable = choice == BackendChoice::Noop;
    wgpu::Instance::new(desc)
}

/// The browser's WebGPU adapter (`navigator.gpu.requestAdapter()`), awaited:
/// a browser answers only once the script is back in its event loop, so
/// nothing here may block. `None` where the browser offers none. A
/// fallback adapter (software, such as SwiftShader) is accepted, and its
/// `device_type` says `Cpu` ([`AdapterSummary::is_software`]).
#[cfg(target_arch = "wasm32")]
pub async fn browser_adapter() -> Option<AdapterSummary> {
    browser_request_adapter().await.map(|a| AdapterSummary::of(&a))
}

#[cfg(target_arch = "wasm32")]
async fn browser_request_adapter() -> Option<wgpu::Adapter> {
    let options = wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        force_fallback_adapter: false,
        compatible_surface: None,
        apply_limit_buckets: false,
    };
    instance(BackendChoice::WebGpu).request_adapter(&options).await.ok()
}

#[cfg(target_arch = "wasm32")]
thread_local! {
    /// The page's device, opened once by [`open_browser_device`]: every run
    /// of the page trains on it (`GpuContext::new` hands it out).
    static BROWSER_DEVICE: std::cell::RefCell<Option<GpuContext>> = const { std::cell::RefCell::new(None) };
}

/// Opens the browser's WebGPU device, awaited, and keeps it for the runs
/// that ask for `webgpu` (or `auto`). Returns its adapter, named `name`
/// where the browser gives wgpu no name (Chromium's `GPUAdapterInfo` has a
/// vendor and an architecture, which the page reads).
#[cfg(target_arch = "wasm32")]
pub async fn open_browser_device(name: &str) -> Result<AdapterSummary> {
    if let Some(ctx) = BROWSER_DEVICE.with_borrow(Clone::clone) {
        return Ok(ctx.summary);
    }
    let adapter = browser_request_adapter().await.ok_or_else(|| Error::NoAdapter {
        requested: "`backend` webgpu".into(),
        hint: "this browser offers no WebGPU adapter".into(),
    })?;
    let mut summary = AdapterSummary::of(&adapter);
    if summary.name.trim().is_empty() {
        summary.name = name.to_string();
    }
    let (device, queue) = adapter
        .request_device(&device_descriptor(&summary, adapter.limits()))
        .await
        .map_err(|e| Error::Gpu { adapter: summary.name.clone(), reason: format!("cannot open the device: {e}") })?;
    let ctx = GpuContext { adapter, device, queue, summary: summary.clone() };
    BROWSER_DEVICE.set(Some(ctx));
    Ok(summary)
}

/// What rowstage asks of a device: the adapter's own limits (the slab may
/// need its largest storage binding, and lavapipe's is 128 MiB, far above
/// the default), timestamp queries where the adapter has them (each epoch's
/// device time; lavapipe has them, so CI measures it too), and mappable
/// device buffers where they save a copy.
fn device_descriptor(summary: &AdapterSummary, limits: wgpu::Limits) -> wgpu::DeviceDescriptor<'static> {
    let mut features = wgpu::Features::empty();
    if summary.timestamps {
        features |= wgpu::Features::TIMESTAMP_QUERY;
    }
    if summary.zero_copy {
        features |= wgpu::Features::MAPPABLE_PRIMARY_BUFFERS;
    }
    wgpu::DeviceDescriptor {
        label: Some("rowstage device"),
        required_features: features,
        required_limits: limits,
        experimental_features: wgpu::ExperimentalFeatures::disabled(),
        memory_hints: wgpu::MemoryHints::Performance,
        trace: wgpu::Trace::Off,
    }
}

/// Every adapter wgpu finds for `choice`, best first (in a browser, the
/// page's device, where it has opened one).
pub fn list_adapters(choice: BackendChoice) -> Vec<AdapterSummary> {
    #[cfg(target_arch = "wasm32")]
    {
        let _ = choice;
        BROWSER_DEVICE.with_borrow(|c| c.iter().map(|c| c.summary.clone()).collect())
    }
    #[cfg(not(target_arch = "wasm32"))]
    sorted_adapters(&instance(choice), choice).iter().map(AdapterSummary::of).collect()
}

fn sorted_adapters(instance: &wgpu::Instance, choice: BackendChoice) -> Vec<wgpu::Adapter> {
    let mut adapters = pollster::block_on(instance.enumerate_adapters(choice.backends()));
    // Real GPUs first, then software; among equals Vulkan, Metal, DX12, GL.
    let type_rank = |t: wgpu::DeviceType| match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    let backend_rank = |b: wgpu::Backend| match b {
        wgpu::Backend::Vulkan => 0,
        wgpu::Backend::Metal => 1,
        wgpu::Backend::Dx12 => 2,
        wgpu::Backend::Gl => 3,
        _ => 4,
    };
    adapters.sort_by_key(|a| {
        let i = a.get_info();
        (type_rank(i.device_type), backend_rank(i.backend))
    });
    adapters
}

fn has_compute_shaders(adapter: &wgpu::Adapter) -> bool {
    let info = adapter.get_info();
    adapter.get_downlevel_capabilities().flags.contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
        && (info.backend != wgpu::Backend::Gl || gl_version_runs_compute(&info.driver_info) != Some(false))
}

/// Whether the OpenGL version string an adapter reports (`4.5 (Core
/// Profile) Mesa 22.3.6`, `3.3.0 NVIDIA 580.159.04`, `OpenGL ES 3.2 ...`)
/// is one whose shading language has compute shaders: 4.3 for OpenGL, 3.1
/// for GLES. wgpu picks the GLSL version from the context's, so a 3.3
/// context fails at device creation even where the driver advertises the
/// compute extension (NVIDIA's did, and wgpu's own capability flags said
/// yes). `None` when no version can be read.
fn gl_version_runs_compute(version: &str) -> Option<bool> {
    let es = version.contains("OpenGL ES");
    let number = version.split_whitespace().find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
    let mut parts = number.split('.').map(|p| p.parse::<u32>());
    let (major, minor) = (parts.next()?.ok()?, parts.next()?.ok()?);
    Some((major, minor) >= if es { (3, 1) } else { (4, 3) })
}

/// The error for a backend that found no adapter where other backends did
/// (`--backend metal` on Linux): which ones there are, as `--backend`
/// values. `Ok` where no backend has an adapter (a driver problem, said by
/// the caller).
fn missing_backend(choice: BackendChoice) -> Result<()> {
    let others: Vec<wgpu::Adapter> = sorted_adapters(&instance(BackendChoice::Auto), BackendChoice::Auto)
        .into_iter()
        .filter(has_compute_shaders)
        .collect();
    if others.is_empty() {
        return Ok(());
    }
    let (mut names, mut described) = (Vec::new(), Vec::new());
    for a in &others {
        let (name, backend) = (a.get_info().name, backend_name(a.get_info().backend));
        described.push(format!("{name} ({backend})"));
        // Each backend once, in the adapters' order (best first).
        if !names.contains(&backend) {
            names.push(backend);
        }
    }
    let platform = match choice {
        BackendChoice::Metal if !cfg!(any(target_os = "macos", target_os = "ios")) => {
            " (Metal exists on macOS and iOS only)"
        }
        BackendChoice::Dx12 if !cfg!(windows) => " (DX12 exists on Windows only)",
        BackendChoice::WebGpu if !cfg!(target_arch = "wasm32") => {
            " (WebGPU is the browser page's: scripts/web.sh build, then serve)"
        }
        _ => "",
    };
    Err(Error::BackendMissing {
        backend: choice.name().into(),
        platform: platform.into(),
        available: format!("{}: use `backend` {}, auto or cpu", described.join(", "), names.join(", ")),
    })
}

/// Why no adapter was chosen: none at all, none matching the filter, or
/// only adapters without compute shaders.
fn no_adapter_hint(all: &[wgpu::Adapter], matching: &[wgpu::Adapter]) -> String {
    let describe = |a: &wgpu::Adapter| {
        let i = a.get_info();
        format!("{} ({:?}, driver {})", i.name, i.backend, i.driver_info.trim())
    };
    if all.is_empty() {
        "wgpu found no adapter at all; install a GPU driver or Mesa's software drivers \
         (Debian: apt-get install mesa-vulkan-drivers), or use `backend` cpu"
            .into()
    } else if !matching.is_empty() {
        format!(
            "no compute shaders on {}: rowstage needs Vulkan, Metal, DX12, OpenGL 4.3 or GLES 3.1; \
             run `rowstage devices`, or use `backend` cpu",
            matching.iter().map(describe).collect::<Vec<_>>().join(", ")
        )
    } else {
        format!("adapters found: {}; run `rowstage devices`", all.iter().map(describe).collect::<Vec<_>>().join(", "))
    }
}

/// A device ready for rowstage's kernels. Cloning shares the device (wgpu's
/// handles are reference-counted): a sweep opens one per adapter and runs
/// every configuration on it. With a device per configuration (about two
/// dozen, counting the batch-halving retries), NVIDIA's Vulkan driver on an
/// H100 enumerated no adapter at all for the sweep's last configuration;
/// with one device per adapter the same sweep ran through.
#[derive(Clone)]
pub struct GpuContext {
    pub adapter: wgpu::Adapter,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub summary: AdapterSummary,
}

impl GpuContext {
    /// Opens the best adapter for `choice` whose name contains `name_filter`
    /// (case-insensitive; `WGPU_ADAPTER_NAME` is used when no filter is given).
    pub fn new(choice: BackendChoice, name_filter: Option<&str>) -> Result<Self> {
        Self::new_nth(choice, name_filter, 0)
    }

    /// [`GpuContext::new`], taking the `nth` (modulo how many) of the best
    /// adapters where several alike are found (same backend, same device
    /// type): the MPI ranks on one machine each take their own GPU.
    pub fn new_nth(choice: BackendChoice, name_filter: Option<&str>, nth: usize) -> Result<Self> {
        let requested = match name_filter {
            Some(f) => format!("`backend` {} `adapter` {f:?}", choice.name()),
            None => format!("`backend` {}", choice.name()),
        };
        if choice == BackendChoice::Cpu {
            return Err(Error::arg("`backend`", "cpu", "uses no adapter: this needs a GPU backend"));
        }
        // In a browser the device is opened once, awaited, by the page.
        #[cfg(target_arch = "wasm32")]
        if matches!(choice, BackendChoice::WebGpu | BackendChoice::Auto) {
            return BROWSER_DEVICE
                .with_borrow(Clone::clone)
                .ok_or_else(|| Error::NoAdapter { requested, hint: "the page opened no WebGPU device".into() });
        }
        let instance = instance(choice);
        let adapters = sorted_adapters(&instance, choice);
        let env_filter = std::env::var("WGPU_ADAPTER_NAME").ok();
        let filter = name_filter.or(env_filter.as_deref()).map(str::to_lowercase);
        let matching: Vec<wgpu::Adapter> = adapters
            .iter()
            .filter(|a| filter.as_ref().is_none_or(|f| a.get_info().name.to_lowercase().contains(f)))
            .cloned()
            .collect();
        if adapters.is_empty() && !matches!(choice, BackendChoice::Auto | BackendChoice::Noop) {
            missing_backend(choice)?;
        }
        let usable: Vec<&wgpu::Adapter> = matching.iter().filter(|a| has_compute_shaders(a)).collect();
        let kind = |a: &wgpu::Adapter| (a.get_info().backend, a.get_info().device_type);
        let alike: Vec<&wgpu::Adapter> =
            usable.iter().copied().filter(|a| usable.first().is_some_and(|best| kind(a) == kind(best))).collect();
        let adapter = alike.get(nth % alike.len().max(1)).map(|a| (*a).clone()).ok_or_else(|| Error::NoAdapter {
            requested: requested.clone(),
            hint: no_adapter_hint(&adapters, &matching),
        })?;
        let summary = AdapterSummary::of(&adapter);
        let (device, queue) = pollster::block_on(
            adapter.request_device(&device_descriptor(&summary, adapter.limits())),
        )
        .map_err(|e| Error::Gpu { adapter: summary.name.clone(), reason: format!("cannot open the device: {e}") })?;
        Ok(GpuContext { adapter, device, queue, summary })
    }

    /// `name (backend, device type)`, for messages and reports.
    pub fn describe(&self) -> String {
        format!("{} ({}, {})", self.summary.name, self.summary.backend, self.summary.device_type)
    }
}

#[cfg(test)]
mod tests {
    use super::gl_version_runs_compute;

    #[test]
    fn gl_versions_with_and_without_compute_shaders() {
        assert_eq!(gl_version_runs_compute(" 4.5 (Core Profile) Mesa 22.3.6"), Some(true));
        assert_eq!(gl_version_runs_compute("4.3.0 NVIDIA 580.159.04"), Some(true));
        assert_eq!(gl_version_runs_compute("4.6.0 NVIDIA 580.159.04"), Some(true));
        assert_eq!(gl_version_runs_compute(" 3.3.0 NVIDIA 580.159.04"), Some(false));
        assert_eq!(gl_version_runs_compute("4.1 Metal - 83.1"), Some(false));
        assert_eq!(gl_version_runs_compute("OpenGL ES 3.2 Mesa 22.3.6"), Some(true));
        assert_eq!(gl_version_runs_compute("OpenGL ES 3.0 Mesa 22.3.6"), Some(false));
        assert_eq!(gl_version_runs_compute("OpenGL ES 3.1 NVIDIA 580.159.04"), Some(true));
        assert_eq!(gl_version_runs_compute(""), None);
        assert_eq!(gl_version_runs_compute("NVIDIA"), None);
    }
}
