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

/// A backend that trains only the first `after` ratings (rounded up to
/// whole parts) of its `at_call`-th epoch pass and reports that it stopped
/// there, as a raised stop flag would: an interruption at a chosen part
/// boundary. `stopped_at` records the ratings of that pass it let through.
pub struct StopAfter<B> {
    pub inner: B,
    pub at_call: usize,
    pub after: usize,
    pub calls: usize,
    pub stopped_at: Option<usize>,
}

impl<B> StopAfter<B> {
    pub fn new(inner: B, at_call: usize, after: usize) -> Self {
        StopAfter { inner, at_call, after, calls: 0, stopped_at: None }
    }
}

impl<B: rowstage::engine::Backend> rowstage::engine::Backend for StopAfter<B> {
    fn kind(&self) -> String {
        self.inner.kind()
    }
    fn adapter(&self) -> String {
        self.inner.adapter()
    }
    fn train_epoch(
        &mut self,
        model: &mut rowstage::model::Model,
        input: &rowstage::engine::EpochInput,
    ) -> rowstage::Result<rowstage::engine::EpochTrain> {
        self.calls += 1;
        if self.calls != self.at_call {
            return self.inner.train_epoch(model, input);
        }
        // The plan cut after the part that reaches `after` ratings, its
        // groups with it.
        let plan = input.plan;
        let (mut end, mut n) = (input.from, 0);
        while end < plan.parts.len() && n < self.after {
            n += input.layout.parts()[plan.parts[end] as usize].len as usize;
            end += 1;
        }
        let mut groups: Vec<_> = plan.groups.iter().copied().filter(|g| (g.end as usize) < end).collect();
        if let Some(g) = plan.groups.iter().find(|g| g.end as usize >= end) {
            groups.push(rowstage::engine::Group { end: end as u32, id: g.id });
        }
        let cut = rowstage::engine::EpochPlan { parts: plan.parts[..end].to_vec(), groups };
        self.stopped_at = Some(n);
        self.inner.train_epoch(model, &rowstage::engine::EpochInput { plan: &cut, following: None, ..*input })
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
    fn prediction(&self) -> Option<rowstage::engine::Prediction> {
        self.inner.prediction()
    }
    fn run_layout(&self) -> Option<std::sync::Arc<rowstage::engine::RunLayout>> {
        self.inner.run_layout()
    }
}

/// Waits until `path` exists (a checkpoint a child run writes), failing the
/// test after `seconds`.
#[allow(dead_code)]
pub fn wait_for(path: &std::path::Path, seconds: u64) {
    let t0 = std::time::Instant::now();
    while !path.exists() {
        assert!(t0.elapsed().as_secs() < seconds, "{} did not appear within {seconds} s", path.display());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
