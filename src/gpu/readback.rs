//! Write-backs in flight: rows gathered into the download window are copied
//! to one of [`RING`] mapped buffers, and reach the host tables later (when
//! the buffer is needed again, when a step stages one of those rows, or at
//! the end of the epoch), so that later steps run while the host reads a
//! step's rows back.

use std::collections::VecDeque;

use super::device::{Device, MapSignal};
use super::tables::HostTables;
use crate::error::Result;

/// Write-backs that may be in flight at once.
pub const RING: usize = 3;

struct Pending {
    buffer: usize,
    bytes: u64,
    rows: Vec<u32>,
    serial: u32,
    submission: wgpu::SubmissionIndex,
}

/// The ring of readback buffers and the write-backs in flight.
pub struct Readback {
    buffers: Vec<wgpu::Buffer>,
    signals: Vec<MapSignal>,
    pending: VecDeque<Pending>,
    next: usize,
    /// Per global row: the serial of the pending write-back holding it (0:
    /// none).
    mark: Vec<u32>,
    serial: u32,
    /// Row lists of completed write-backs, reused by later ones.
    free_rows: Vec<Vec<u32>>,
}

impl Readback {
    /// A ring of buffers of `bytes` each for `n_rows` global rows; with
    /// `zero_copy` the gathers write into them themselves.
    pub fn new(dev: &Device, bytes: u64, n_rows: usize, zero_copy: bool) -> Self {
        use wgpu::BufferUsages as U;
        let usage = if zero_copy { U::MAP_READ | U::STORAGE } else { U::MAP_READ | U::COPY_DST };
        Readback {
            buffers: (0..RING).map(|k| dev.buffer(&format!("row readback {k}"), bytes, usage)).collect(),
            signals: (0..RING).map(|_| MapSignal::new()).collect(),
            pending: VecDeque::with_capacity(RING),
            next: 0,
            mark: vec![0; n_rows],
            serial: 0,
            free_rows: Vec::new(),
        }
    }

    /// The buffer the next write-back goes to (its index), completing the
    /// oldest when all are in flight. Returns it and the seconds waited.
    pub fn reserve(&mut self, dev: &Device, tables: &mut HostTables) -> Result<(usize, f64)> {
        let waited = if self.pending.len() == RING { self.complete_oldest(dev, tables)? } else { 0.0 };
        Ok((self.next, waited))
    }

    pub fn buffers(&self) -> &[wgpu::Buffer] {
        &self.buffers
    }

    /// Records the write-back just submitted into the reserved buffer: `rows`
    /// in the order of the copied bytes.
    pub fn push(&mut self, bytes: u64, rows: impl Iterator<Item = u32>, submission: wgpu::SubmissionIndex) {
        self.serial = self.serial.wrapping_add(1).max(1);
        let mut list = self.free_rows.pop().unwrap_or_default();
        list.clear();
        list.extend(rows);
        for &r in &list {
            self.mark[r as usize] = self.serial;
        }
        let buffer = self.next;
        self.signals[buffer].request(self.buffers[buffer].slice(..bytes));
        self.pending.push_back(Pending { buffer, bytes, rows: list, serial: self.serial, submission });
        self.next = (self.next + 1) % RING;
    }

    /// Completes the write-backs up to the newest one holding any of `rows`
    /// (rows about to be staged in again must reach the host first).
    /// Returns the seconds waited.
    pub fn complete_holding(
        &mut self,
        dev: &Device,
        tables: &mut HostTables,
        rows: impl Iterator<Item = u32>,
    ) -> Result<f64> {
        if self.pending.is_empty() {
            return Ok(0.0);
        }
        let newest = rows.map(|r| self.mark[r as usize]).max().unwrap_or(0);
        let mut waited = 0.0;
        while newest != 0 && self.pending.front().is_some_and(|p| serial_le(p.serial, newest)) {
            waited += self.complete_oldest(dev, tables)?;
        }
        Ok(waited)
    }

    /// Whether no write-back is in flight.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty()
    }

    /// Completes every write-back in flight.
    pub fn complete_all(&mut self, dev: &Device, tables: &mut HostTables) -> Result<f64> {
        let mut waited = 0.0;
        while !self.pending.is_empty() {
            waited += self.complete_oldest(dev, tables)?;
        }
        Ok(waited)
    }

    /// Waits for the oldest write-back in flight and writes its rows to the
    /// host tables.
    fn complete_oldest(&mut self, dev: &Device, tables: &mut HostTables) -> Result<f64> {
        let Some(p) = self.pending.pop_front() else {
            return Ok(0.0);
        };
        let waited = dev.wait_mapped(&self.signals[p.buffer], Some(p.submission))?;
        self.signals[p.buffer].take().map_err(|e| dev.err(e))?;
        let buf = &self.buffers[p.buffer];
        {
            let view = buf
                .slice(..p.bytes)
                .get_mapped_range()
                .map_err(|e| dev.err(format!("reading a mapped buffer: {e}")))?;
            let src: &[f32] = bytemuck::cast_slice(&view);
            for (j, (&row, src)) in p.rows.iter().zip(src.chunks_exact(tables.stride())).enumerate() {
                // The rows land all over the tables: ask for one a few
                // copies ahead.
                if let Some(&ahead) = p.rows.get(j + super::launch::ROW_AHEAD) {
                    tables.prefetch(ahead);
                }
                let Some(dst) = tables.row_mut(row) else {
                    return Err(dev.err("a write-back landed on tables lent read-only"));
                };
                dst.copy_from_slice(src);
                if self.mark[row as usize] == p.serial {
                    self.mark[row as usize] = 0;
                }
            }
        }
        buf.unmap();
        self.free_rows.push(p.rows);
        Ok(waited)
    }
}

/// `a` was issued no later than `b` (serials wrap, skipping 0).
fn serial_le(a: u32, b: u32) -> bool {
    b.wrapping_sub(a) < u32::MAX / 2
}
