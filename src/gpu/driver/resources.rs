//! Planning the slab and building the backend: its buffers, the device's
//! copy of the ratings and the test set, and the debug reads.

use super::*;

/// The training ratings' bytes a device can hold at once: what one storage
/// binding takes, or less for a test.
pub(super) fn ratings_capacity(setup: &GpuSetup, adapter: &crate::gpu::AdapterSummary) -> u64 {
    let bind = adapter.max_storage_buffer_binding_size.min(adapter.max_buffer_size);
    setup.data_window.map_or(bind, |w| w.min(bind)) / 12 * 12
}

/// [`GpuBackend::plan`]'s layout and the listings it was made from.
pub(super) struct Planned {
    layout: GpuLayout,
    counts: Vec<u32>,
    rows: PartRows,
    groups: Option<GroupRows>,
}

impl GpuBackend {
    /// Lays the slab and the device's copy of the ratings out for `setup` on
    /// `ctx`, and compiles the kernels.
    /// The slab's plan for `setup` on `adapter`, with the per-run listings
    /// it came from: host work only, what [`GpuBackend::new`] starts with
    /// (and `rowstage plan` prints, so that it shows what a run will do).
    pub fn plan(setup: &GpuSetup, adapter: &crate::gpu::AdapterSummary) -> Result<GpuLayout> {
        Ok(Self::planned(setup, adapter)?.layout)
    }

    pub(super) fn planned(setup: &GpuSetup, adapter: &crate::gpu::AdapterSummary) -> Result<Planned> {
        let run = setup.layout.clone();
        let (n_users, n_items) = (run.n_users(), run.n_items());
        let copies = setup.copies.max(1);
        let row_bytes = (crate::model::row_stride(setup.rank) * 4 * copies) as u64;
        let threads = setup.threads.max(1);
        let co = run.spec().co_partition;
        let mut counts = access_counts(run.ratings(), n_users, n_items);
        if let Some(c) = co {
            counts = c.other_side_counts(&counts, n_users);
        }
        let block_slots = co.map_or(0, |c| c.block_rows);
        let slots = crate::stage::slots_in(setup.slab_bytes, row_bytes);
        let every_row = holds_every_row(setup.policy, slots.saturating_sub(block_slots), &counts, co.is_some());
        let rows = PartRows::new(&run, threads, !every_row);
        let groups = co.map(|c| GroupRows::new(&run, c.side));
        // Streamed ratings come a part a step; otherwise a blocked step may
        // hold several parts of a round.
        let capacity = ratings_capacity(setup, adapter);
        let multi_part_bins = run.bins().filter(|_| run.ratings().len() as u64 * 12 <= capacity);
        let layout = plan_layout(
            &LayoutInput {
                slab_bytes: setup.slab_bytes,
                row_bytes,
                slab: SlabInput {
                    slots,
                    policy: setup.policy,
                    batch: run.spec().batch,
                    ratings: run.ratings().len(),
                    n_users,
                    n_items,
                    co_partition: co,
                    counts: &counts,
                    rows: &rows,
                    layout: &run,
                    groups: groups.as_ref(),
                    threads,
                    multi_part_bins,
                },
                largest_part: run.bins().map(|_| run.max_part_len() as u32),
            },
            adapter,
        )?;
        Ok(Planned { layout, counts, rows, groups })
    }

    /// Lays the slab and the device's copy of the ratings out for `setup` on
    /// `ctx`, and compiles the kernels.
    pub fn new(ctx: GpuContext, setup: &GpuSetup) -> Result<Self> {
        let run = setup.layout.clone();
        let (n_users, n_items) = (run.n_users(), run.n_items());
        let n_rows = n_users + n_items;
        let copies = setup.copies.max(1);
        let row_bytes = (crate::model::row_stride(setup.rank) * 4 * copies) as u64;
        let threads = setup.threads.max(1);
        let Planned { layout, counts, rows, groups } = Self::planned(setup, &ctx.summary)?;
        let capacity = ratings_capacity(setup, &ctx.summary);
        let dev = Device::new(ctx);
        let summary = dev.ctx.summary.clone();
        let width = setup.hogwild_width.resolve(&summary);
        // The device's copy of the ratings: waves in deterministic mode.
        // The blocked order is exact by itself: no waves, no conflicts.
        let blocked = run.bins().is_some();
        let waved = setup.deterministic && !blocked;
        let DeviceRatings { ratings: device_ratings, waves, part_waves } = if waved {
            prepare::waves(&run, threads)
        } else {
            DeviceRatings { ratings: Vec::new(), waves: Vec::new(), part_waves: Vec::new() }
        };
        let conflicts = if setup.deterministic || blocked {
            vec![0; run.parts().len()]
        } else {
            prepare::conflicts(&run, width, threads)
        };
        let source: &[Rating] = if waved { &device_ratings } else { run.ratings() };
        let all_bytes = source.len() as u64 * 12;
        let streamed = all_bytes > capacity;
        if streamed && (run.max_part_len() as u64 * 12) > capacity {
            return Err(dev.err(format!(
                "a part of {} ratings does not fit the {capacity} bytes of ratings the device can bind; use a smaller `batch`",
                run.max_part_len()
            )));
        }
        let max_wave = waves.iter().map(|w| w.len).max().unwrap_or(0);
        let batch = run.max_part_len() as u32;
        let workers = run.bins().unwrap_or(0);
        let invocations = width.map_or(batch, |w| w.min(batch)).max(max_wave).max(TAIL_GROUP).max(workers).max(1);
        let loss_words = invocations as u64 * copies as u64;
        // A block's dynamic offset must be a multiple of the adapter's
        // alignment (a power of two), whatever the block's size.
        let uniform_align = summary.min_uniform_buffer_offset_alignment.max(1) as u64;
        let max_waves = part_waves.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        let regions = StepRegions {
            block_stride: kernels::PARAMS_SIZE.next_multiple_of(uniform_align),
            max_blocks: max_waves.max(ROUNDS_PER_SUBMIT as u32) + 8,
            // Slot-map entries (two words each) for the loads, the victims,
            // the lent rows and the rows left by the last step, and one
            // slot per load, victim and staged row.
            max_words: 12 * layout.upload_rows.max(layout.download_rows) as u64 + 64,
            window_bytes: layout.upload_rows as u64 * row_bytes,
            align: (summary.min_storage_buffer_offset_alignment as u64).max(16),
        };
        let spec = kernels::Spec {
            rank: setup.rank as u32,
            models: copies as u32,
            tile: run.tile().unwrap_or(1).clamp(1, kernels::MAX_LANES),
        };
        let lanes = setup.blocked_lanes.unwrap_or(!summary.is_software())
            && kernels::lanes(setup.rank as u32)
                <= kernels::MAX_LANES.min(summary.max_compute_invocations_per_workgroup);
        let tiles = Tiles::of(&run, layout.all_resident && !streamed, &summary, lanes, spec);
        let sizes = Sizes {
            ratings_bytes: all_bytes.min(capacity),
            part_entries: 2 * run.parts().len() as u64 + tiles.map_or(0, |t| t.words(&run).div_ceil(2)),
            wave_entries: waves.len() as u64,
            n_rows: n_rows as u64,
            loss_words,
            copies: copies as u64,
        };
        let buffers = Buffers::new(&dev, &layout, &regions, &sizes);
        let kernels = Kernels::new(dev.device(), spec);
        let zero_copy = summary.zero_copy;
        let upload = UploadRing::new(&dev, regions.buffer_bytes(), zero_copy);
        let readback = Readback::new(&dev, layout.download_rows as u64 * row_bytes, n_rows, zero_copy);
        let bind = {
            let inputs: Vec<&wgpu::Buffer> =
                if zero_copy { upload.buffers().iter().collect() } else { vec![&buffers.step] };
            let targets: Vec<&wgpu::Buffer> =
                if zero_copy { readback.buffers().iter().collect() } else { vec![&buffers.download] };
            buffers.bind_groups(&dev, &kernels, &regions, &inputs, &targets)
        };
        let mut wire = Wire::default();
        let mut made_ledger = Ledger::default();
        // Uploaded once: the ratings (unless streamed), the layout's parts,
        // the waves. The slot map starts cleared: no row on the device.
        if !streamed {
            made_ledger.data_bytes_h2d += dev.put(&mut wire, &buffers.ratings, 0, bytemuck::cast_slice(source));
        }
        made_ledger.data_bytes_h2d += dev.put(&mut wire, &buffers.parts, 0, bytemuck::cast_slice(run.parts()));
        made_ledger.data_bytes_h2d += dev.put(&mut wire, &buffers.waves, 0, bytemuck::cast_slice(&waves));
        if let (Some(t), Some(starts)) = (tiles, run.block_starts()) {
            made_ledger.data_bytes_h2d +=
                dev.put(&mut wire, &buffers.parts, t.starts_at as u64 * 4, bytemuck::cast_slice(&starts));
        }
        let mut enc = dev.encoder("clear slot map");
        enc.clear_buffer(&buffers.slot_map, 0, None);
        dev.submit(enc);
        let horizon = lookahead_accesses(setup.lookahead, run.ratings().len(), &rows);
        let stager = Stager::new(setup.policy, layout.areas, n_users as u32, n_items as u32, &counts, horizon)
            .with_sca_cache(layout.sca_cache)
            .with_block_area(layout.block_slots);
        let timer = Timer::new(&dev, !summary.is_noop());
        let outside = if layout.all_resident { None } else { outside_rows(&stager, &rows, threads) };
        let exec = Exec {
            kernels,
            buffers,
            bind,
            regions,
            readback,
            timer,
            input: StepInput::default(),
            upload,
            zero_copy,
            wire,
            n_parts: run.parts().len() as u32,
            plan_table: Vec::new(),
            row_vec4: (row_bytes / 16) as u32,
            n_users: n_users as u32,
            bias_reg: setup.bias_reg,
            mean: setup.mean,
            range: setup.range,
            width: if setup.deterministic { None } else { width },
            waves: waved.then_some((waves, part_waves)),
            wave_tail: setup.wave_tail.unwrap_or(!summary.is_software()),
            blocked,
            lanes,
            tiles,
            streamed: streamed.then(|| if waved { device_ratings } else { run.ratings().to_vec() }),
            capacity,
            waited: 0.0,
            dispatches: 0,
            sgd_launches: 0,
            sgd_workers: 0.0,
            times: HostTimes::default(),
            layout,
            dev,
        };
        exec.dev.check()?;
        let prediction = exec.layout.prediction;
        let whole = WholeEpoch::of(&run, &rows, &conflicts);
        Ok(GpuBackend {
            exec,
            run,
            rows,
            outside,
            groups,
            conflicts,
            whole,
            stager,
            moves: Moves::default(),
            test: None,
            copies: copies as u32,
            deterministic: setup.deterministic,
            resident_loaded: false,
            made_ledger,
            following_of: None,
            prediction,
        })
    }

    /// Gives the device back, e.g. to build another backend on it.
    pub fn into_context(self) -> GpuContext {
        self.exec.dev.ctx
    }

    pub fn layout(&self) -> &GpuLayout {
        &self.exec.layout
    }

    pub fn context(&self) -> &GpuContext {
        &self.exec.dev.ctx
    }

    /// Bytes handed to wgpu so far.
    pub fn wire(&self) -> Wire {
        self.exec.wire
    }

    /// Hogwild: how many ratings of a part update at once (`None`: every
    /// rating of a part, or deterministic mode's waves).
    pub fn hogwild_width(&self) -> Option<u32> {
        self.exec.width
    }

    /// Reads back the whole slab (tests and diagnostics); not counted.
    pub fn debug_read_slab(&mut self) -> Result<Vec<f32>> {
        let size = self.exec.layout.slab_bytes & !3;
        Ok(bytemuck::cast_slice(&self.debug_read(|b| &b.slab, size)?).to_vec())
    }

    /// Reads back the slot map (tests and diagnostics); not counted.
    pub fn debug_read_slot_map(&mut self) -> Result<Vec<u32>> {
        let size = (self.run.n_users() + self.run.n_items()) as u64 * 4;
        Ok(bytemuck::cast_slice(&self.debug_read(|b| &b.slot_map, size)?).to_vec())
    }

    /// The stager's slot of every global row ([`crate::stage::NONE`] when
    /// not in the slab), to compare with the device's slot map.
    pub fn debug_slots(&self) -> Vec<u32> {
        (0..(self.run.n_users() + self.run.n_items()) as u32).map(|r| self.stager.slot_of(r)).collect()
    }

    pub(super) fn debug_read(&mut self, which: impl Fn(&Buffers) -> &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
        use wgpu::BufferUsages as U;
        let dev = &self.exec.dev;
        let tmp = dev.buffer("debug readback", size, U::MAP_READ | U::COPY_DST);
        let mut enc = dev.encoder("debug copy");
        enc.copy_buffer_to_buffer(which(&self.exec.buffers), 0, &tmp, 0, size);
        dev.queue().submit([enc.finish()]);
        let mut out = Vec::new();
        dev.read(&MapSignal::new(), &tmp, size, |b| out.extend_from_slice(b))?;
        Ok(out)
    }

    /// Stages the resident set in before the first step.
    pub(super) fn load_resident(&mut self, tables: &HostTables, ledger: &mut Ledger) -> Result<()> {
        let placed = self.stager.resident();
        let mut moves = Moves::default();
        for p in &placed {
            ledger.row_in(self.stager.is_user(p.row), true);
            moves.map.push([p.row, entry::slot(p.slot)]);
        }
        moves.load = placed;
        self.exec.load(tables, &moves, ledger)?;
        self.resident_loaded = true;
        Ok(())
    }

    /// Uploads `test` and cuts it into evaluation steps, unless it is the
    /// test set already on the device.
    pub(super) fn prepare_test(&mut self, test: &[Rating], ledger: &mut Ledger) -> Result<()> {
        let key = (test.as_ptr() as usize, test.len());
        if self.test.as_ref().is_some_and(|t| t.key == key) {
            return Ok(());
        }
        let n_users = self.run.n_users() as u32;
        let n_rows = self.run.n_users() + self.run.n_items();
        let resident = self.exec.layout.areas.resident;
        let bytes = test.len() as u64 * 12;
        let streamed = bytes > self.exec.capacity;
        // A step's test ratings fit the device's ratings window when streamed.
        let longest = EVAL_RATINGS.min((self.exec.capacity / 12).max(1) as usize);
        let (ends, rows) = if self.exec.layout.all_resident {
            let ends = chunks(test.len(), longest).map(|r| r.end as u32).collect();
            (ends, PartRows::default())
        } else {
            // A step's rows outside the resident area must fit the window.
            let st = &self.stager;
            let outside = |g: u32| st.slot_of(g) == crate::stage::NONE || st.slot_of(g) >= resident;
            let limit = self.exec.layout.upload_rows as usize;
            cut_by_rows(test, n_users, n_rows, limit, longest, outside)
        };
        let mut sums_at = Vec::with_capacity(ends.len());
        let mut pairs = 0u64;
        let mut start = 0u32;
        for &end in &ends {
            sums_at.push(pairs as u32);
            pairs += ((end - start) as u64).div_ceil(WORKGROUP as u64) * self.copies as u64;
            start = end;
        }
        let device_bytes = if streamed {
            let mut widest = 0u32;
            let mut s = 0u32;
            for &e in &ends {
                widest = widest.max(e - s);
                s = e;
            }
            widest as u64 * 12
        } else {
            bytes
        };
        let exec = &self.exec;
        let inputs: Vec<&wgpu::Buffer> =
            if exec.zero_copy { exec.upload.buffers().iter().collect() } else { vec![&exec.buffers.step] };
        let buffers =
            exec.buffers.test_buffers(&exec.dev, &exec.kernels, &exec.regions, &inputs, device_bytes, pairs.max(1));
        if !streamed {
            ledger.data_bytes_h2d +=
                self.exec.dev.put(&mut self.exec.wire, &buffers.test, 0, bytemuck::cast_slice(test));
        }
        self.test =
            Some(TestSet { key, buffers, ends, rows, sums_at, pairs, streamed: streamed.then(|| test.to_vec()) });
        Ok(())
    }
}
