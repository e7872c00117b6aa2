//! The GPU engine (docs/ARCHITECTURE.md, "The GPU engine"): one slab of
//! exactly `--device-memory` bytes holding row slots, the training ratings
//! and a slot map on the device, and the kernels that train, stage and
//! evaluate through them. The host decides which rows move and moves them;
//! it never touches a rating in the steady state.
//!
//! A room per concern:
//!
//! * [`context`]: adapters and the device, opened once.
//! * [`device`]: error capture, bounded waits, the byte count handed to wgpu.
//! * [`kernels`]: the WGSL sources, their shared constants and layouts.
//! * [`resources`]: buffers and bind groups, made once per backend.
//! * [`launch`]: a step's inputs in one write, and one launcher per kernel
//!   family.
//! * [`layout`]: the slab's plan (budget, areas, windows).
//! * [`prepare`]: what is computed once per run (waves, conflicts).
//! * [`readback`]: write-backs in flight.
//! * [`tables`]: the host tables as the engine's two threads share them.
//! * [`timing`]: device time from timestamp queries.
//! * [`driver`]: the backend, stepping the scheduler's walk on the device.
//! * [`calibrate`]: the adapter's rates for the planner.
//! * `browser` (wasm only): waits that hand control to the browser.
//! * [`probe`]: one kernel at a time, for the kernel tests.

/// The wgpu version rowstage was built with.
pub const WGPU_VERSION: &str = env!("ROWSTAGE_WGPU_VERSION");

#[cfg(target_arch = "wasm32")]
pub mod browser;
pub mod calibrate;
pub mod context;
pub mod device;
pub mod driver;
pub mod kernels;
pub mod launch;
pub mod layout;
pub mod prepare;
pub mod probe;
pub mod readback;
pub mod resources;
pub mod tables;
pub mod timing;

use std::sync::Arc;

pub use context::{AdapterSummary, BackendChoice, GpuContext, list_adapters};
#[cfg(target_arch = "wasm32")]
pub use context::{browser_adapter, open_browser_device};
pub use device::Wire;
pub use driver::GpuBackend;
pub use layout::{GpuLayout, check_budget};

use crate::engine::RunLayout;
use crate::stage::PolicyKind;

/// What the GPU backend needs to know at creation.
pub struct GpuSetup {
    pub rank: usize,
    /// Models side by side in every slot (a grid search; 1 otherwise): the
    /// slab's rows are `copies` times as wide.
    pub copies: usize,
    pub bias_reg: f32,
    pub deterministic: bool,
    pub slab_bytes: u64,
    pub policy: PolicyKind,
    /// `lookahead`'s horizon in steps.
    pub lookahead: usize,
    pub mean: f32,
    pub range: (f32, f32),
    /// The run's layout: held on the device (its ratings) and trained.
    pub layout: Arc<RunLayout>,
    /// Deterministic mode: run the tail of small waves in one workgroup
    /// (`sgd_tail`) rather than one dispatch per wave. `None`: on for
    /// hardware GPUs, where it made deterministic epochs 1.6× faster on an
    /// H100, and off for software adapters
    /// ([`AdapterSummary::is_software`]), which run a workgroup on one
    /// thread: there it was 2.5× slower.
    pub wave_tail: Option<bool>,
    /// Hogwild: how many ratings of a part update at once.
    pub hogwild_width: HogwildWidth,
    /// The blocked order: walk a part with a workgroup of lanes sharing the
    /// rank (`sgd_blocked_lanes`) rather than one invocation. `None`: lanes
    /// on hardware GPUs, one invocation on software adapters (which run a
    /// workgroup's lanes one after another, and pay for its barriers).
    pub blocked_lanes: Option<bool>,
    /// Host threads for the per-run preparation.
    pub threads: usize,
    /// The most bytes of training ratings the device holds at once (`None`:
    /// what one storage binding takes); past it they are streamed a part at
    /// a time. Tests set it to exercise streaming.
    pub data_window: Option<u64>,
}

/// How many ratings of a Hogwild step update at once, and so may race: `W`
/// invocations each run every `W`-th rating of the step in order, as
/// cuMF_SGD's batch-Hogwild! does (docs/ARCHITECTURE.md, "Schedules").
///
/// A GPU that runs a whole batch at once loses nearly every update of a row
/// that many of the batch's ratings share: on an H100, skewed synthetic data
/// (the hottest user and item in 11–14% of the ratings) trained to test RMSE
/// 0.8355 against deterministic training's 0.7640. Replaying the races on
/// the CPU (every read of a round before its writes, the last write of a row
/// kept) put W = 64 within 0.002 of sequential SGD on that data and on 1M
/// ratings at batch 8192, and the whole batch 0.06–0.08 behind. On the H100,
/// 64 at once then ended within 0.004 of deterministic training, as fast as
/// the whole batch at batch 2048 and at 0.63× of it at batch 8192
/// (BENCHMARKS.md, "Hogwild at a bounded width").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HogwildWidth {
    /// [`HARDWARE_HOGWILD_WIDTH`] on a hardware GPU; the whole step on a
    /// software adapter, which runs a few invocations at a time anyway (and
    /// one workgroup on one thread, so a narrow step would idle its cores).
    #[default]
    Auto,
    /// Every rating of a step at once.
    Step,
    /// At most this many (at least 1; 1 runs a step in order).
    Ratings(u32),
}

/// [`HogwildWidth::Auto`]'s width on a hardware GPU.
pub const HARDWARE_HOGWILD_WIDTH: u32 = 64;

impl HogwildWidth {
    /// `auto`, `step` or a whole number of ratings (at least 1).
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "auto" => Ok(HogwildWidth::Auto),
            "step" | "batch" => Ok(HogwildWidth::Step),
            t => match t.parse::<u32>() {
                Ok(0) => Err("the width must be at least 1".into()),
                Ok(n) => Ok(HogwildWidth::Ratings(n)),
                Err(_) => Err("expected auto, step or a whole number of ratings, e.g. 64".into()),
            },
        }
    }

    /// As asked for: `auto`, `step` or the number.
    pub fn name(self) -> String {
        match self {
            HogwildWidth::Auto => "auto".into(),
            HogwildWidth::Step => "step".into(),
            HogwildWidth::Ratings(n) => n.to_string(),
        }
    }

    /// The width on `adapter`: `None` runs every rating of a step at once.
    pub fn resolve(self, adapter: &AdapterSummary) -> Option<u32> {
        match self {
            HogwildWidth::Auto => (!adapter.is_software()).then_some(HARDWARE_HOGWILD_WIDTH),
            HogwildWidth::Step => None,
            HogwildWidth::Ratings(n) => Some(n.max(1)),
        }
    }
}
