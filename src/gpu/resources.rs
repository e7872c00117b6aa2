//! The device buffers and bind groups, created once per backend.
//!
//! * `slab`: the only device buffer that keeps embedding rows; kernels reach
//!   rows only through slots.
//! * `slot_map`: one u32 per global row ([`crate::stage::entry`]): row
//!   metadata, through which kernels turn (user, item) into slots.
//! * `ratings`: the training ratings as the device holds them, uploaded once
//!   (or, past what the adapter can bind, a window streamed per step), and
//!   `test`, the test ratings; both counted as data.
//! * `parts`: the layout's parts, then the epoch's plan as parts (for a slab
//!   that holds every row, whose dispatches span many parts); `waves`: the
//!   deterministic mode's waves.
//! * `step`: one step's inputs: parameter blocks, then the moves (slot-map
//!   entries and slots), then the rows staged in (the upload window),
//!   copied from a mapped upload buffer ([`super::launch::UploadRing`]).
//!   Kernels see its regions at dynamic offsets. In zero-copy mode
//!   ([`super::AdapterSummary::zero_copy`]) the kernels read the upload
//!   buffers themselves and there is no copy.
//! * `download` (the download window) and the readback ring
//!   ([`super::readback`]) for rows leaving the slab; in zero-copy mode
//!   the gathers write into the readback buffers themselves.
//! * `loss`, `sums`, `rates`: squared-error accumulators, evaluation's error
//!   sums, the epoch's rates.

use super::device::Device;
use super::kernels::{Kernels, PARAMS_SIZE};
use super::layout::GpuLayout;

/// Where a step's inputs sit in the step buffer.
#[derive(Debug, Clone, Copy)]
pub struct StepRegions {
    /// Distance between parameter blocks (the uniform offset alignment).
    pub block_stride: u64,
    /// The most parameter blocks of one step.
    pub max_blocks: u32,
    /// The most words of moves of one step.
    pub max_words: u64,
    /// Bytes of the upload window.
    pub window_bytes: u64,
    /// Storage offsets' alignment.
    pub align: u64,
}

impl StepRegions {
    /// Offsets of the moves and of the upload rows for a step of `blocks`
    /// parameter blocks and `words` words of moves.
    pub fn offsets(&self, blocks: u32, words: u64) -> (u64, u64) {
        let moves = (blocks as u64 * self.block_stride).next_multiple_of(self.align);
        let rows = (moves + words * 4).next_multiple_of(self.align);
        (moves, rows)
    }

    /// Bytes of the buffer: room for the largest of each region at any
    /// offset the others leave.
    pub fn buffer_bytes(&self) -> u64 {
        let (_, rows) = self.offsets(self.max_blocks, self.max_words);
        rows + self.window_bytes
    }
}

pub struct Buffers {
    pub slab: wgpu::Buffer,
    pub slot_map: wgpu::Buffer,
    pub ratings: wgpu::Buffer,
    pub parts: wgpu::Buffer,
    pub waves: wgpu::Buffer,
    pub step: wgpu::Buffer,
    pub download: wgpu::Buffer,
    pub loss: wgpu::Buffer,
    pub rates: wgpu::Buffer,
    pub small_readback: wgpu::Buffer,
}

/// The bind groups of one source of step inputs (the step buffer, or in
/// zero-copy mode each upload ring buffer).
pub struct BindGroups {
    pub map_rows: wgpu::BindGroup,
    pub scatter: wgpu::BindGroup,
    /// One per target of write-backs: the download window, or in zero-copy
    /// mode each readback buffer.
    pub gather: Vec<wgpu::BindGroup>,
    /// `sgd` over `parts`, and over `waves` (deterministic mode).
    pub sgd: wgpu::BindGroup,
    pub sgd_waves: wgpu::BindGroup,
}

/// The test ratings on the device and what evaluates them.
pub struct TestBuffers {
    pub test: wgpu::Buffer,
    pub sums: wgpu::Buffer,
    pub readback: wgpu::Buffer,
    /// One per source of step inputs.
    pub predict: Vec<wgpu::BindGroup>,
}

/// Sizes the resources are made for.
pub struct Sizes {
    pub ratings_bytes: u64,
    /// Entries of the `parts` buffer (the layout's, then a plan's).
    pub part_entries: u64,
    pub wave_entries: u64,
    pub n_rows: u64,
    /// Squared-error accumulators (invocations × models).
    pub loss_words: u64,
    pub copies: u64,
}

fn entire(binding: u32, buf: &wgpu::Buffer) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry { binding, resource: buf.as_entire_binding() }
}

/// A region of `size` bytes of `buf`, bound at a dynamic offset.
fn region(binding: u32, buf: &wgpu::Buffer, size: u64) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry {
        binding,
        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: buf,
            offset: 0,
            size: wgpu::BufferSize::new(size.max(16)),
        }),
    }
}

impl Buffers {
    pub fn new(dev: &Device, layout: &GpuLayout, regions: &StepRegions, sizes: &Sizes) -> Self {
        use wgpu::BufferUsages as U;
        let device = dev.device();
        Buffers {
            slab: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("slab"),
                size: layout.slab_bytes,
                usage: U::STORAGE | U::COPY_DST | U::COPY_SRC,
                mapped_at_creation: false,
            }),
            slot_map: dev.buffer("slot map", sizes.n_rows * 4, U::STORAGE | U::COPY_DST | U::COPY_SRC),
            ratings: dev.buffer("training ratings", sizes.ratings_bytes, U::STORAGE | U::COPY_DST),
            parts: dev.buffer("parts", sizes.part_entries * 8, U::STORAGE | U::COPY_DST),
            waves: dev.buffer("waves", sizes.wave_entries * 8, U::STORAGE | U::COPY_DST),
            step: dev.buffer("step input", regions.buffer_bytes(), U::UNIFORM | U::STORAGE | U::COPY_DST),
            download: dev.buffer(
                "download window",
                layout.download_rows as u64 * layout.row_bytes,
                U::STORAGE | U::COPY_SRC,
            ),
            loss: dev.buffer("loss sums", sizes.loss_words * 4, U::STORAGE | U::COPY_SRC | U::COPY_DST),
            rates: dev.buffer("rates", sizes.copies * 8, U::STORAGE | U::COPY_DST),
            small_readback: dev.buffer("loss readback", sizes.loss_words * 4, U::MAP_READ | U::COPY_DST),
        }
    }

    /// The bind groups of every source of step inputs (`inputs`: the step
    /// buffer, or the upload ring's buffers), each with a gather per target
    /// of write-backs (`targets`: the download window, or the readback
    /// ring's buffers).
    pub fn bind_groups(
        &self,
        dev: &Device,
        kernels: &Kernels,
        regions: &StepRegions,
        inputs: &[&wgpu::Buffer],
        targets: &[&wgpu::Buffer],
    ) -> Vec<BindGroups> {
        let device = dev.device();
        let moves_bytes = regions.max_words * 4;
        let group = |label: &str, k: &super::kernels::Kernel, entries: &[wgpu::BindGroupEntry]| {
            device.create_bind_group(&wgpu::BindGroupDescriptor { label: Some(label), layout: &k.layout, entries })
        };
        inputs
            .iter()
            .map(|&step| {
                let params = |b| region(b, step, PARAMS_SIZE);
                let sgd = |label, parts| {
                    group(
                        label,
                        &kernels.sgd,
                        &[
                            entire(0, &self.slab),
                            entire(1, &self.ratings),
                            entire(2, &self.loss),
                            params(3),
                            entire(4, &self.rates),
                            entire(5, &self.slot_map),
                            entire(6, parts),
                        ],
                    )
                };
                BindGroups {
                    map_rows: group(
                        "map_rows bind group",
                        &kernels.map_rows,
                        &[entire(0, &self.slot_map), region(1, step, moves_bytes), params(2)],
                    ),
                    scatter: group(
                        "scatter_rows bind group",
                        &kernels.scatter,
                        &[
                            entire(0, &self.slab),
                            region(1, step, regions.window_bytes),
                            region(2, step, moves_bytes),
                            params(3),
                        ],
                    ),
                    gather: targets
                        .iter()
                        .map(|&target| {
                            group(
                                "gather_rows bind group",
                                &kernels.gather,
                                &[entire(0, &self.slab), entire(1, target), region(2, step, moves_bytes), params(3)],
                            )
                        })
                        .collect(),
                    sgd: sgd("sgd bind group (parts)", &self.parts),
                    sgd_waves: sgd("sgd bind group (waves)", &self.waves),
                }
            })
            .collect()
    }

    /// The test set's buffers for `test_bytes` of test ratings and
    /// `sum_pairs` (squared, absolute) error sums.
    pub fn test_buffers(
        &self,
        dev: &Device,
        kernels: &Kernels,
        regions: &StepRegions,
        inputs: &[&wgpu::Buffer],
        test_bytes: u64,
        sum_pairs: u64,
    ) -> TestBuffers {
        use wgpu::BufferUsages as U;
        let test = dev.buffer("test ratings", test_bytes, U::STORAGE | U::COPY_DST);
        let sums = dev.buffer("error sums", sum_pairs * 8, U::STORAGE | U::COPY_SRC);
        let readback = dev.buffer("error sums readback", sum_pairs * 8, U::MAP_READ | U::COPY_DST);
        let predict = inputs
            .iter()
            .map(|&step| {
                dev.device().create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("predict bind group"),
                    layout: &kernels.predict.layout,
                    entries: &[
                        entire(0, &self.slab),
                        entire(1, &test),
                        entire(2, &sums),
                        region(3, step, PARAMS_SIZE),
                        region(4, step, regions.window_bytes),
                        entire(5, &self.slot_map),
                    ],
                })
            })
            .collect();
        TestBuffers { test, sums, readback, predict }
    }
}
