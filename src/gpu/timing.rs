//! Device time from timestamp queries: every compute pass writes a timestamp
//! at its start and its end, the pairs are resolved in chunks into mapped
//! buffers, and an epoch's device time is the sum of its passes' spans,
//! read once at its end. Where the adapter has no timestamp queries (or on
//! the noop backend, which runs nothing) there is no device time.

use super::device::{Device, MapSignal, Wire};
use crate::error::Result;
use crate::stage::Ledger;

/// Passes per resolved chunk (two queries each).
const CHUNK: u32 = 512;

/// The timestamps of one epoch's passes.
pub struct Timer {
    set: Option<wgpu::QuerySet>,
    /// Nanoseconds per tick.
    period: f64,
    /// Queries written since the last resolve.
    used: u32,
    resolve: Option<wgpu::Buffer>,
    /// Resolved chunks waiting to be read, with their query counts.
    pending: Vec<(wgpu::Buffer, u32)>,
    free: Vec<wgpu::Buffer>,
    signal: MapSignal,
}

impl Timer {
    /// A timer on `dev` when `enabled` and the adapter has timestamps.
    pub fn new(dev: &Device, enabled: bool) -> Self {
        let on = enabled && dev.ctx.device.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        let set = on.then(|| {
            dev.ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("pass timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: 2 * CHUNK,
            })
        });
        let resolve = on.then(|| {
            use wgpu::BufferUsages as U;
            dev.buffer("timestamp resolve", 16 * CHUNK as u64, U::QUERY_RESOLVE | U::COPY_SRC)
        });
        Timer {
            set,
            period: dev.ctx.queue.get_timestamp_period() as f64,
            used: 0,
            resolve,
            pending: Vec::new(),
            free: Vec::new(),
            signal: MapSignal::new(),
        }
    }

    /// Whether passes are timed.
    pub fn enabled(&self) -> bool {
        self.set.is_some()
    }

    /// The timestamp writes of the next pass.
    pub fn writes(&self) -> Option<wgpu::ComputePassTimestampWrites<'_>> {
        self.set.as_ref().map(|set| wgpu::ComputePassTimestampWrites {
            query_set: set,
            beginning_of_pass_write_index: Some(self.used),
            end_of_pass_write_index: Some(self.used + 1),
        })
    }

    /// After a pass encoded with [`Timer::writes`] in `enc`: when the chunk
    /// is full, resolves it (in `enc`) into a buffer read at the epoch's end.
    pub fn after_pass(&mut self, dev: &Device, enc: &mut wgpu::CommandEncoder) {
        if self.set.is_none() {
            return;
        }
        self.used += 2;
        if self.used == 2 * CHUNK {
            self.flush(dev, enc);
        }
    }

    fn flush(&mut self, dev: &Device, enc: &mut wgpu::CommandEncoder) {
        let (Some(set), Some(resolve)) = (&self.set, &self.resolve) else { return };
        if self.used == 0 {
            return;
        }
        use wgpu::BufferUsages as U;
        let out = self
            .free
            .pop()
            .unwrap_or_else(|| dev.buffer("timestamp readback", 16 * CHUNK as u64, U::MAP_READ | U::COPY_DST));
        enc.resolve_query_set(set, 0..self.used, resolve, 0);
        enc.copy_buffer_to_buffer(resolve, 0, &out, 0, self.used as u64 * 8);
        self.pending.push((out, self.used));
        self.used = 0;
    }

    /// The device seconds of the passes since the last call (`None` without
    /// timestamps), reading them back (counted as data device→host).
    /// Returns them and the seconds waited.
    pub fn take_seconds(&mut self, dev: &Device, wire: &mut Wire, ledger: &mut Ledger) -> Result<(Option<f64>, f64)> {
        if self.set.is_none() {
            return Ok((None, 0.0));
        }
        let mut enc = dev.encoder("resolve timestamps");
        self.flush(dev, &mut enc);
        let (mut ticks, mut waited) = (0u64, dev.submit(enc).1);
        for (buf, n) in std::mem::take(&mut self.pending) {
            let bytes = n as u64 * 8;
            wire.d2h += bytes;
            ledger.data_bytes_d2h += bytes;
            waited += dev.read(&self.signal, &buf, bytes, |b| {
                for pair in bytemuck::cast_slice::<u8, u64>(b).chunks_exact(2) {
                    ticks += pair[1].saturating_sub(pair[0]);
                }
            })?;
            self.free.push(buf);
        }
        Ok((Some(ticks as f64 * self.period * 1e-9), waited))
    }
}
