//! Calibration: the host→device bandwidth, the fixed cost of one device step
//! and the SGD kernel's rate, measured briefly on the chosen adapter and
//! cached per adapter and rank in a JSON file the user can delete
//! (`$XDG_CACHE_HOME/rowstage/calibration.json`, else
//! `~/.cache/rowstage/calibration.json`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use web_time::Instant;

use serde::{Deserialize, Serialize};

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::{GpuBackend, GpuContext, GpuSetup};
use crate::data::{Dataset, SyntheticSpec, generate};
use crate::engine::{Backend, EpochInput, EpochPlan, Group, LayoutSpec, NO_GROUP, Order, RunLayout};
use crate::error::{Error, Result};
use crate::model::{HyperParams, Model};
use crate::stage::PolicyKind;

/// What the planner needs to know about an adapter.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Calibration {
    pub adapter: String,
    pub rank: usize,
    /// Host→device bytes per second of one large write.
    pub h2d_bytes_per_sec: f64,
    /// Seconds of one small device step (submit, dispatch, read back, wait).
    pub step_seconds: f64,
    /// SGD updates per second in large steps, with all rows resident.
    pub sgd_ratings_per_sec: f64,
    /// Whether this came from the cache file.
    #[serde(skip)]
    pub cached: bool,
}

impl Calibration {
    /// Whether the figures are ones a device can have: a positive, finite
    /// bandwidth between 1 MB/s and 100 TB/s, a step between 1 µs and 10 s,
    /// an update rate between 1 and 10¹³ a second.
    pub fn is_physical(&self) -> bool {
        let within = |v: f64, lo: f64, hi: f64| v.is_finite() && v >= lo && v <= hi;
        within(self.h2d_bytes_per_sec, 1e6, 1e14)
            && within(self.step_seconds, 1e-6, 10.0)
            && within(self.sgd_ratings_per_sec, 1.0, 1e13)
    }

    /// One line for the user.
    pub fn summary(&self) -> String {
        format!(
            "calibration{}: host→device {:.2} GB/s, {:.2} ms per step, SGD {:.3e} ratings/s",
            if self.cached { " (cached)" } else { "" },
            self.h2d_bytes_per_sec / 1e9,
            self.step_seconds * 1e3,
            self.sgd_ratings_per_sec
        )
    }
}

fn cache_path() -> Option<PathBuf> {
    // A browser page has no files: it measures every time.
    if cfg!(target_arch = "wasm32") {
        return None;
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("rowstage").join("calibration.json"))
}

/// Per adapter, driver, rank and kernel source, as compiled for the
/// measurement (one model, specialisation constants included): a changed
/// kernel is measured afresh rather than planned with an old rate.
fn cache_key(ctx: &GpuContext, rank: usize) -> String {
    let s = &ctx.summary;
    let mut kernels = crc32fast::Hasher::new();
    for (name, _) in super::kernels::SHADERS {
        kernels.update(super::kernels::source(name, super::kernels::Spec::new(rank as u32, 1)).as_bytes());
    }
    format!(
        "{} | {} | {} {} | rank {rank} | kernels {:08x}",
        s.name,
        s.backend,
        s.driver,
        s.driver_info,
        kernels.finalize()
    )
}

/// The calibration for `rank` on `ctx`'s adapter: from the cache file unless
/// `use_cache` is false, else measured (and then written to the cache).
/// Consumes and returns the context (the measurement builds a small backend).
pub fn calibration(ctx: GpuContext, rank: usize, use_cache: bool) -> Result<(GpuContext, Calibration)> {
    let key = cache_key(&ctx, rank);
    let path = cache_path();
    let mut all: BTreeMap<String, Calibration> = path
        .as_ref()
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    if use_cache && let Some(c) = all.get(&key) {
        if c.is_physical() {
            return Ok((ctx, Calibration { cached: true, ..c.clone() }));
        }
        // A cache edited by hand (or by another program) would steer
        // `batch` auto: measured again instead.
        log::warn!(
            "the cached calibration of {} is outside physical ranges ({}); measuring again",
            c.adapter,
            c.summary()
        );
    }
    let (ctx, cal) = measure(ctx, rank)?;
    if use_cache && let Some(p) = path {
        all.insert(key, cal.clone());
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        // A cache that cannot be written only costs a re-measurement.
        if let Err(e) = crate::model::write_atomically(&p, serde_json::to_string_pretty(&all).expect("json").as_bytes())
        {
            log::warn!("cannot write the calibration cache: {e}");
        }
    }
    Ok((ctx, cal))
}

/// Measures on a small synthetic problem (a few hundred milliseconds on a
/// software adapter).
fn measure(ctx: GpuContext, rank: usize) -> Result<(GpuContext, Calibration)> {
    let adapter = ctx.summary.name.clone();
    // Host→device: one 8 MiB write, best of three.
    let size = (8u64 << 20).min(ctx.summary.max_buffer_size) & !3;
    let buf = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("calibration upload"),
        size,
        usage: wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let bytes = vec![1u8; size as usize];
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        ctx.queue.write_buffer(&buf, 0, &bytes);
        ctx.queue.submit([]);
        super::device::wait_for(&ctx, None)
            .map_err(|e| Error::Gpu { adapter: adapter.clone(), reason: format!("calibration: {e}") })?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    drop(buf);
    let h2d_bytes_per_sec = size as f64 / best.max(1e-9);

    // SGD: every row resident, so that a dispatch spans many parts; then
    // the fixed cost of a staged step: tiny parts through a slab that holds
    // one of them (`none`: every row staged in and written back each step).
    let spec = SyntheticSpec { users: 2000, items: 2000, ratings: 65_536, zipf: Some(0.0) };
    let data = Dataset::split("calibration", generate(&spec, 1), 0.0, 1);
    let hp = HyperParams { rank, ..Default::default() };
    let row_bytes = (crate::model::row_stride(rank) * 4) as u64;
    let tables = (data.users.len() + data.items.len()) as u64 * row_bytes;
    let backend = |ctx: GpuContext, batch: usize, slab_bytes: u64, policy: PolicyKind| -> Result<GpuBackend> {
        let spec = LayoutSpec { seed: 1, batch, order: Order::Shuffled, co_partition: None };
        let layout = Arc::new(RunLayout::new(&data.train, data.users.len(), data.items.len(), spec, 1)?);
        GpuBackend::new(
            ctx,
            &GpuSetup {
                rank,
                copies: 1,
                bias_reg: hp.bias_reg,
                deterministic: false,
                slab_bytes,
                policy,
                lookahead: 1,
                mean: data.mean(),
                range: data.range(),
                layout,
                wave_tail: None,
                hogwild_width: crate::gpu::HogwildWidth::Auto,
                threads: 1,
                data_window: None,
                blocked_lanes: None,
            },
        )
    };
    let never = AtomicBool::new(false);
    let rate = [crate::model::Rate { lr: 0.001, reg: hp.reg }];
    let mut model = Model::init(&data, &hp, 1);
    // One epoch over the first `parts` parts of the layout's epoch 0.
    let run = |gpu: &mut GpuBackend, model: &mut Model, parts: Option<usize>| -> Result<f64> {
        let layout = gpu.run_layout().expect("a GPU backend holds its layout");
        let mut plan = layout.epoch(0);
        if let Some(n) = parts {
            plan = EpochPlan { parts: plan.parts[..n].to_vec(), groups: vec![Group { end: n as u32, id: NO_GROUP }] };
        }
        let input = EpochInput {
            epoch: 0,
            layout: &layout,
            plan: &plan,
            from: 0,
            following: None,
            rates: &rate,
            stop: &never,
            progress: &Default::default(),
        };
        let t = Instant::now();
        gpu.train_epoch(model, &input)?;
        Ok(t.elapsed().as_secs_f64())
    };
    let mut gpu = backend(ctx, 16_384, tables.next_multiple_of(16), PolicyKind::Static)?;
    run(&mut gpu, &mut model, None)?; // warm-up
    let big = run(&mut gpu, &mut model, None)?;
    let sgd_ratings_per_sec = data.train.len() as f64 / big.max(1e-9);
    let ctx = gpu.into_context();
    let mut gpu = backend(ctx, 64, 128 * row_bytes, PolicyKind::None)?;
    run(&mut gpu, &mut model, Some(2))?; // warm-up
    let steps = 8;
    let small = run(&mut gpu, &mut model, Some(steps))? / steps as f64;
    Ok((
        gpu.into_context(),
        Calibration { adapter, rank, h2d_bytes_per_sec, step_seconds: small, sgd_ratings_per_sec, cached: false },
    ))
}

/// The copy bandwidth of `ctx`'s device: bytes read plus bytes written per
/// second by one large buffer-to-buffer copy on the device (64 MiB, or less
/// where the adapter's buffers are smaller), best of three after one
/// warm-up. The peer of the SGD kernel's achieved bandwidth in `rowstage
/// bench`.
pub fn copy_bandwidth(ctx: &GpuContext) -> Result<f64> {
    let name = ctx.summary.name.clone();
    let size = (64u64 << 20).min(ctx.summary.max_buffer_size) & !3;
    let buffer = |label| {
        ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    };
    let (src, dst) = (buffer("copy bandwidth source"), buffer("copy bandwidth destination"));
    let mut best = f64::INFINITY;
    for k in 0..4 {
        let t = Instant::now();
        let mut enc =
            ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("copy bandwidth") });
        enc.copy_buffer_to_buffer(&src, 0, &dst, 0, size);
        ctx.queue.submit([enc.finish()]);
        super::device::wait_for(ctx, None)
            .map_err(|e| Error::Gpu { adapter: name.clone(), reason: format!("copy bandwidth: {e}") })?;
        if k > 0 {
            best = best.min(t.elapsed().as_secs_f64());
        }
    }
    Ok(2.0 * size as f64 / best.max(1e-9))
}
