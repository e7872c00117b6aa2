//! What an epoch counts: ratings, hits and conflicts summed once per run,
//! and the loss read back.

use super::*;

/// What an epoch adds up over every part it trains, summed once per run:
/// a plan holds every part of the layout once, so a whole epoch's sums are
/// the layout's.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct WholeEpoch {
    pub(super) ratings: usize,
    pub(super) user_rows: u64,
    pub(super) item_rows: u64,
    pub(super) conflicts: u64,
}

impl WholeEpoch {
    pub(super) fn of(run: &RunLayout, rows: &PartRows, conflicts: &[u32]) -> Self {
        Self::sum(0..run.parts().len() as u32, run, rows, conflicts)
    }

    /// The sums over `parts`, part by part.
    pub(super) fn sum(
        parts: impl IntoIterator<Item = u32>,
        run: &RunLayout,
        rows: &PartRows,
        conflicts: &[u32],
    ) -> Self {
        let mut w = WholeEpoch::default();
        for p in parts {
            let (u, i) = rows.counts(p);
            w.ratings += run.parts()[p as usize].len as usize;
            w.user_rows += u as u64;
            w.item_rows += i as u64;
            w.conflicts += conflicts.get(p as usize).map_or(0, |&c| c as u64);
        }
        w
    }

    /// `trained`'s sums: these where it holds every part of the layout (a
    /// plan holds a part at most once), else summed part by part.
    pub(super) fn of_trained(
        &self,
        trained: &[u32],
        run: &RunLayout,
        rows: &PartRows,
        conflicts: &[u32],
    ) -> WholeEpoch {
        if trained.len() == run.parts().len() {
            return *self;
        }
        Self::sum(trained.iter().copied(), run, rows, conflicts)
    }
}

/// Chunks of `len` items in pieces of at most `size` (at least one chunk).
pub(super) fn chunks(len: usize, size: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let size = size.max(1);
    (0..len.div_ceil(size).max(1)).map(move |k| k * size..((k + 1) * size).min(len))
}

impl Exec {
    /// Reads back the epoch's squared-error accumulators, per model.
    pub(super) fn read_loss(&mut self, copies: usize, words: u64, ledger: &mut Ledger) -> Result<Vec<f64>> {
        let mut enc = self.dev.encoder("read loss");
        let bytes = words * 4;
        enc.copy_buffer_to_buffer(&self.buffers.loss, 0, &self.buffers.small_readback, 0, bytes);
        self.waited += self.dev.submit(enc).1;
        self.wire.d2h += bytes;
        ledger.data_bytes_d2h += bytes;
        let mut sse = vec![0.0; copies];
        let signal = MapSignal::new();
        self.waited += self.dev.read(&signal, &self.buffers.small_readback, bytes, |b| {
            for (j, &x) in bytemuck::cast_slice::<u8, f32>(b).iter().enumerate() {
                sse[j % copies] += x as f64;
            }
        })?;
        Ok(sse)
    }
}
