//! Records the wgpu version from Cargo.lock for the JSON report, and the git
//! commit the build was made from (where there is a checkout) for the
//! bench's record of where a figure came from.
fn main() {
    println!("cargo:rerun-if-changed=Cargo.lock");
    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    let mut version = "30 (unknown patch)".to_string();
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l.trim() == "name = \"wgpu\"" {
            if let Some(v) = lines.next().and_then(|v| v.trim().strip_prefix("version = ")) {
                version = v.trim_matches('"').to_string();
            }
            break;
        }
    }
    println!("cargo:rustc-env=ROWSTAGE_WGPU_VERSION={version}");
    if let Ok(out) = std::process::Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output()
        && out.status.success()
    {
        // The commit, not whether the tree was modified since: a build
        // script reruns only when what it watches changes.
        println!("cargo:rustc-env=ROWSTAGE_GIT_REVISION={}", String::from_utf8_lossy(&out.stdout).trim());
        println!("cargo:rerun-if-changed=.git/HEAD");
        println!("cargo:rerun-if-changed=.git/refs/heads");
    }
}
