//! Where the weights are: `--weights`, `$FLASHVSR_MODELS`, the Hugging Face cache, a ComfyUI
//! `models/` folder. Folders are recognised by file names (upstream's, then the common repacks);
//! files with other names are classified later by their tensor names (`components`).

use std::path::{Path, PathBuf};

use super::download::{hub_cache_dir, repo_cache_dir};
use super::Role;

/// Known file names per role, lower case, preferred first (upstream, 1038lab, Kijai).
const NAMES: &[(Role, &[&str])] = &[
    (
        Role::Dit,
        &[
            "diffusion_pytorch_model_streaming_dmd.safetensors",
            "flashvsr1_1.safetensors",
            "wan2_1-t2v-1.1_3b_flashvsr_fp32.safetensors",
            "wan2_1-t2v-1_3b_flashvsr_fp32.safetensors",
        ],
    ),
    (
        Role::LqProj,
        &[
            "lq_proj_in.ckpt",
            "lq_proj_in.safetensors",
            "wan2_1_flashvsr_lq_proj_model_bf16.safetensors",
            "wan2_1_flashvsr_pq_proj_model_bf16.safetensors",
        ],
    ),
    (
        Role::TcDecoder,
        &[
            "tcdecoder.ckpt",
            "tcdecoder.safetensors",
            "wan2_1_flashvsr_tcdecoder_fp32.safetensors",
        ],
    ),
    (
        Role::Vae,
        &[
            "wan2.1_vae.pth",
            "wan2.1_vae.safetensors",
            "wan_2.1_vae.safetensors",
            "wan2_1_vae_fp32.safetensors",
            "wan2_1_vae_bf16.safetensors",
        ],
    ),
    (Role::Prompt, &["posi_prompt.pth", "prompt.safetensors"]),
];

/// Model version as far as names tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionHint {
    V1,
    V1_1,
}

/// The files found, before their tensors are looked at.
#[derive(Debug, Clone, Default)]
pub struct Found {
    /// Files recognised by name.
    pub named: Vec<(Role, PathBuf)>,
    /// Files to classify by their tensor names (all-in-one repacks, GGUF, renamed files).
    pub other: Vec<PathBuf>,
    /// Where they were found, for messages and the summary.
    pub origin: String,
    pub version_hint: Option<VersionHint>,
}

impl Found {
    pub fn has(&self, role: Role) -> bool {
        self.named.iter().any(|(r, _)| *r == role)
    }

    pub fn is_empty(&self) -> bool {
        self.named.is_empty() && self.other.is_empty()
    }

    /// Which of the needed roles no named file covers (an `other` file may still cover them).
    pub fn missing(&self, full_mode: bool) -> Vec<Role> {
        Role::ALL
            .into_iter()
            .filter(|r| r.needed_for(full_mode) && !self.has(*r))
            .collect()
    }
}

/// Role of a file by its name, if it is a known one.
pub fn role_by_name(path: &Path) -> Option<Role> {
    let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
    NAMES
        .iter()
        .find(|(_, names)| names.contains(&name.as_str()))
        .map(|(r, _)| *r)
}

fn is_weight_ext(path: &Path) -> bool {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    matches!(
        ext.as_str(),
        "safetensors" | "gguf" | "ckpt" | "pth" | "pt" | "bin"
    )
}

/// A version hint from names: HF cache repo folders, folders like `FlashVSR-v1.1`, and repack
/// file names that say which version they are.
pub fn version_hint(path: &Path) -> Option<VersionHint> {
    for comp in path.components().rev() {
        let c = comp.as_os_str().to_string_lossy().to_ascii_lowercase();
        if let Some(repo) = c.strip_prefix("models--") {
            let name = repo.rsplit("--").next().unwrap_or("");
            return match name {
                "flashvsr-v1.1" => Some(VersionHint::V1_1),
                "flashvsr" => Some(VersionHint::V1),
                _ => None,
            };
        }
        if c == "flashvsr1_1.safetensors"
            || c.starts_with("flashvsr_v1.1")
            || c.starts_with("wan2_1-t2v-1.1_3b_flashvsr")
        {
            return Some(VersionHint::V1_1);
        }
        if c.starts_with("wan2_1-t2v-1_3b_flashvsr") {
            return Some(VersionHint::V1);
        }
        if c.ends_with("v1.1") || c.ends_with("v1_1") {
            return Some(VersionHint::V1_1);
        }
    }
    None
}

/// Scans one folder: recognised names first; if none is recognised, every weight-like file is
/// kept for classification by content (`loose`), else other files are ignored.
pub fn scan_dir(dir: &Path, loose: bool) -> std::io::Result<Found> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    entries.sort();
    let mut found = Found {
        origin: dir.display().to_string(),
        ..Default::default()
    };
    for (role, names) in NAMES {
        // Preference order of the name table, not of the directory listing.
        let pick = names.iter().find_map(|n| {
            entries.iter().find(|p| {
                p.file_name()
                    .is_some_and(|f| f.to_string_lossy().eq_ignore_ascii_case(n))
            })
        });
        if let Some(p) = pick {
            found.named.push((*role, p.clone()));
        }
    }
    // Files with other names are kept for classification by content; they are only opened when
    // the named files leave a part missing. Auto-discovery keeps only files that say FlashVSR.
    let named: Vec<PathBuf> = found.named.iter().map(|(_, p)| p.clone()).collect();
    let says_flashvsr = |p: &PathBuf| {
        p.file_name().is_some_and(|f| {
            f.to_string_lossy()
                .to_ascii_lowercase()
                .contains("flashvsr")
        }) || p
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    };
    found.other.extend(
        entries
            .iter()
            .filter(|p| is_weight_ext(p) && !named.contains(p) && role_by_name(p).is_none())
            .filter(|p| loose || says_flashvsr(p))
            .cloned(),
    );
    found.version_hint =
        version_hint(dir).or_else(|| found.named.iter().find_map(|(_, p)| version_hint(p)));
    Ok(found)
}

/// `--weights` arguments: folders are scanned (loosely), files are taken by name or kept for
/// classification by content.
pub fn from_args(paths: &[PathBuf]) -> anyhow::Result<Found> {
    let mut found = Found {
        origin: paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        ..Default::default()
    };
    for p in paths {
        if p.is_dir() {
            let f = scan_dir(p, true)
                .map_err(|e| anyhow::anyhow!("cannot read weights folder {}: {e}", p.display()))?;
            if f.is_empty() {
                anyhow::bail!(
                    "weights folder {} holds no weight files (expected {} and friends)",
                    p.display(),
                    Role::Dit.upstream_file()
                );
            }
            found.named.extend(f.named);
            found.other.extend(f.other);
            found.version_hint = found.version_hint.or(f.version_hint);
        } else if p.is_file() {
            match role_by_name(p) {
                Some(r) => found.named.push((r, p.clone())),
                None => found.other.push(p.clone()),
            }
            found.version_hint = found.version_hint.or(version_hint(p));
        } else {
            anyhow::bail!("weights path {} does not exist", p.display());
        }
    }
    Ok(found)
}

/// The automatic search, in order: `$FLASHVSR_MODELS` (and its sub-folders), the Hugging Face
/// cache snapshot of `hf_repo`, ComfyUI `models/` folders. Returns the first location that has
/// a DiT, with every candidate location tried listed in `tried`.
pub fn search(hf_repo: &str, full_mode: bool, tried: &mut Vec<String>) -> Option<Found> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(root) = std::env::var_os("FLASHVSR_MODELS")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
    {
        candidates.push(root.clone());
        if let Ok(rd) = std::fs::read_dir(&root) {
            let mut subs: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir())
                .collect();
            subs.sort();
            // The folder named after the wanted repo first (e.g. FlashVSR-v1.1).
            let repo_name = hf_repo
                .rsplit('/')
                .next()
                .unwrap_or(hf_repo)
                .to_ascii_lowercase();
            subs.sort_by_key(|p| {
                p.file_name()
                    .map(|f| f.to_string_lossy().to_ascii_lowercase() != repo_name)
            });
            candidates.extend(subs);
        }
    }
    candidates.extend(hf_snapshots(hf_repo));
    candidates.extend(comfyui_dirs());

    let mut partial: Option<Found> = None;
    for dir in candidates {
        tried.push(dir.display().to_string());
        let Ok(found) = scan_dir(&dir, false) else {
            continue;
        };
        if found.is_empty() {
            continue;
        }
        if found.missing(full_mode).is_empty() || !found.other.is_empty() {
            return Some(found);
        }
        if found.has(Role::Dit) && partial.is_none() {
            partial = Some(found);
        }
    }
    partial
}

/// Snapshot folders of a repo in the HF cache, the one `refs/main` names first.
pub fn hf_snapshots(hf_repo: &str) -> Vec<PathBuf> {
    let repo_dir = repo_cache_dir(&hub_cache_dir(), hf_repo);
    let snaps = repo_dir.join("snapshots");
    let Ok(rd) = std::fs::read_dir(&snaps) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    if let Ok(main) = std::fs::read_to_string(repo_dir.join("refs").join("main")) {
        let main = main.trim().to_string();
        dirs.sort_by_key(|d| d.file_name().map(|f| f.to_string_lossy() != main.as_str()));
    }
    dirs
}

/// FlashVSR folders under ComfyUI `models/` roots: `$COMFYUI_PATH`/`$COMFYUI_DIR`, `./ComfyUI`,
/// `~/ComfyUI`, and the current folder if it is a ComfyUI install.
pub fn comfyui_dirs() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    for var in ["COMFYUI_PATH", "COMFYUI_DIR", "COMFYUI_HOME"] {
        if let Some(v) = std::env::var_os(var).filter(|s| !s.is_empty()) {
            roots.push(PathBuf::from(v));
        }
    }
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd.join("ComfyUI"));
        roots.push(cwd.clone());
    }
    roots.push(super::download::home_dir().join("ComfyUI"));
    let mut out = Vec::new();
    for root in roots {
        let models = root.join("models");
        let Ok(rd) = std::fs::read_dir(&models) else {
            continue;
        };
        let mut subs: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_dir()
                    && p.file_name().is_some_and(|f| {
                        f.to_string_lossy()
                            .to_ascii_lowercase()
                            .contains("flashvsr")
                    })
            })
            .collect();
        subs.sort();
        out.extend(subs);
        for sub in ["diffusion_models/FlashVSR", "diffusion_models"] {
            let p = models.join(sub);
            if p.is_dir() {
                out.push(p);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_hints() {
        assert_eq!(
            role_by_name(Path::new("/x/LQ_proj_in.ckpt")),
            Some(Role::LqProj)
        );
        assert_eq!(
            role_by_name(Path::new("/x/FlashVSR1_1.safetensors")),
            Some(Role::Dit)
        );
        assert_eq!(
            role_by_name(Path::new("/x/Prompt.safetensors")),
            Some(Role::Prompt)
        );
        assert_eq!(
            role_by_name(Path::new("/x/flashvsr_v1.1_fp16.safetensors")),
            None
        );
        assert_eq!(
            version_hint(Path::new(
                "/h/hub/models--JunhaoZhuang--FlashVSR-v1.1/snapshots/abc"
            )),
            Some(VersionHint::V1_1)
        );
        assert_eq!(
            version_hint(Path::new(
                "/h/hub/models--JunhaoZhuang--FlashVSR/snapshots/abc"
            )),
            Some(VersionHint::V1)
        );
        assert_eq!(
            version_hint(Path::new("/m/Wan2_1-T2V-1_3B_FlashVSR_fp32.safetensors")),
            Some(VersionHint::V1)
        );
        assert_eq!(version_hint(Path::new("/m/stuff")), None);
    }

    #[test]
    fn folder_by_upstream_names_ignores_other_files() {
        let dir = tempfile::tempdir().unwrap();
        for n in [
            "diffusion_pytorch_model_streaming_dmd.safetensors",
            "LQ_proj_in.ckpt",
            "LQ_proj_in.fp32.ckpt",
            "TCDecoder.ckpt",
            "posi_prompt.pth",
            "noise.npy",
        ] {
            std::fs::write(dir.path().join(n), b"x").unwrap();
        }
        let f = scan_dir(dir.path(), true).unwrap();
        // Kept for content classification only if a part is missing; never non-weight files.
        assert_eq!(f.other, vec![dir.path().join("LQ_proj_in.fp32.ckpt")]);
        assert!(scan_dir(dir.path(), false).unwrap().other.is_empty());
        assert_eq!(f.missing(false), Vec::<Role>::new());
        assert_eq!(f.missing(true), vec![Role::Vae]);
        let lq = f.named.iter().find(|(r, _)| *r == Role::LqProj).unwrap();
        assert!(lq.1.ends_with("LQ_proj_in.ckpt"));
    }
}
