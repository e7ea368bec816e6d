//! Compiles `kernels/*.cu` to PTX with nvcc when the `cuda` feature is on; does nothing
//! otherwise, so CPU-only builds need no CUDA toolchain.
//!
//! nvcc is found through `NVCC`, then `PATH`, then `CUDA_HOME`/`CUDA_PATH`/`CUDA_ROOT`
//! (`bin/nvcc`), then `/usr/local/cuda/bin/nvcc`. The target is `sm_$CUDA_COMPUTE_CAP`
//! (default 80; `90` for H100/H200). The driver JIT-compiles the PTX at first use.
//!
//! Every `kernels/*.cu` is compiled (no fixed list): worktrees that share one target dir may
//! run each other's build-script binary, which then still builds the files of the tree at hand.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CARGO_FEATURE_CUDA");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "CUDA_ROOT",
        "CUDA_COMPUTE_CAP",
        "PATH",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    if let Err(e) = build_ptx() {
        // A build script reports failure by exiting non-zero with a readable message.
        eprintln!("flashvsr-kernels: {e}");
        std::process::exit(1);
    }
}

fn build_ptx() -> Result<(), String> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| format!("OUT_DIR: {e}"))?);
    let nvcc = find_nvcc().ok_or(
        "nvcc not found (set NVCC, put it on PATH, or set CUDA_HOME); \
         build without the `cuda` feature for a CPU-only build",
    )?;
    let cap = compute_cap()?;
    // The runtime needs the PTX target to pick kernels and explain a GPU that cannot load them.
    println!(
        "cargo:rustc-env=FLASHVSR_PTX_ARCH={}",
        cap.trim_end_matches('a')
    );
    println!("cargo:rerun-if-changed=kernels");
    let mut kernels: Vec<String> = std::fs::read_dir("kernels")
        .map_err(|e| format!("reading kernels/: {e}"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".cu").map(str::to_owned)
        })
        .collect();
    kernels.sort();
    for name in &kernels {
        let src = format!("kernels/{name}.cu");
        println!("cargo:rerun-if-changed={src}");
        let ptx = out_dir.join(format!("{name}.ptx"));
        // `*_sm90a.cu` use Hopper-only instructions (wgmma): PTX for sm_90a, which loads on
        // compute capability 9.0 only, built when the target is 9.0; otherwise an empty module
        // that the runtime never loads.
        let arch = if name.ends_with("_sm90a") {
            if cap.trim_end_matches('a') != "90" {
                std::fs::write(&ptx, "").map_err(|e| format!("writing {}: {e}", ptx.display()))?;
                continue;
            }
            "sm_90a".to_string()
        } else {
            format!("sm_{cap}")
        };
        let output = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17", "--expt-relaxed-constexpr"])
            .arg(format!("-arch={arch}"))
            .arg(&src)
            .arg("-o")
            .arg(&ptx)
            .output()
            .map_err(|e| format!("running {}: {e}", nvcc.display()))?;
        if !output.status.success() {
            return Err(format!(
                "nvcc failed on {src}:\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
    Ok(())
}

fn compute_cap() -> Result<String, String> {
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".to_string());
    let cap = cap.trim().trim_start_matches("sm_").to_string();
    let digits = cap.trim_end_matches('a');
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "CUDA_COMPUTE_CAP={cap:?} is not a compute capability like 80 or 90"
        ));
    }
    Ok(cap)
}

fn find_nvcc() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NVCC") {
        return Some(PathBuf::from(p));
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let cand = dir.join("nvcc");
            if cand.is_file() {
                return Some(cand);
            }
        }
    }
    for var in ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"] {
        if let Some(root) = std::env::var_os(var) {
            let cand = Path::new(&root).join("bin").join("nvcc");
            if cand.is_file() {
                return Some(cand);
            }
        }
    }
    let fallback = Path::new("/usr/local/cuda/bin/nvcc");
    fallback.is_file().then(|| fallback.to_path_buf())
}
