//! One step's inputs, assembled on the host and written in one write
//! ([`StepInput`]), and one launcher per kernel family ([`Launch`]): each
//! looks up its pipeline, binds its group at the step's offsets, points at
//! its parameter block and dispatches.

use super::device::{Device, Wire};
use super::kernels::{Kernels, TAIL_GROUP, WORKGROUP, dispatch_size};
use super::resources::{BindGroups, StepRegions};
use crate::model::Model;
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
    blocks: Vec<[u8; 32]>,
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
        let mut b = [0u8; 32];
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

    /// Writes the step into the step buffer in one write: the parameter
    /// blocks, the moves, and the rows copied from `model`'s host tables
    /// straight into the staging memory. Counts the rows' bytes as row
    /// traffic and the rest (blocks, moves, alignment) as data.
    #[allow(clippy::too_many_arguments)]
    pub fn write(
        &self,
        dev: &Device,
        step: &wgpu::Buffer,
        regions: &StepRegions,
        model: &Model,
        n_users: u32,
        wire: &mut Wire,
        ledger: &mut Ledger,
    ) -> Offsets {
        debug_assert!(self.blocks.len() as u32 <= regions.max_blocks, "{} parameter blocks", self.blocks.len());
        debug_assert!(self.words.len() as u64 <= regions.max_words, "{} words of moves", self.words.len());
        let row_bytes = model.stride * 4;
        debug_assert!((self.rows.len() * row_bytes) as u64 <= regions.window_bytes, "{} rows", self.rows.len());
        let (moves, rows) = regions.offsets(self.blocks.len() as u32, self.words.len() as u64);
        let offsets = Offsets { block_stride: regions.block_stride as u32, moves: moves as u32, rows: rows as u32 };
        let total = rows + (self.rows.len() * row_bytes) as u64;
        let Some(size) = wgpu::BufferSize::new(total) else { return offsets };
        let Some(mut view) = dev.queue().write_buffer_with(step, 0, size) else { return offsets };
        let mut out = view.slice(..);
        for (b, block) in self.blocks.iter().enumerate() {
            let at = b as u64 * regions.block_stride;
            out.slice(at as usize..at as usize + 32).copy_from_slice(block);
        }
        if !self.words.is_empty() {
            out.slice(moves as usize..moves as usize + 4 * self.words.len())
                .copy_from_slice(bytemuck::cast_slice(&self.words));
        }
        let mut at = rows as usize;
        for &row in &self.rows {
            let src = if row < n_users { model.user_row(row) } else { model.item_row(row - n_users) };
            out.slice(at..at + row_bytes).copy_from_slice(bytemuck::cast_slice(src));
            at += row_bytes;
        }
        drop(view);
        let row_part = (self.rows.len() * row_bytes) as u64;
        wire.h2d += total;
        ledger.row_bytes_h2d += row_part;
        ledger.data_bytes_h2d += total - row_part;
        offsets
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
}

impl Launch<'_, '_> {
    fn dispatch(&mut self, pipeline: &wgpu::ComputePipeline, group: &wgpu::BindGroup, dynamic: &[u32], groups: (u32, u32)) {
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

    /// Gathers `count` slots into the download window
    /// ([`super::kernels::MoveParams`]).
    pub fn gather(&mut self, block: u32, count: u32, row_vec4: u32) {
        if count == 0 {
            return;
        }
        let o = self.offsets;
        let groups = dispatch_size(count as u64 * row_vec4 as u64, WORKGROUP, self.max_per_dim);
        self.dispatch(&self.kernels.gather.pipeline, &self.bind.gather, &[o.moves, o.block(block)], groups);
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

    /// Predicts `count` test ratings ([`super::kernels::PredictParams`]) with
    /// `group` (the
    /// test set's bind group).
    pub fn predict(&mut self, group: &wgpu::BindGroup, block: u32, count: u32) {
        let o = self.offsets;
        let groups = dispatch_size(count as u64, WORKGROUP, self.max_per_dim);
        self.dispatch(&self.kernels.predict.pipeline, group, &[o.block(block), o.rows], groups);
    }
}
