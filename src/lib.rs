//! # rowstage
//!
//! Biased matrix factorization trained with WGSL compute shaders through a
//! fixed device-memory budget. The full embedding tables stay in host memory;
//! the GPU holds one buffer of row slots (the *slab*), standing in for an
//! accelerator's small on-chip memory, and a host scheduler stages into it the
//! rows the coming batches need. Every byte that crosses host↔device is counted
//! in a [`stage::Ledger`].
//!
//! Layout, one folder per concern (docs/ARCHITECTURE.md, "Layers"):
//!
//! * [`data`]: loaders, the synthetic generator, splits, id maps.
//! * [`model`]: the model, the reference SGD step, metrics, safetensors I/O.
//! * [`stage`]: slot map, staging policies, ledger, budgets.
//! * [`engine`]: the contract below training and backends: the run's layout
//!   and epoch plans, the backend trait, the per-run listings, the staging
//!   walk and its simulator.
//! * [`gpu`]: the GPU engine: device, kernels, resources, step driver.
//! * [`train`]: the epoch loop, the CPU backends, opening a backend.
//! * [`report`]: the JSON report and the text lines.
//! * [`session`]: the library's entry: a [`session::Run`] from a serialisable
//!   request, stepped, cancelled, returning its report and model; and the
//!   plan of a run before it trains. Every front end drives this.
//! * [`bench`]: `rowstage bench`'s sweep, its exports and its charts (a
//!   folder of its own rather than part of `report`: it drives training runs,
//!   which a report only describes).
//!
//! ```no_run
//! use rowstage::data::{Dataset, SyntheticSpec, generate};
//! use rowstage::model::HyperParams;
//! use rowstage::train::{Order, RunControl, TrainSettings, cpu::HogwildCpu, train};
//!
//! let spec = SyntheticSpec::DEFAULT;
//! let data = Dataset::split(&spec.name(), generate(&spec, 42), 0.1, 42);
//! let hp = HyperParams::default();
//! let settings = TrainSettings {
//!     hp, epochs: 10, batch: 4096, seed: 42, deterministic: false,
//!     co_partition: None, order: Order::Auto, grid: vec![],
//! };
//! let mut backend = HogwildCpu::new(hp.bias_reg, 2);
//! let out = train(&data, &settings, &mut backend, RunControl::default(), &mut |e| println!("epoch {} test RMSE {:.4}", e.epoch, e.test_rmse)).unwrap();
//! println!("final test RMSE {:.4}", out.final_metrics.rmse);
//! ```

pub mod bench;
pub mod data;
#[cfg(feature = "mpi")]
pub mod distributed;
pub mod engine;
pub mod error;
pub mod gpu;
pub mod model;
pub mod named;
mod parallel;
mod prefetch;
pub mod report;
pub mod session;
pub mod stage;
pub mod train;
pub mod units;

pub use error::{Error, Result};
pub use named::Named;

/// This library's version (what reports and bench exports record).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
