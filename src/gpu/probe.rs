//! One kernel at a time, on buffers made for it: what the kernel tests
//! (`tests/kernels.rs`) compare with plain CPU implementations, and a way to
//! look at a kernel's output in isolation. Each call builds its own buffers
//! and bind group with the kernel's own layout and launcher, runs one pass,
//! and reads the result back.

use super::GpuContext;
use super::device::{Device, MapSignal, Wire};
use super::kernels::{self, Kernels, MapParams, MoveParams, PredictParams, SgdParams, Spec};
use super::launch::{Launch, Offsets};
use super::resources::BindGroups;
use crate::data::Rating;
use crate::engine::Part;
use crate::error::Result;

/// Where the probe puts the moves and the window in its step buffer.
const MOVES_AT: u64 = 256;

/// A device and the kernels compiled for `spec`.
pub struct Probe {
    dev: Device,
    kernels: Kernels,
}

fn entire(binding: u32, buf: &wgpu::Buffer) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry { binding, resource: buf.as_entire_binding() }
}

fn sized(binding: u32, buf: &wgpu::Buffer, size: u64) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry {
        binding,
        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: buf,
            offset: 0,
            size: wgpu::BufferSize::new(size.max(16)),
        }),
    }
}

/// The SGD parameters of a probe run (see [`SgdParams`]).
#[derive(Debug, Clone, Copy)]
pub struct SgdRun {
    pub first_part: u32,
    pub parts: u32,
    pub width: u32,
    pub n_users: u32,
    pub bias_reg: f32,
    pub mean: f32,
    pub kernel: SgdKernel,
}

/// Which SGD kernel a probe runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SgdKernel {
    /// `sgd`: `width` invocations over the parts' ratings.
    Sgd,
    /// `sgd_tail`: one workgroup walking the parts in order.
    Tail,
    /// `sgd_blocked`: an invocation per part (rows disjoint between parts).
    Blocked,
    /// `sgd_blocked_lanes`: a workgroup per part.
    BlockedLanes,
    /// `sgd_tiles` (or with `lanes` `sgd_tiles_lanes`) over `tiles`
    /// workgroups: `first_part` is the word of the block starts in the
    /// parts (read as words), `parts` the sweep, `width` the shift, of
    /// `sweeps` sweeps.
    Tiles { tiles: u32, sweeps: u32, lanes: bool },
}

impl Probe {
    pub fn new(ctx: GpuContext, spec: Spec) -> Self {
        let dev = Device::new(ctx);
        let kernels = Kernels::new(dev.device(), spec);
        Probe { dev, kernels }
    }

    fn storage(&self, label: &str, data: &[u8], read_back: bool) -> wgpu::Buffer {
        use wgpu::BufferUsages as U;
        let usage = U::STORAGE | U::COPY_DST | if read_back { U::COPY_SRC } else { U::empty() };
        let buf = self.dev.buffer(label, data.len() as u64, usage);
        self.dev.put(&mut Wire::default(), &buf, 0, data);
        buf
    }

    /// A step buffer: the parameter block at 0, `moves` at [`MOVES_AT`],
    /// `window` after them; returns it and the window's offset.
    fn step(&self, params: &[u8], moves: &[u32], window: &[f32]) -> (wgpu::Buffer, u64) {
        use wgpu::BufferUsages as U;
        let align = (self.dev.ctx.summary.min_storage_buffer_offset_alignment as u64).max(16);
        let window_at = (MOVES_AT + 4 * moves.len() as u64).next_multiple_of(align.max(256));
        let size = window_at + 4 * window.len() as u64 + 16;
        let buf = self.dev.buffer("probe step", size, U::UNIFORM | U::STORAGE | U::COPY_DST);
        let mut wire = Wire::default();
        self.dev.put(&mut wire, &buf, 0, params);
        self.dev.put(&mut wire, &buf, MOVES_AT, bytemuck::cast_slice(moves));
        self.dev.put(&mut wire, &buf, window_at, bytemuck::cast_slice(window));
        (buf, window_at)
    }

    fn read(&self, buf: &wgpu::Buffer) -> Result<Vec<u8>> {
        use wgpu::BufferUsages as U;
        let size = buf.size();
        let tmp = self.dev.buffer("probe readback", size, U::MAP_READ | U::COPY_DST);
        let mut enc = self.dev.encoder("probe read");
        enc.copy_buffer_to_buffer(buf, 0, &tmp, 0, size);
        self.dev.queue().submit([enc.finish()]);
        let mut out = Vec::new();
        self.dev.read(&MapSignal::new(), &tmp, size, |b| out.extend_from_slice(b))?;
        Ok(out)
    }

    /// Runs `f`'s launches in one pass with `bind` at `offsets`.
    fn run(&self, bind: &BindGroups, offsets: Offsets, f: impl FnOnce(&mut Launch)) -> Result<()> {
        let mut enc = self.dev.encoder("probe");
        {
            let mut pass = enc
                .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("probe"), timestamp_writes: None })
                .forget_lifetime();
            let mut launch = Launch {
                pass: &mut pass,
                kernels: &self.kernels,
                bind,
                offsets,
                max_per_dim: self.dev.ctx.summary.max_compute_workgroups_per_dimension,
                dispatches: 0,
                source: 0,
            };
            f(&mut launch);
        }
        self.dev.queue().submit([enc.finish()]);
        self.dev.wait(None)?;
        self.dev.check()
    }

    /// The bind groups of every kernel over these buffers (those a probe
    /// does not use get small stand-ins).
    #[allow(clippy::too_many_arguments)]
    fn bind(
        &self,
        slab: &wgpu::Buffer,
        slot_map: &wgpu::Buffer,
        step: &wgpu::Buffer,
        window_bytes: u64,
        moves_bytes: u64,
        download: &wgpu::Buffer,
        sgd: [&wgpu::Buffer; 4],
    ) -> BindGroups {
        let device = self.dev.device();
        let group = |k: &kernels::Kernel, entries: &[wgpu::BindGroupEntry]| {
            device.create_bind_group(&wgpu::BindGroupDescriptor { label: Some("probe"), layout: &k.layout, entries })
        };
        let params = |b| sized(b, step, kernels::PARAMS_SIZE);
        let [ratings, loss, rates, parts] = sgd;
        let sgd = group(
            &self.kernels.sgd,
            &[
                entire(0, slab),
                entire(1, ratings),
                entire(2, loss),
                params(3),
                entire(4, rates),
                entire(5, slot_map),
                entire(6, parts),
            ],
        );
        BindGroups {
            map_rows: group(&self.kernels.map_rows, &[entire(0, slot_map), sized(1, step, moves_bytes), params(2)]),
            scatter: group(
                &self.kernels.scatter,
                &[entire(0, slab), sized(1, step, window_bytes), sized(2, step, moves_bytes), params(3)],
            ),
            gather: vec![group(
                &self.kernels.gather,
                &[entire(0, slab), entire(1, download), sized(2, step, moves_bytes), params(3)],
            )],
            sgd_waves: sgd.clone(),
            sgd,
        }
    }

    fn stand_in(&self) -> wgpu::Buffer {
        self.storage("probe stand-in", &[0u8; 16], false)
    }

    /// `map_rows`: `map` after setting `entries`.
    pub fn map_rows(&self, map: &[u32], entries: &[[u32; 2]]) -> Result<Vec<u32>> {
        let params = MapParams { first: 0, count: entries.len() as u32, ..MapParams::default() };
        let words: Vec<u32> = entries.iter().flatten().copied().collect();
        let (step, _) = self.step(bytemuck::bytes_of(&params), &words, &[]);
        let slot_map = self.storage("probe slot map", bytemuck::cast_slice(map), true);
        let s = self.stand_in();
        let bind = self.bind(&s, &slot_map, &step, 16, 4 * words.len() as u64, &s, [&s, &s, &s, &s]);
        let offsets = Offsets { block_stride: 0, moves: MOVES_AT as u32, rows: 0 };
        self.run(&bind, offsets, |l| l.map_rows(0, entries.len() as u32))?;
        Ok(bytemuck::cast_slice(&self.read(&slot_map)?)[..map.len()].to_vec())
    }

    /// `scatter_rows`: `slab` after window row j went to slot `slots[j]`.
    pub fn scatter_rows(&self, slab: &[f32], window: &[f32], slots: &[u32], row_vec4: u32) -> Result<Vec<f32>> {
        let params = MoveParams { first: 0, count: slots.len() as u32, row_vec4, slots_at: 0, ..MoveParams::default() };
        let (step, window_at) = self.step(bytemuck::bytes_of(&params), slots, window);
        let slab_buf = self.storage("probe slab", bytemuck::cast_slice(slab), true);
        let s = self.stand_in();
        let bind =
            self.bind(&slab_buf, &s, &step, 4 * window.len() as u64, 4 * slots.len() as u64, &s, [&s, &s, &s, &s]);
        let offsets = Offsets { block_stride: 0, moves: MOVES_AT as u32, rows: window_at as u32 };
        self.run(&bind, offsets, |l| l.scatter(0, slots.len() as u32, row_vec4))?;
        Ok(bytemuck::cast_slice(&self.read(&slab_buf)?)[..slab.len()].to_vec())
    }

    /// `gather_rows`: the download window after row j came from slot
    /// `slots[j]`.
    pub fn gather_rows(&self, slab: &[f32], slots: &[u32], row_vec4: u32) -> Result<Vec<f32>> {
        let params = MoveParams { first: 0, count: slots.len() as u32, row_vec4, slots_at: 0, ..MoveParams::default() };
        let (step, _) = self.step(bytemuck::bytes_of(&params), slots, &[]);
        let slab_buf = self.storage("probe slab", bytemuck::cast_slice(slab), false);
        let n = slots.len() * row_vec4 as usize * 4;
        let download = self.storage("probe download", bytemuck::cast_slice(&vec![0f32; n]), true);
        let s = self.stand_in();
        let bind = self.bind(&slab_buf, &s, &step, 16, 4 * slots.len() as u64, &download, [&s, &s, &s, &s]);
        let offsets = Offsets { block_stride: 0, moves: MOVES_AT as u32, rows: 0 };
        self.run(&bind, offsets, |l| l.gather(0, slots.len() as u32, row_vec4, 0))?;
        Ok(bytemuck::cast_slice(&self.read(&download)?)[..n].to_vec())
    }

    /// An SGD kernel ([`SgdKernel`]): the slab and the loss accumulators after the
    /// run. `rates` are (η, λ) per model; `loss_words` accumulators.
    #[allow(clippy::too_many_arguments)]
    pub fn sgd(
        &self,
        slab: &[f32],
        slot_map: &[u32],
        ratings: &[Rating],
        parts: &[Part],
        rates: &[[f32; 2]],
        run: SgdRun,
        loss_words: usize,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let common = SgdParams { n_users: run.n_users, bias_reg: run.bias_reg, mean: run.mean, ..SgdParams::default() };
        let params = match run.kernel {
            // The tests' run of tiles: the block starts from `first_part`,
            // sweep `parts`, shift `width` (SgdKernel::Tiles).
            SgdKernel::Tiles { sweeps, .. } => {
                SgdParams { starts_at: run.first_part, sweep: run.parts, shift: run.width, sweeps, ..common }
            }
            _ => SgdParams { first_part: run.first_part, parts: run.parts, width: run.width, ..common },
        };
        let (step, _) = self.step(bytemuck::bytes_of(&params), &[0], &[]);
        let slab_buf = self.storage("probe slab", bytemuck::cast_slice(slab), true);
        let map = self.storage("probe slot map", bytemuck::cast_slice(slot_map), false);
        let ratings = self.storage("probe ratings", bytemuck::cast_slice(ratings), false);
        let loss = self.storage("probe loss", bytemuck::cast_slice(&vec![0f32; loss_words]), true);
        let rates = self.storage("probe rates", bytemuck::cast_slice(rates), false);
        let parts = self.storage("probe parts", bytemuck::cast_slice(parts), false);
        let s = self.stand_in();
        let bind = self.bind(&slab_buf, &map, &step, 16, 16, &s, [&ratings, &loss, &rates, &parts]);
        self.run(&bind, Offsets::default(), |l| match run.kernel {
            SgdKernel::Sgd => l.sgd(0, run.width, false),
            SgdKernel::Tail => l.sgd_tail(0),
            SgdKernel::Blocked => l.sgd_blocked(0, run.parts, false),
            SgdKernel::BlockedLanes => l.sgd_blocked(0, run.parts, true),
            SgdKernel::Tiles { tiles, lanes, .. } => l.sgd_tiles(0, tiles, lanes),
        })?;
        let slab_after = bytemuck::cast_slice(&self.read(&slab_buf)?)[..slab.len()].to_vec();
        let loss_after = bytemuck::cast_slice(&self.read(&loss)?)[..loss_words].to_vec();
        Ok((slab_after, loss_after))
    }

    /// `predict`: the (squared, absolute) error sums per workgroup and model
    /// of `test[first..first + count]`, rows found through `slot_map` in the
    /// slab or the window.
    #[allow(clippy::too_many_arguments)]
    pub fn predict(
        &self,
        slab: &[f32],
        slot_map: &[u32],
        window: &[f32],
        test: &[Rating],
        params: PredictParams,
        pairs: usize,
    ) -> Result<Vec<[f32; 2]>> {
        let (step, window_at) = self.step(bytemuck::bytes_of(&params), &[0], window);
        let slab_buf = self.storage("probe slab", bytemuck::cast_slice(slab), false);
        let map = self.storage("probe slot map", bytemuck::cast_slice(slot_map), false);
        let test_buf = self.storage("probe test", bytemuck::cast_slice(test), false);
        let sums = self.storage("probe sums", bytemuck::cast_slice(&vec![0f32; 2 * pairs]), true);
        let group = self.dev.device().create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("probe predict"),
            layout: &self.kernels.predict.layout,
            entries: &[
                entire(0, &slab_buf),
                entire(1, &test_buf),
                entire(2, &sums),
                sized(3, &step, kernels::PARAMS_SIZE),
                sized(4, &step, 4 * window.len() as u64),
                entire(5, &map),
            ],
        });
        let s = self.stand_in();
        let bind = self.bind(&s, &s, &step, 16, 16, &s, [&s, &s, &s, &s]);
        let offsets = Offsets { block_stride: 0, moves: MOVES_AT as u32, rows: window_at as u32 };
        self.run(&bind, offsets, |l| l.predict(&group, 0, params.count))?;
        let bytes = self.read(&sums)?;
        let out: &[[f32; 2]] = bytemuck::cast_slice(&bytes);
        Ok(out[..pairs].to_vec())
    }
}
