//! Steps that move rows: a step's write (parameters, moves, loaded rows),
//! its pass and its write-backs, and the walk pipelined on its own thread.

use super::*;

impl Exec {
    pub(super) fn sgd_params(&self, first_part: u32, parts: u32, width: u32, base: u32) -> SgdParams {
        SgdParams {
            first_part,
            parts,
            width,
            n_users: self.n_users,
            bias_reg: self.bias_reg,
            mean: self.mean,
            base,
            ..SgdParams::default()
        }
    }

    pub(super) fn moves_params(&self, first: u32, count: u32, slots_at: u32) -> MoveParams {
        MoveParams { first, count, row_vec4: self.row_vec4, slots_at, ..MoveParams::default() }
    }

    /// Writes the step input, encodes one pass with `f`'s launches (timed),
    /// then `after` (copies) and submits. Returns the submission.
    pub(super) fn submit(
        &mut self,
        tables: &HostTables,
        label: &str,
        ledger: &mut Ledger,
        f: impl FnOnce(&mut Launch),
        after: impl FnOnce(&mut wgpu::CommandEncoder, &Buffers),
    ) -> Result<wgpu::SubmissionIndex> {
        let t = Instant::now();
        let (written, waited) =
            self.input.write(&self.dev, &mut self.upload, &self.regions, tables, &mut self.wire, ledger)?;
        self.waited += waited;
        let t1 = Instant::now();
        self.times.write += (t1 - t).as_secs_f64();
        let submission = self.encode(written, label, f, after);
        self.times.encode += t1.elapsed().as_secs_f64();
        Ok(submission)
    }

    pub(super) fn encode(
        &mut self,
        written: Written,
        label: &str,
        f: impl FnOnce(&mut Launch),
        after: impl FnOnce(&mut wgpu::CommandEncoder, &Buffers),
    ) -> wgpu::SubmissionIndex {
        let mut enc = self.dev.encoder(label);
        written.copy(&self.upload, &mut enc, &self.buffers.step);
        let source = written.source(&self.upload);
        {
            let pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(label),
                timestamp_writes: self.timer.writes(),
            });
            let mut pass = pass.forget_lifetime();
            let mut launch = Launch {
                pass: &mut pass,
                kernels: &self.kernels,
                bind: &self.bind[source],
                offsets: written.offsets,
                max_per_dim: self.dev.ctx.summary.max_compute_workgroups_per_dimension,
                dispatches: 0,
                source,
            };
            f(&mut launch);
            self.dispatches += launch.dispatches;
        }
        self.timer.after_pass(&self.dev, &mut enc);
        after(&mut enc, &self.buffers);
        let (submission, blocked) = self.dev.submit(enc);
        self.waited += blocked;
        written.release(&mut self.upload, submission.clone());
        submission
    }

    /// Stages `moves.load` into their slots and sets `moves.map`, outside a
    /// training step (the resident set, a block's rows, lent rows coming
    /// back), in as many steps as the upload window and the moves need. The
    /// caller counts the rows on the ledger.
    /// Rows still on their way back must have reached `model` (see
    /// [`Readback::complete_holding`]).
    pub(super) fn load(&mut self, tables: &HostTables, moves: &Moves, ledger: &mut Ledger) -> Result<()> {
        let per_map = ((self.regions.max_words - self.layout.upload_rows as u64) / 2).max(1) as usize;
        let map_chunks: Vec<_> = chunks(moves.map.len(), per_map).collect();
        let load_chunks: Vec<_> = chunks(moves.load.len(), self.layout.upload_rows as usize).collect();
        for k in 0..map_chunks.len().max(load_chunks.len()) {
            let map = map_chunks.get(k).map_or(&[][..], |r| &moves.map[r.clone()]);
            let load = load_chunks.get(k).map_or(&[][..], |r| &moves.load[r.clone()]);
            if map.is_empty() && load.is_empty() {
                continue;
            }
            self.input.clear();
            let map_at = self.input.map(map);
            let slots_at = self.input.slots(load);
            self.input.rows(load.iter().map(|p| p.row));
            let b_map = self.input.block(MapParams { first: map_at, count: map.len() as u32, ..MapParams::default() });
            let b_scatter = self.input.block(self.moves_params(0, load.len() as u32, slots_at));
            let (n_map, n_load, rv) = (map.len() as u32, load.len() as u32, self.row_vec4);
            self.submit(
                tables,
                "stage rows in",
                ledger,
                |l| {
                    l.map_rows(b_map, n_map);
                    l.scatter(b_scatter, n_load, rv);
                },
                |_, _| {},
            )?;
        }
        self.dev.check()
    }

    /// Writes `placed` rows back to the host tables (through the readback
    /// ring, in as many steps as the download window needs); they reach
    /// the tables as the ring completes. The caller counts them.
    pub(super) fn write_back(&mut self, tables: &mut HostTables, placed: &[Placed], ledger: &mut Ledger) -> Result<()> {
        if placed.is_empty() {
            return Ok(());
        }
        for r in chunks(placed.len(), self.layout.download_rows as usize) {
            let chunk = &placed[r];
            self.input.clear();
            let slots_at = self.input.slots(chunk);
            let b = self.input.block(self.moves_params(0, chunk.len() as u32, slots_at));
            let (n, rv) = (chunk.len() as u32, self.row_vec4);
            let bytes = n as u64 * self.layout.row_bytes;
            let (target, waited) = self.readback.reserve(&self.dev, tables)?;
            self.waited += waited;
            let (gather_to, copy_to) = self.write_back_target(target);
            let submission = self.submit(
                tables,
                "write rows back",
                ledger,
                |l| l.gather(b, n, rv, gather_to),
                |enc, buffers| {
                    if let Some(rb) = &copy_to {
                        enc.copy_buffer_to_buffer(&buffers.download, 0, rb, 0, bytes);
                    }
                },
            )?;
            self.count_d2h(bytes, ledger);
            self.readback.push(bytes, chunk.iter().map(|p| p.row), submission);
        }
        self.dev.check()
    }

    /// Where a write-back into readback buffer `target` is gathered to (a
    /// gather target of the bind groups), and the readback buffer the
    /// download window is then copied to (none in zero-copy mode, where the
    /// gather writes into it).
    pub(super) fn write_back_target(&self, target: usize) -> (usize, Option<wgpu::Buffer>) {
        if self.zero_copy { (target, None) } else { (0, Some(self.readback.buffers()[target].clone())) }
    }

    pub(super) fn count_d2h(&mut self, bytes: u64, ledger: &mut Ledger) {
        self.wire.d2h += bytes;
        ledger.row_bytes_d2h += bytes;
    }

    /// Streams `part`'s training ratings into the ratings window (where the
    /// device cannot hold them all); returns the layout index the window
    /// starts at.
    pub(super) fn stream(&mut self, part: Part, ledger: &mut Ledger) -> u32 {
        let Some(host) = &self.streamed else { return 0 };
        let bytes = bytemuck::cast_slice(&host[part.range()]);
        ledger.data_bytes_h2d += self.dev.put(&mut self.wire, &self.buffers.ratings, 0, bytes);
        part.start
    }

    /// The SGD blocks of the step of plan indices `parts`, in launch order,
    /// as (block, invocations, kernel): in the blocked order one
    /// `sgd_blocked` over the step's parts (a worker each, over the epoch's
    /// part table); otherwise the step's one part, in Hogwild one `sgd` of
    /// the width, in deterministic mode its waves (the tail of small ones in
    /// one `sgd_tail` block).
    pub(super) fn sgd_blocks(
        &mut self,
        plan: &EpochPlan,
        parts: Range<usize>,
        layout: &RunLayout,
        base: u32,
    ) -> Vec<(u32, u32, Sgd)> {
        let mut out = Vec::new();
        if self.blocked {
            let n = parts.len() as u32;
            let params = self.sgd_params(self.n_parts + parts.start as u32, n, n, base);
            out.push((self.input.block(params), n, Sgd::Blocked));
            self.sgd_launches += 1;
            self.sgd_workers += n as f64;
            return out;
        }
        let part = plan.parts[parts.start];
        let len = layout.parts()[part as usize].len;
        match &self.waves {
            None => {
                let width = self.width.map_or(len, |w| w.min(len)).max(1);
                let params = self.sgd_params(part, 1, width, base);
                out.push((self.input.block(params), width, Sgd::Parts));
                self.sgd_launches += 1;
                self.sgd_workers += width as f64;
            }
            Some((waves, part_waves)) => {
                let (w0, w1) = (part_waves[part as usize], part_waves[part as usize + 1]);
                let lens: Vec<u32> = waves[w0 as usize..w1 as usize].iter().map(|w| w.len).collect();
                // The waves from the first one smaller than `sgd_tail`'s
                // workgroup on run in one `sgd_tail` block.
                let n = lens.len();
                let split = if self.wave_tail { lens.iter().position(|&c| c < TAIL_GROUP).unwrap_or(n) } else { n };
                let split = if n - split < 2 { n } else { split };
                for (k, &width) in lens[..split].iter().enumerate() {
                    let params = self.sgd_params(w0 + k as u32, 1, width, base);
                    out.push((self.input.block(params), width, Sgd::Waves));
                }
                // A wave's ratings train at once, the tail's waves in turn.
                self.sgd_launches += n as u64;
                self.sgd_workers += lens.iter().map(|&w| w as f64).sum::<f64>();
                if split < n {
                    let params = self.sgd_params(w0 + split as u32, (n - split) as u32, TAIL_GROUP, base);
                    out.push((self.input.block(params), TAIL_GROUP, Sgd::Tail));
                }
            }
        }
        out
    }

    /// One staged training step: the plan's parts at `parts` after `moves`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn train_step(
        &mut self,
        tables: &mut HostTables,
        plan: &EpochPlan,
        parts: Range<usize>,
        moves: &Moves,
        layout: &RunLayout,
        ledger: &mut Ledger,
    ) -> Result<()> {
        // A row staged in now may still be on its way back from an earlier
        // step: the write-backs up to that step reach the host first.
        let t = Instant::now();
        self.waited += self.readback.complete_holding(&self.dev, tables, moves.load.iter().map(|p| p.row))?;
        self.times.readback += t.elapsed().as_secs_f64();
        // Streamed ratings come a part a step (the walk then makes steps of one).
        let base = self.stream(layout.parts()[plan.parts[parts.start] as usize], ledger);
        self.input.clear();
        let map_at = self.input.map(&moves.map);
        let out_at = self.input.slots(&moves.evict);
        self.input.slots(&moves.release);
        let load_at = self.input.slots(&moves.load);
        self.input.rows(moves.load.iter().map(|p| p.row));
        let (n_map, n_evict, n_load, n_release) =
            (moves.map.len() as u32, moves.evict.len() as u32, moves.load.len() as u32, moves.release.len() as u32);
        let b_map = self.input.block(MapParams { first: map_at, count: n_map, ..MapParams::default() });
        let b_evict = self.input.block(self.moves_params(0, n_evict, out_at));
        let b_load = self.input.block(self.moves_params(0, n_load, load_at));
        let b_release = self.input.block(self.moves_params(n_evict, n_release, out_at + n_evict));
        let sgd = self.sgd_blocks(plan, parts, layout, base);
        let (rv, lanes) = (self.row_vec4, self.lanes);
        let out = n_evict + n_release;
        let bytes = out as u64 * self.layout.row_bytes;
        let (gather_to, copy_to) = if out > 0 {
            let t = Instant::now();
            let (target, waited) = self.readback.reserve(&self.dev, tables)?;
            self.waited += waited;
            self.times.readback += t.elapsed().as_secs_f64();
            self.write_back_target(target)
        } else {
            (0, None)
        };
        let submission = self.submit(
            tables,
            "train step",
            ledger,
            |l| {
                l.map_rows(b_map, n_map);
                l.gather(b_evict, n_evict, rv, gather_to);
                l.scatter(b_load, n_load, rv);
                for &(block, n, kind) in &sgd {
                    kind.launch(l, block, n, lanes);
                }
                l.gather(b_release, n_release, rv, gather_to);
            },
            |enc, buffers| {
                if let Some(rb) = &copy_to {
                    enc.copy_buffer_to_buffer(&buffers.download, 0, rb, 0, bytes);
                }
            },
        )?;
        if out > 0 {
            self.count_d2h(bytes, ledger);
            self.readback.push(bytes, moves.evict.iter().chain(&moves.release).map(|p| p.row), submission);
        }
        self.dev.check()
    }
}

/// Steps the scheduler may run ahead of the device work.
pub(super) const PIPELINE_DEPTH: usize = 4;

/// One of the scheduler's decisions, handed to the device side.
pub(super) enum Job {
    Begin(Moves),
    Train(Range<usize>, Moves),
    End(Vec<Placed>),
}

/// `m` copied into a buffer given back (or a new one).
pub(super) fn copy_moves(m: &Moves, into: Option<Moves>) -> Moves {
    let mut out = into.unwrap_or_default();
    out.evict.clone_from(&m.evict);
    out.load.clone_from(&m.load);
    out.window.clone_from(&m.window);
    out.release.clone_from(&m.release);
    out.map.clone_from(&m.map);
    out
}

/// One of the scheduler's decisions carried out on the device side.
fn carry_out(
    exec: &mut Exec,
    tables: &mut HostTables,
    run: &RunLayout,
    input: &EpochInput,
    event: Event,
    ledger: &mut Ledger,
) -> Result<()> {
    match event {
        Event::BeginBlock(moves) => {
            let rows = moves.load.iter().map(|p| p.row);
            exec.waited += exec.readback.complete_holding(&exec.dev, tables, rows)?;
            exec.load(tables, moves, ledger)
        }
        Event::Train { parts, moves } => {
            exec.train_step(tables, input.plan, parts.clone(), moves, run, ledger)?;
            let ratings = parts.map(|k| run.parts()[input.plan.parts[k] as usize].len as usize);
            input.progress.fetch_add(ratings.sum(), Ordering::Relaxed);
            Ok(())
        }
        Event::EndBlock(placed) => exec.write_back(tables, placed, ledger),
    }
}

/// The staged epoch on two threads: the scheduler's walk (decisions, from
/// each part's rows) runs on its own thread up to [`PIPELINE_DEPTH`] steps
/// ahead, and this one carries the decisions out: rows copied between the
/// host tables and the transfer buffers, steps written, encoded and
/// submitted, write-backs landed. The decisions never wait for the device,
/// and only this thread touches the host tables. (The scheduler copying
/// the loads out itself, once their write-backs had landed, measured
/// slower on a 2-core VM: the rows this thread had just landed then crossed
/// between the cores' caches.) Returns the parts trained.
///
/// A browser page has one thread (docs/ARCHITECTURE.md, "The browser
/// page"): there each decision is carried out as the walk makes it, the
/// same decisions in the same order.
pub(super) fn pipelined(
    mut walker: Walker,
    exec: &mut Exec,
    tables: &mut HostTables,
    run: &RunLayout,
    input: &EpochInput,
    continues: bool,
    ledger: &mut Ledger,
) -> Result<usize> {
    let pass = Pass { plan: input.plan, from: input.from, following: input.following, continues, stop: input.stop };
    if cfg!(target_arch = "wasm32") {
        let mut staged = Ledger::default();
        let done = walker.epoch(pass, &mut staged, |event, _| carry_out(exec, tables, run, input, event, ledger));
        ledger.merge(&staged);
        return done;
    }
    let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(PIPELINE_DEPTH);
    let (spent_tx, spent_rx) = std::sync::mpsc::channel::<Moves>();
    std::thread::scope(|scope| {
        let scheduler = scope.spawn(move || {
            let mut staged = Ledger::default();
            let (t0, mut sending) = (Instant::now(), 0.0);
            let done = walker.epoch(pass, &mut staged, |event, _| {
                let spent = spent_rx.try_recv().ok();
                let job = match event {
                    Event::BeginBlock(moves) => Job::Begin(copy_moves(moves, spent)),
                    Event::Train { parts, moves } => Job::Train(parts, copy_moves(moves, spent)),
                    Event::EndBlock(placed) => Job::End(placed.to_vec()),
                };
                let t = Instant::now();
                // The device side stopped (an error it reports itself).
                let sent = tx.send(job).map_err(|_| crate::error::Error::Interrupted);
                sending += t.elapsed().as_secs_f64();
                sent
            });
            let total = t0.elapsed().as_secs_f64();
            log::debug!(
                "scheduler thread: {total:.4} s: deciding {:.4}, waiting for the device side {sending:.4} s",
                total - sending
            );
            (done, staged)
        });
        let mut failed = None;
        for job in rx.iter() {
            let event = match &job {
                Job::Begin(moves) => Event::BeginBlock(moves),
                Job::Train(parts, moves) => Event::Train { parts: parts.clone(), moves },
                Job::End(placed) => Event::EndBlock(placed),
            };
            if let Err(e) = carry_out(exec, tables, run, input, event, ledger) {
                failed = Some(e);
                break;
            }
            if let Job::Begin(m) | Job::Train(_, m) = job {
                let _ = spent_tx.send(m);
            }
        }
        // Dropping the receiver ends the scheduler at its next step.
        drop(rx);
        let (done, staged) = scheduler.join().expect("the scheduler thread panicked");
        ledger.merge(&staged);
        match failed {
            Some(e) => Err(e),
            None => done,
        }
    })
}
