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
