//! `rowstage devices`: the adapters wgpu finds and their limits.

use std::path::PathBuf;

use clap::Args;

use crate::output::{check_paths, write_output};
use rowstage::error::Result;
use rowstage::gpu::{BackendChoice, list_adapters};
use rowstage::stage::human_bytes;

#[derive(Args)]
pub(crate) struct DevicesArgs {
    /// Write the adapters as JSON to FILE ("-" for stdout) instead of the list.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

pub(crate) fn cmd_devices(a: DevicesArgs) -> Result<()> {
    check_paths(&[("--json", a.json.as_deref())], &[], &[])?;
    let adapters = list_adapters(BackendChoice::Auto);
    if let Some(p) = &a.json {
        return write_output(p, &serde_json::to_string_pretty(&adapters).expect("json"));
    }
    if adapters.is_empty() {
        say!(
            "no GPU adapter found; `rowstage train` will use the CPU backend (install GPU drivers, or Mesa's software drivers: apt-get install mesa-vulkan-drivers)"
        );
        return Ok(());
    }
    for (k, d) in adapters.iter().enumerate() {
        say!("[{k}] {} — {} / {}", d.name, d.backend, d.device_type);
        say!("    driver: {} {}", d.driver, d.driver_info);
        if !d.compute_shaders {
            say!(
                "    no compute shaders (OpenGL before 4.3 or GLES before 3.1): rowstage cannot train on this adapter"
            );
        }
        say!(
            "    max storage binding {}  max buffer {}  (largest --device-memory: {})",
            human_bytes(d.max_storage_buffer_binding_size),
            human_bytes(d.max_buffer_size),
            human_bytes(d.max_slab_bytes())
        );
        say!(
            "    workgroups per dimension {}  invocations per workgroup {}  workgroup size x {}  storage buffers per stage {}",
            d.max_compute_workgroups_per_dimension,
            d.max_compute_invocations_per_workgroup,
            d.max_compute_workgroup_size_x,
            d.max_storage_buffers_per_shader_stage
        );
    }
    Ok(())
}
