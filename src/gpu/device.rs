//! The device as the engine uses it: the context, errors wgpu reports
//! asynchronously turned into returned ones, bounded waits, and the count of
//! every byte handed to wgpu (what the ledger must add up to).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use web_time::Instant;

use super::GpuContext;
use crate::error::{Error, Result};

/// How long one wait on the device may take before it is an error.
pub const POLL_TIMEOUT: Duration = Duration::from_secs(300);

/// Bytes actually handed to wgpu, counted at the call sites.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wire {
    pub h2d: u64,
    pub d2h: u64,
}

/// A device with its error capture.
pub struct Device {
    pub ctx: GpuContext,
    error: Arc<Mutex<Option<String>>>,
}

type MapResult = std::result::Result<(), wgpu::BufferAsyncError>;

/// Where a mapped buffer's `map_async` callback reports: one channel per
/// buffer, made once, so that a step allocates no channel of its own.
pub struct MapSignal {
    tx: std::sync::mpsc::Sender<MapResult>,
    rx: std::sync::mpsc::Receiver<MapResult>,
}

impl MapSignal {
    pub fn new() -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        MapSignal { tx, rx }
    }

    /// Asks for `slice` to be mapped for reading; [`MapSignal::take`] tells
    /// how it went once the device has been polled past it.
    pub fn request(&self, slice: wgpu::BufferSlice) {
        self.request_mode(slice, wgpu::MapMode::Read)
    }

    /// [`MapSignal::request`] in `mode`.
    pub fn request_mode(&self, slice: wgpu::BufferSlice, mode: wgpu::MapMode) {
        let tx = self.tx.clone();
        slice.map_async(mode, move |r| {
            let _ = tx.send(r);
        });
    }

    /// Whether the mapping asked for has completed (after a poll), and how.
    pub fn try_take(&self) -> Option<std::result::Result<(), String>> {
        match self.rx.try_recv() {
            Ok(Ok(())) => Some(Ok(())),
            Ok(Err(e)) => Some(Err(format!("mapping a buffer: {e}"))),
            Err(_) => None,
        }
    }

    pub fn take(&self) -> std::result::Result<(), String> {
        match self.rx.try_recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("mapping a readback buffer: {e}")),
            Err(_) => Err("a readback did not complete".into()),
        }
    }
}

impl Default for MapSignal {
    fn default() -> Self {
        Self::new()
    }
}

impl Device {
    pub fn new(ctx: GpuContext) -> Self {
        let error = Arc::new(Mutex::new(None));
        {
            let error = error.clone();
            ctx.device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                let mut slot = error.lock().unwrap_or_else(|p| p.into_inner());
                if slot.is_none() {
                    *slot = Some(e.to_string());
                }
            }));
        }
        Device { ctx, error }
    }

    pub fn device(&self) -> &wgpu::Device {
        &self.ctx.device
    }

    pub fn queue(&self) -> &wgpu::Queue {
        &self.ctx.queue
    }

    pub fn err(&self, reason: impl Into<String>) -> Error {
        Error::Gpu { adapter: self.ctx.summary.name.clone(), reason: reason.into() }
    }

    /// Turns an error wgpu reported asynchronously into a returned error.
    pub fn check(&self) -> Result<()> {
        let msg = self.error.lock().unwrap_or_else(|p| p.into_inner()).take();
        match msg {
            Some(m) => Err(self.err(m)),
            None => Ok(()),
        }
    }

    /// Submits `enc`; returns the submission and the seconds the call took.
    /// Those count as waiting for the device: a driver may run earlier work
    /// before it returns (lavapipe does), and on other drivers it is short.
    pub fn submit(&self, enc: wgpu::CommandEncoder) -> (wgpu::SubmissionIndex, f64) {
        let t = Instant::now();
        let submission = self.ctx.queue.submit([enc.finish()]);
        (submission, t.elapsed().as_secs_f64())
    }

    pub fn encoder(&self, label: &str) -> wgpu::CommandEncoder {
        self.ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) })
    }

    /// Waits for `submission` (everything submitted when `None`); returns
    /// the seconds waited.
    pub fn wait(&self, submission: Option<wgpu::SubmissionIndex>) -> Result<f64> {
        let t = Instant::now();
        self.ctx
            .device
            .poll(wgpu::PollType::Wait { submission_index: submission, timeout: Some(POLL_TIMEOUT) })
            .map_err(|e| self.err(format!("waiting for the device: {e}")))?;
        let waited = t.elapsed().as_secs_f64();
        self.check()?;
        Ok(waited)
    }

    /// Creates a buffer of at least `size` bytes (rounded up to a multiple of
    /// 4, at least 16).
    pub fn buffer(&self, label: &str, size: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
        self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: size.max(16).next_multiple_of(4),
            usage,
            mapped_at_creation: false,
        })
    }

    /// Writes `bytes` at `offset` of `buf`, counting them on `wire`; returns
    /// the count for the caller's ledger.
    pub fn put(&self, wire: &mut Wire, buf: &wgpu::Buffer, offset: u64, bytes: &[u8]) -> u64 {
        if !bytes.is_empty() {
            self.ctx.queue.write_buffer(buf, offset, bytes);
            wire.h2d += bytes.len() as u64;
        }
        bytes.len() as u64
    }

    /// Maps `size` bytes of `buf` (after everything submitted), hands them to
    /// `f`, unmaps; returns the seconds waited.
    pub fn read(&self, signal: &MapSignal, buf: &wgpu::Buffer, size: u64, f: impl FnOnce(&[u8])) -> Result<f64> {
        let slice = buf.slice(..size);
        signal.request(slice);
        let waited = self.wait(None)?;
        signal.take().map_err(|e| self.err(e))?;
        {
            let view = slice.get_mapped_range().map_err(|e| self.err(format!("reading a mapped buffer: {e}")))?;
            f(&view);
        }
        buf.unmap();
        Ok(waited)
    }
}
