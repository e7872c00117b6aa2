//! One step's inputs, assembled on the host and written in one write
//! ([`StepInput`]), and one launcher per kernel family ([`Launch`]): each
//! looks up its pipeline, binds its group at the step's offsets, points at
//! its parameter block and dispatches.

use super::device::{Device, MapSignal, Wire};
use crate::error::Result;

/// How many rows ahead a copy between the host tables and a transfer buffer
/// asks for its source: a row's copy is short, its cache misses are not.
pub const ROW_AHEAD: usize = 8;
use super::kernels::{Kernels, PARAMS_SIZE, TAIL_GROUP, WORKGROUP, dispatch_size};
use super::resources::{BindGroups, StepRegions};
use super::tables::HostTables;
use crate::stage::{Ledger, Placed};

/// Where a written step's regions are (dynamic offsets).
#[derive(Debug, Clone, Copy, Default)]
pub struct Offsets {
    pub block_stride: u32,
    pub moves: u32,
    pub rows: u32,
}

impl Offsets {
    fn block(&self, b: u32) -> u32 {
        b * self.block_stride
    }
}

/// One step's parameter blocks, moves and rows to stage in.
#[derive(Default)]
pub struct StepInput {
    blocks: Vec<[u8; PARAMS_SIZE as usize]>,
    words: Vec<u32>,
    rows: Vec<u32>,
}

impl StepInput {
    pub fn clear(&mut self) {
        self.blocks.clear();
        self.words.clear();
        self.rows.clear();
    }

    /// Adds a parameter block; returns its index.
    pub fn block<T: bytemuck::Pod>(&mut self, params: T) -> u32 {
        let mut b = [0u8; PARAMS_SIZE as usize];
        b[..size_of::<T>()].copy_from_slice(bytemuck::bytes_of(&params));
        self.blocks.push(b);
        self.blocks.len() as u32 - 1
    }

    /// Adds words to the moves; returns the word where they start.
    pub fn words(&mut self, words: impl IntoIterator<Item = u32>) -> u32 {
        let at = self.words.len() as u32;
        self.words.extend(words);
        at
    }

    /// Adds slot-map entries; returns their first word.
    pub fn map(&mut self, entries: &[[u32; 2]]) -> u32 {
        self.words(entries.iter().flatten().copied())
    }

    /// Adds the slots of `placed`; returns their first word.
    pub fn slots(&mut self, placed: &[Placed]) -> u32 {
        self.words(placed.iter().map(|p| p.slot))
    }

    /// Adds rows to stage in (global rows, in upload-window order); returns
    /// the window row of the first.
    pub fn rows(&mut self, rows: impl IntoIterator<Item = u32>) -> u32 {
        let at = self.rows.len() as u32;
        self.rows.extend(rows);
        at
    }

    /// Writes the step into the upload ring's next buffer, mapped: the
    /// parameter blocks, the moves, and the rows copied from the host
    /// tables straight into it. [`Written::copy`] then copies it into the
    /// step buffer ahead of the step's pass. Counts the rows' bytes as row
    /// traffic and the rest (blocks, moves, alignment) as data. Returns the
    /// step's offsets and the seconds waited for a ring buffer.
    #[allow(clippy::too_many_arguments)]
    pub fn write(
        &self,
        dev: &Device,
        ring: &mut UploadRing,
        regions: &StepRegions,
        tables: &HostTables,
        wire: &mut Wire,
        ledger: &mut Ledger,
    ) -> Result<(Written, f64)> {
        debug_assert!(self.blocks.len() as u32 <= regions.max_blocks, "{} parameter blocks", self.blocks.len());
        debug_assert!(self.words.len() as u64 <= regions.max_words, "{} words of moves", self.words.len());
        let row_bytes = tables.stride() * 4;
        debug_assert!((self.rows.len() * row_bytes) as u64 <= regions.window_bytes, "{} rows", self.rows.len());
        let (moves, rows) = regions.offsets(self.blocks.len() as u32, self.words.len() as u64);
        let offsets = Offsets { block_stride: regions.block_stride as u32, moves: moves as u32, rows: rows as u32 };
        let total = (rows + (self.rows.len() * row_bytes) as u64).next_multiple_of(4);
        let (k, waited) = ring.take(dev)?;
        {
            let buf = &ring.buffers[k];
            let mut view =
                buf.get_mapped_range_mut(..total).map_err(|e| dev.err(format!("writing a mapped buffer: {e}")))?;
            let mut out = view.slice(..);
            for (b, block) in self.blocks.iter().enumerate() {
                let at = b as u64 * regions.block_stride;
                out.slice(at as usize..at as usize + block.len()).copy_from_slice(block);
            }
            if !self.words.is_empty() {
                out.slice(moves as usize..moves as usize + 4 * self.words.len())
                    .copy_from_slice(bytemuck::cast_slice(&self.words));
            }
            let at = rows as usize;
            for (j, &row) in self.rows.iter().enumerate() {
                // Rows come from all over the tables: ask for one a few
                // copies ahead, so that its cache misses overlap.
                if let Some(&ahead) = self.rows.get(j + ROW_AHEAD) {
                    tables.prefetch(ahead);
                }
                let src = tables.row(row);
                out.slice(at + j * row_bytes..at + (j + 1) * row_bytes).copy_from_slice(bytemuck::cast_slice(src));
            }
        }
        ring.buffers[k].unmap();
        let row_part = (self.rows.len() * row_bytes) as u64;
        wire.h2d += total;
        ledger.row_bytes_h2d += row_part;
        ledger.data_bytes_h2d += total - row_part;
        Ok((Written { offsets, buffer: k, bytes: total }, waited))
    }
}

/// A step written into the upload ring.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    pub offsets: Offsets,
    buffer: usize,
    bytes: u64,
}

impl Written {
    /// Copies the step's inputs into the step buffer (before its pass),
    /// unless the kernels read the ring buffer itself (zero-copy).
    pub fn copy(&self, ring: &UploadRing, enc: &mut wgpu::CommandEncoder, step: &wgpu::Buffer) {
        if !ring.zero_copy {
            enc.copy_buffer_to_buffer(&ring.buffers[self.buffer], 0, step, 0, self.bytes);
        }
    }

    /// The source of this step's inputs: its ring buffer in zero-copy mode,
    /// else the step buffer (0).
    pub fn source(&self, ring: &UploadRing) -> usize {
        if ring.zero_copy { self.buffer } else { 0 }
    }

    /// After `submission`, which copies it: its ring buffer is mapped again
    /// for a later step as soon as the device is done with it.
    pub fn release(&self, ring: &mut UploadRing, submission: wgpu::SubmissionIndex) {
        ring.remap(self.buffer, submission);
    }
}

/// Mapped buffers the steps' inputs are written into and copied from, used
/// in turn: no allocation per step, and a buffer is written while the
/// device still copies from the others.
pub struct UploadRing {
    buffers: Vec<wgpu::Buffer>,
    /// Mapped and ready to be written.
    ready: Vec<bool>,
    signals: Vec<MapSignal>,
    /// The submission that last copied from each buffer.
    copied_by: Vec<Option<wgpu::SubmissionIndex>>,
    next: usize,
    /// The kernels read these buffers themselves.
    zero_copy: bool,
}

/// Buffers of the upload ring.
pub const UPLOAD_RING: usize = 4;

impl UploadRing {
    /// A ring of buffers of `bytes`; with `zero_copy` the kernels bind them.
    pub fn new(dev: &Device, bytes: u64, zero_copy: bool) -> Self {
        use wgpu::BufferUsages as U;
        let usage = if zero_copy { U::MAP_WRITE | U::STORAGE | U::UNIFORM } else { U::MAP_WRITE | U::COPY_SRC };
        let buffers = (0..UPLOAD_RING)
            .map(|k| {
                dev.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some(&format!("step upload {k}")),
                    size: bytes.max(16).next_multiple_of(4),
                    usage,
                    mapped_at_creation: true,
                })
            })
            .collect();
        UploadRing {
            buffers,
            ready: vec![true; UPLOAD_RING],
            signals: (0..UPLOAD_RING).map(|_| MapSignal::new()).collect(),
            copied_by: vec![None; UPLOAD_RING],
            next: 0,
            zero_copy,
        }
    }

    pub fn buffers(&self) -> &[wgpu::Buffer] {
        &self.buffers
    }

    /// The next buffer, mapped: waits for the device to finish copying from
    /// it where it has not. Returns it and the seconds waited.
    fn take(&mut self, dev: &Device) -> Result<(usize, f64)> {
        let k = self.next;
        self.next = (k + 1) % UPLOAD_RING;
        let mut waited = 0.0;
        if !self.ready[k] {
            let mut done = self.signals[k].try_take();
            if done.is_none() {
                // The copy from it may be long done: collect the callback.
                let _ = dev.device().poll(wgpu::PollType::Poll);
                done = self.signals[k].try_take();
            }
            if done.is_none() {
                waited = dev.wait_mapped(&self.signals[k], self.copied_by[k].clone())?;
                done = self.signals[k].try_take();
            }
            done.unwrap_or_else(|| Err("an upload buffer was not mapped".into())).map_err(|e| dev.err(e))?;
        }
        self.ready[k] = false;
        Ok((k, waited))
    }

    fn remap(&mut self, k: usize, submission: wgpu::SubmissionIndex) {
        let buf = &self.buffers[k];
        self.signals[k].request_mode(buf.slice(..), wgpu::MapMode::Write);
        self.copied_by[k] = Some(submission);
    }
}

/// The launchers of one compute pass.
pub struct Launch<'p, 'k> {
    pub pass: &'p mut wgpu::ComputePass<'static>,
    pub kernels: &'k Kernels,
    pub bind: &'k BindGroups,
    pub offsets: Offsets,
    pub max_per_dim: u32,
    /// Dispatches so far.
    pub dispatches: u64,
    /// The source of this step's inputs ([`Written::source`]): which of a
    /// set of per-source bind groups to use.
    pub source: usize,
}

impl Launch<'_, '_> {
    fn dispatch(
        &mut self,
        pipeline: &wgpu::ComputePipeline,
        group: &wgpu::BindGroup,
        dynamic: &[u32],
        groups: (u32, u32),
    ) {
        self.pass.set_pipeline(pipeline);
        self.pass.set_bind_group(0, group, dynamic);
        self.pass.dispatch_workgroups(groups.0, groups.1, 1);
        self.dispatches += 1;
    }

    /// Sets the slot-map entries of block `block` ([`super::kernels::MapParams`]).
    pub fn map_rows(&mut self, block: u32, count: u32) {
        if count == 0 {
            return;
        }
        let o = self.offsets;
        let groups = dispatch_size(count as u64, WORKGROUP, self.max_per_dim);
        self.dispatch(&self.kernels.map_rows.pipeline, &self.bind.map_rows, &[o.moves, o.block(block)], groups);
    }

    /// Scatters `count` upload-window rows into their slots
    /// ([`super::kernels::MoveParams`]).
    pub fn scatter(&mut self, block: u32, count: u32, row_vec4: u32) {
        if count == 0 {
            return;
        }
        let o = self.offsets;
        let groups = dispatch_size(count as u64 * row_vec4 as u64, WORKGROUP, self.max_per_dim);
        self.dispatch(&self.kernels.scatter.pipeline, &self.bind.scatter, &[o.rows, o.moves, o.block(block)], groups);
    }

    /// Gathers `count` slots into write-back target `target` (the download
    /// window, or a readback buffer in zero-copy mode)
    /// ([`super::kernels::MoveParams`]).
    pub fn gather(&mut self, block: u32, count: u32, row_vec4: u32, target: usize) {
        if count == 0 {
            return;
        }
        let o = self.offsets;
        let groups = dispatch_size(count as u64 * row_vec4 as u64, WORKGROUP, self.max_per_dim);
        self.dispatch(&self.kernels.gather.pipeline, &self.bind.gather[target], &[o.moves, o.block(block)], groups);
    }

    /// `width` SGD invocations over block `block`'s parts
    /// ([`super::kernels::SgdParams`]);
    /// `waves`: the parts are the deterministic mode's waves.
    pub fn sgd(&mut self, block: u32, width: u32, waves: bool) {
        let group = if waves { &self.bind.sgd_waves } else { &self.bind.sgd };
        let groups = dispatch_size(width as u64, WORKGROUP, self.max_per_dim);
        let o = self.offsets;
        self.dispatch(&self.kernels.sgd.pipeline, group, &[o.block(block)], groups);
    }

    /// One `sgd_tail` workgroup over block `block`'s waves, in order.
    pub fn sgd_tail(&mut self, block: u32) {
        let o = self.offsets;
        let groups = dispatch_size(TAIL_GROUP as u64, TAIL_GROUP, self.max_per_dim);
        self.dispatch(&self.kernels.sgd_tail.pipeline, &self.bind.sgd_waves, &[o.block(block)], groups);
    }

    /// `sgd_blocked` over block `block`'s `parts` parts, a worker each: an
    /// invocation, or with `lanes` a workgroup (`sgd_blocked_lanes`).
    pub fn sgd_blocked(&mut self, block: u32, parts: u32, lanes: bool) {
        let o = self.offsets;
        let (kernel, groups) = if lanes {
            (&self.kernels.sgd_blocked_lanes, dispatch_size(parts as u64, 1, self.max_per_dim))
        } else {
            (&self.kernels.sgd_blocked, dispatch_size(parts as u64, WORKGROUP, self.max_per_dim))
        };
        self.dispatch(&kernel.pipeline, &self.bind.sgd, &[o.block(block)], groups);
    }

    /// `sgd_tiles` (or with `lanes` `sgd_tiles_lanes`) over one tile shift
    /// of a sweep, block `block`'s [`super::kernels::SgdParams`] read as the
    /// kernel's: a workgroup for each of `tiles` tiles a side.
    pub fn sgd_tiles(&mut self, block: u32, tiles: u32, lanes: bool) {
        let o = self.offsets;
        let kernel = if lanes { &self.kernels.sgd_tiles_lanes } else { &self.kernels.sgd_tiles };
        self.dispatch(&kernel.pipeline, &self.bind.sgd, &[o.block(block)], (tiles, 1));
    }

    /// Predicts `count` test ratings ([`super::kernels::PredictParams`]) with
    /// `group` (the
    /// test set's bind group).
    pub fn predict(&mut self, group: &wgpu::BindGroup, block: u32, count: u32) {
        let o = self.offsets;
        let groups = dispatch_size(count as u64, WORKGROUP, self.max_per_dim);
        self.dispatch(&self.kernels.predict.pipeline, group, &[o.block(block), o.rows], groups);
    }
}
