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

/// Where a mapped buffer's `map_async` callback reports: one per buffer,
/// made once, so that a step allocates nothing of its own.
pub struct MapSignal {
    answer: Arc<Mutex<Option<MapResult>>>,
}

impl MapSignal {
    pub fn new() -> Self {
        MapSignal { answer: Arc::new(Mutex::new(None)) }
    }

    /// Asks for `slice` to be mapped for reading; [`MapSignal::take`] tells
    /// how it went once the device has been waited past it.
    pub fn request(&self, slice: wgpu::BufferSlice) {
        self.request_mode(slice, wgpu::MapMode::Read)
    }

    /// [`MapSignal::request`] in `mode`.
    pub fn request_mode(&self, slice: wgpu::BufferSlice, mode: wgpu::MapMode) {
        *lock(&self.answer) = None;
        let answer = self.answer.clone();
        slice.map_async(mode, move |r| {
            *lock(&answer) = Some(r);
            #[cfg(target_arch = "wasm32")]
            super::browser::wake();
        });
    }

    /// Whether the mapping asked for has been answered.
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    fn answered(&self) -> bool {
        lock(&self.answer).is_some()
    }

    /// How the mapping asked for went, once answered (after a poll or a
    /// wait); `None` before.
    pub fn try_take(&self) -> Option<std::result::Result<(), String>> {
        lock(&self.answer).take().map(|r| r.map_err(|e| format!("mapping a buffer: {e}")))
    }

    pub fn take(&self) -> std::result::Result<(), String> {
        self.try_take().unwrap_or_else(|| Err("a readback did not complete".into()))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
        wait_for(&self.ctx, submission).map_err(|e| self.err(e))?;
        let waited = t.elapsed().as_secs_f64();
        self.check()?;
        Ok(waited)
    }

    /// Waits until `signal`'s mapping is answered: natively by waiting for
    /// `submission` (the one that last used the buffer); returns the
    /// seconds waited.
    pub fn wait_mapped(&self, signal: &MapSignal, submission: Option<wgpu::SubmissionIndex>) -> Result<f64> {
        #[cfg(not(target_arch = "wasm32"))]
        {
            let _ = signal;
            self.wait(submission)
        }
        #[cfg(target_arch = "wasm32")]
        {
            let _ = submission;
            let t = Instant::now();
            suspend_until(|| signal.answered()).map_err(|e| self.err(e))?;
            self.check()?;
            Ok(t.elapsed().as_secs_f64())
        }
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
        let waited = self.wait_mapped(signal, None)?;
        signal.take().map_err(|e| self.err(e))?;
        {
            let view = slice.get_mapped_range().map_err(|e| self.err(format!("reading a mapped buffer: {e}")))?;
            f(&view);
        }
        buf.unmap();
        Ok(waited)
    }
}

/// Waits for `submission` on `ctx` (everything submitted when `None`).
pub fn wait_for(ctx: &GpuContext, submission: Option<wgpu::SubmissionIndex>) -> std::result::Result<(), String> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        ctx.device
            .poll(wgpu::PollType::Wait { submission_index: submission, timeout: Some(POLL_TIMEOUT) })
            .map(|_| ())
            .map_err(|e| format!("waiting for the device: {e}"))
    }
    #[cfg(target_arch = "wasm32")]
    {
        // The browser has no wait for one submission: all of them.
        let _ = submission;
        let done = Arc::new(Mutex::new(false));
        let flag = done.clone();
        ctx.queue.on_submitted_work_done(move || {
            *lock(&flag) = true;
            super::browser::wake();
        });
        suspend_until(|| *lock(&done))
    }
}

/// Hands control to the browser until `done` (see [`super::browser`]).
#[cfg(target_arch = "wasm32")]
fn suspend_until(done: impl Fn() -> bool) -> std::result::Result<(), String> {
    let t = Instant::now();
    while !done() {
        if t.elapsed() > POLL_TIMEOUT {
            return Err(format!("waiting for the device: no answer in {} s", POLL_TIMEOUT.as_secs()));
        }
        super::browser::suspend();
    }
    Ok(())
}
