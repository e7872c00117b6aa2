//! Helpers shared by the integration tests.
#![allow(dead_code)]

use rowstage::gpu::{BackendChoice, GpuContext};

/// The backends GPU tests run on: `ROWSTAGE_TEST_BACKENDS` (comma-separated,
/// e.g. `vulkan,gl`), or every backend that has an adapter here.
pub fn test_backends() -> Vec<BackendChoice> {
    match std::env::var("ROWSTAGE_TEST_BACKENDS") {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .map(|s| match s.trim() {
                "vulkan" => BackendChoice::Vulkan,
                "gl" => BackendChoice::Gl,
                "metal" => BackendChoice::Metal,
                "dx12" => BackendChoice::Dx12,
                other => panic!("ROWSTAGE_TEST_BACKENDS: unknown backend {other:?}"),
            })
            .collect(),
        _ => {
            let mut found: Vec<BackendChoice> = Vec::new();
            for a in rowstage::gpu::list_adapters(BackendChoice::Auto) {
                let b = match a.backend.as_str() {
                    "vulkan" => BackendChoice::Vulkan,
                    "gl" => BackendChoice::Gl,
                    "metal" => BackendChoice::Metal,
                    "dx12" => BackendChoice::Dx12,
                    _ => continue,
                };
                if !found.contains(&b) {
                    found.push(b);
                }
            }
            if found.is_empty() {
                found.push(BackendChoice::Auto);
            }
            found
        }
    }
}

/// Whether a missing adapter must fail the test (`ROWSTAGE_REQUIRE_GPU=1`).
pub fn gpu_required() -> bool {
    std::env::var("ROWSTAGE_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

/// Opens an adapter of `backend`, printing which; `None` (after saying the
/// test is skipped and why) when there is none and a GPU is not required.
pub fn gpu(backend: BackendChoice, test: &str) -> Option<GpuContext> {
    match GpuContext::new(backend, None) {
        Ok(ctx) => {
            eprintln!("{test}: running on adapter {}", ctx.describe());
            Some(ctx)
        }
        Err(e) if !gpu_required() => {
            eprintln!(
                "{test}: SKIPPED on {backend:?}: no GPU adapter ({e}); set ROWSTAGE_REQUIRE_GPU=1 to fail instead"
            );
            None
        }
        Err(e) => panic!("{test}: ROWSTAGE_REQUIRE_GPU=1 but no adapter for {backend:?}: {e}"),
    }
}

/// A backend that trains only the first `after` ratings of its `at_call`-th
/// epoch pass and reports that it stopped there, as a raised stop flag would:
/// an interruption at a chosen batch boundary.
pub struct StopAfter<B> {
    pub inner: B,
    pub at_call: usize,
    pub after: usize,
    pub calls: usize,
}

impl<B> StopAfter<B> {
    pub fn new(inner: B, at_call: usize, after: usize) -> Self {
        StopAfter { inner, at_call, after, calls: 0 }
    }
}

impl<B: rowstage::train::Backend> rowstage::train::Backend for StopAfter<B> {
    fn kind(&self) -> String {
        self.inner.kind()
    }
    fn adapter(&self) -> String {
        self.inner.adapter()
    }
    #[allow(clippy::too_many_arguments)]
    fn train_epoch(
        &mut self,
        model: &mut rowstage::model::Model,
        train: &[rowstage::data::Rating],
        order: &[u32],
        spans: &[u32],
        blocked: Option<&rowstage::train::blocked::BlockedRatings>,
        following: &[u32],
        rates: &[rowstage::model::Rate],
        stop: &std::sync::atomic::AtomicBool,
    ) -> rowstage::Result<rowstage::train::EpochTrain> {
        self.calls += 1;
        if self.calls != self.at_call {
            return self.inner.train_epoch(model, train, order, spans, blocked, following, rates, stop);
        }
        // The order cut after `after` ratings, its spans with it.
        let order = &order[..self.after.min(order.len())];
        let mut spans: Vec<u32> = spans.iter().copied().filter(|&e| (e as usize) < order.len()).collect();
        spans.push(order.len() as u32);
        self.inner.train_epoch(model, train, order, &spans, blocked, following, rates, stop)
    }
    fn parallelism(&self) -> usize {
        self.inner.parallelism()
    }
    fn evaluate(
        &mut self,
        model: &rowstage::model::Model,
        test: &[rowstage::data::Rating],
    ) -> rowstage::Result<(Vec<rowstage::model::Metrics>, rowstage::stage::Ledger)> {
        self.inner.evaluate(model, test)
    }
    fn finish(&mut self, model: &mut rowstage::model::Model) -> rowstage::Result<rowstage::stage::Ledger> {
        self.inner.finish(model)
    }
    fn prediction(&self) -> Option<rowstage::train::Prediction> {
        self.inner.prediction()
    }
}
