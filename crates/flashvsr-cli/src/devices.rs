//! Compute devices: parsing `--device`, picking the best one, and `flashvsr devices`.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use serde::Serialize;

/// What the user asked for with `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda(usize),
    Metal(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        let index = |rest: &str| -> std::result::Result<usize, String> {
            if rest.is_empty() {
                Ok(0)
            } else {
                rest.parse()
                    .map_err(|_| format!("bad device index in {s:?} (expected e.g. cuda:0)"))
            }
        };
        match s.as_str() {
            "auto" | "best" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            _ => {
                if let Some(rest) = s.strip_prefix("cuda") {
                    Ok(DeviceChoice::Cuda(index(rest.trim_start_matches(':'))?))
                } else if let Some(rest) = s.strip_prefix("metal") {
                    Ok(DeviceChoice::Metal(index(rest.trim_start_matches(':'))?))
                } else {
                    Err(format!(
                        "unknown device {s:?}: use cpu, cuda, cuda:N, metal or auto"
                    ))
                }
            }
        }
    }
}

/// The Candle device for a choice; `Auto` takes CUDA, then Metal, then the CPU.
pub fn open(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda(n) => {
            if !candle_core::utils::cuda_is_available() {
                bail!("this flashvsr was built without CUDA; rebuild with `cargo install --features cuda` or use --device cpu");
            }
            Device::new_cuda(n).with_context(|| {
                format!("cannot open CUDA device {n}; `flashvsr devices` lists usable ones")
            })
        }
        DeviceChoice::Metal(n) => {
            if !candle_core::utils::metal_is_available() {
                bail!("this flashvsr was built without Metal; rebuild with `cargo install --features metal` or use --device cpu");
            }
            Device::new_metal(n).with_context(|| {
                format!("cannot open Metal device {n}; `flashvsr devices` lists usable ones")
            })
        }
        DeviceChoice::Auto => {
            if candle_core::utils::cuda_is_available() {
                if let Ok(d) = Device::new_cuda(0) {
                    return Ok(d);
                }
            }
            if candle_core::utils::metal_is_available() {
                if let Ok(d) = Device::new_metal(0) {
                    return Ok(d);
                }
            }
            Ok(Device::Cpu)
        }
    }
}

pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".to_string(),
        Device::Cuda(_) => format!("cuda:{}", cuda_ordinal(device)),
        Device::Metal(_) => "metal".to_string(),
    }
}

fn cuda_ordinal(device: &Device) -> usize {
    match device.location() {
        candle_core::DeviceLocation::Cuda { gpu_id } => gpu_id,
        _ => 0,
    }
}

/// The default dtype for a device: f32 on the CPU (bf16 matmuls are widened there and bf16 conv
/// is missing), bf16 on GPUs (the dtype upstream runs in), f16 on GPUs without bf16 (pre-Ampere).
pub fn default_dtype(device: &Device) -> DType {
    flashvsr_model::gpu_caps::default_dtype(device)
}

#[derive(Debug, Serialize)]
pub struct DeviceEntry {
    pub name: String,
    pub kind: &'static str,
    pub usable: bool,
    pub note: String,
}

pub fn list() -> Vec<DeviceEntry> {
    let mut out = vec![DeviceEntry {
        name: "cpu".into(),
        kind: "cpu",
        usable: true,
        note: format!(
            "{} threads",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        ),
    }];
    if candle_core::utils::cuda_is_available() {
        let mut found = false;
        for i in 0..16 {
            match Device::new_cuda(i) {
                Ok(d) => {
                    found = true;
                    let note = match flashvsr_model::gpu_caps::compute_capability(&d) {
                        Ok(Some(cc)) => format!(
                            "compute capability {}.{}, default dtype {:?}",
                            cc / 10,
                            cc % 10,
                            default_dtype(&d)
                        )
                        .to_lowercase(),
                        _ => String::new(),
                    };
                    out.push(DeviceEntry {
                        name: format!("cuda:{i}"),
                        kind: "cuda",
                        usable: true,
                        note,
                    });
                }
                Err(e) => {
                    if !found {
                        out.push(DeviceEntry {
                            name: "cuda:0".into(),
                            kind: "cuda",
                            usable: false,
                            note: one_line(&e),
                        });
                    }
                    break;
                }
            }
        }
    } else {
        out.push(DeviceEntry {
            name: "cuda".into(),
            kind: "cuda",
            usable: false,
            note: "not compiled in (build with --features cuda)".into(),
        });
    }
    if candle_core::utils::metal_is_available() {
        match Device::new_metal(0) {
            Ok(_) => out.push(DeviceEntry {
                name: "metal".into(),
                kind: "metal",
                usable: true,
                note: String::new(),
            }),
            Err(e) => out.push(DeviceEntry {
                name: "metal".into(),
                kind: "metal",
                usable: false,
                note: one_line(&e),
            }),
        }
    } else {
        out.push(DeviceEntry {
            name: "metal".into(),
            kind: "metal",
            usable: false,
            note: "not compiled in (build with --features metal)".into(),
        });
    }
    out
}

fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

/// Device memory in use now, in bytes (CUDA only; `None` elsewhere).
pub fn device_memory_used(device: &Device) -> Option<u64> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(_) = device {
        use candle_core::cuda_backend::cudarc::driver::result::mem_get_info;
        if let Ok((free, total)) = mem_get_info() {
            return Some((total - free) as u64);
        }
    }
    let _ = device;
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_device() {
        assert_eq!("cpu".parse::<DeviceChoice>(), Ok(DeviceChoice::Cpu));
        assert_eq!("cuda".parse::<DeviceChoice>(), Ok(DeviceChoice::Cuda(0)));
        assert_eq!("cuda:3".parse::<DeviceChoice>(), Ok(DeviceChoice::Cuda(3)));
        assert_eq!("metal".parse::<DeviceChoice>(), Ok(DeviceChoice::Metal(0)));
        assert!("tpu".parse::<DeviceChoice>().is_err());
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
    }
}
