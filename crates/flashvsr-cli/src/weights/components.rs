//! From found files to the model's parts: classify files by their tensor names, pick the model
//! version, and hand out one `VarBuilder` per part (prefixes of all-in-one repacks stripped).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use flashvsr_loader::WeightStore;

use super::discover::{self, Found, VersionHint};
use super::download::{ensure_bundle, HubConfig};
use super::manifest::Manifest;
use super::Role;
use crate::{DownloadArgs, VersionArg, WeightArgs};

/// One part of the model inside a weight store: requested names `from…` are read as `to…`
/// (e.g. `conv1.weight` → `lq_proj_in.conv1.weight` in an all-in-one file).
#[derive(Clone)]
pub struct Part {
    pub role: Role,
    pub store: Arc<WeightStore>,
    pub file: PathBuf,
    pub prefix: String,
    /// The tensor name, for the prompt.
    pub tensor: Option<String>,
}

impl Part {
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        let vb = self.store.var_builder(dtype, device);
        if self.prefix.is_empty() {
            vb
        } else {
            let prefix = self.prefix.clone();
            vb.rename_f(move |n: &str| format!("{prefix}{n}"))
        }
    }
}

/// Where the model version came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionSource {
    GgufMetadata,
    RepoName,
    Flag,
    Default,
}

pub struct Resolved {
    pub parts: BTreeMap<Role, Part>,
    pub origin: String,
    pub version: VersionArg,
    pub version_source: VersionSource,
}

impl Resolved {
    pub fn part(&self, role: Role) -> Option<&Part> {
        self.parts.get(&role)
    }

    /// The prompt embedding `[1, L, text_dim]`.
    pub fn prompt(&self, dtype: DType, device: &Device) -> Result<Tensor> {
        let part = self
            .parts
            .get(&Role::Prompt)
            .ok_or_else(|| anyhow!("no prompt tensor among the weights"))?;
        let name = part.tensor.clone().unwrap_or_default();
        let t = part.store.tensor(&name, dtype, device).with_context(|| {
            format!("cannot read the prompt tensor from {}", part.file.display())
        })?;
        let t = match t.rank() {
            2 => t.unsqueeze(0)?,
            3 => t,
            r => bail!(
                "{}: prompt tensor '{name}' has rank {r}, expected [1, L, text_dim]",
                part.file.display()
            ),
        };
        Ok(t)
    }

    pub fn files(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .parts
            .values()
            .map(|p| p.file.display().to_string())
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// The tensors that identify a part, as suffixes of full names.
fn locate(role: Role, names: &[String]) -> Option<String> {
    let has = |n: &str| names.binary_search_by(|x| x.as_str().cmp(n)).is_ok();
    let prefixes_of = |suffix: &str| -> Vec<String> {
        names
            .iter()
            .filter_map(|n| n.strip_suffix(suffix))
            .filter(|p| p.is_empty() || p.ends_with('.') || p.ends_with('_'))
            .map(str::to_string)
            .collect()
    };
    match role {
        Role::Dit => prefixes_of("blocks.0.self_attn.q.weight")
            .into_iter()
            .find(|p| p.is_empty() || p.ends_with('.'))
            .filter(|p| has(&format!("{p}head.head.weight"))),
        Role::LqProj => prefixes_of("linear_layers.0.weight")
            .into_iter()
            .find(|p| (p.is_empty() || p.ends_with('.')) && has(&format!("{p}conv1.weight"))),
        Role::TcDecoder => {
            // `decoder.1.weight` (TCDecoder.ckpt), or renamed to `tc_decoder.1.weight`.
            for p in prefixes_of("decoder.1.weight") {
                if (p.ends_with('.') || p.is_empty())
                    && (has(&format!("{p}decoder.26.weight"))
                        || has(&format!("{p}decoder.3.weight")))
                {
                    return Some(p);
                }
            }
            None
        }
        Role::Vae => prefixes_of("decoder.conv1.weight")
            .into_iter()
            .find(|p| (p.is_empty() || p.ends_with('.')) && has(&format!("{p}conv2.weight"))),
        Role::Prompt => {
            for n in [
                "positive_conditioning",
                "posi_prompt",
                "prompt",
                "Prompt",
                "prompt_embeds",
                "context",
            ] {
                if has(n) {
                    return Some(n.to_string());
                }
            }
            None
        }
    }
}

fn open_store(path: &Path) -> Result<Arc<WeightStore>> {
    let store = WeightStore::open(&[path]).map_err(|e| anyhow!("cannot read weights: {e}"))?;
    Ok(Arc::new(store))
}

/// Parts found in one file. `expected` = the role its name promises (then it must hold it).
fn parts_of(path: &Path, expected: Option<Role>) -> Result<Vec<Part>> {
    let store = open_store(path)?;
    let names = store.names();
    let mut out = Vec::new();
    for role in Role::ALL {
        if let Some(found) = locate(role, &names) {
            let (prefix, tensor) = if role == Role::Prompt {
                (String::new(), Some(found))
            } else {
                (found, None)
            };
            out.push(Part {
                role,
                store: store.clone(),
                file: path.to_path_buf(),
                prefix,
                tensor,
            });
        }
    }
    // A file with a single tensor named like the prompt file (`posi_prompt.pth` → `posi_prompt`).
    if expected == Some(Role::Prompt)
        && !out.iter().any(|p| p.role == Role::Prompt)
        && names.len() == 1
    {
        out.push(Part {
            role: Role::Prompt,
            store: store.clone(),
            file: path.to_path_buf(),
            prefix: String::new(),
            tensor: Some(names[0].clone()),
        });
    }
    if let Some(role) = expected {
        if !out.iter().any(|p| p.role == role) {
            let looks = out
                .first()
                .map(|p| format!("; it looks like the {}", p.role))
                .unwrap_or_default();
            let sample = names.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
            bail!(
                "{} is named like the {role} but does not hold its tensors ({} tensors: {sample}{}){looks}; these are not FlashVSR weights or the file is mislabelled",
                path.display(),
                names.len(),
                if names.len() > 3 { ", ..." } else { "" }
            );
        }
        out.retain(|p| p.role == role);
    }
    Ok(out)
}

/// Model version from GGUF/safetensors metadata, if any file says it.
fn version_from_metadata(parts: &BTreeMap<Role, Part>) -> Option<VersionArg> {
    for p in parts.values() {
        for (k, v) in p.store.metadata() {
            let key = k.to_ascii_lowercase();
            if !(key.ends_with("model_version")
                || key == "flashvsr.version"
                || key == "general.version")
            {
                continue;
            }
            let Some(s) = v.as_str() else { continue };
            match s.trim().trim_start_matches(['v', 'V']) {
                "1.1" | "1_1" => return Some(VersionArg::V1_1),
                "1" | "1.0" => return Some(VersionArg::V1),
                _ => {}
            }
        }
    }
    None
}

/// Classifies what was found into parts and checks that `full_mode`'s parts are all there.
pub fn classify(found: &Found, full_mode: bool) -> Result<BTreeMap<Role, Part>> {
    let mut parts: BTreeMap<Role, Part> = BTreeMap::new();
    for (role, path) in &found.named {
        if !role.needed_for(full_mode) {
            continue; // e.g. the VAE in a folder used in tiny mode: not even opened
        }
        for p in parts_of(path, Some(*role))? {
            parts.entry(p.role).or_insert(p);
        }
    }
    let mut unrecognised = Vec::new();
    let still_missing = |parts: &BTreeMap<Role, Part>| {
        Role::ALL
            .into_iter()
            .any(|r| r.needed_for(full_mode) && !parts.contains_key(&r))
    };
    for path in &found.other {
        if !still_missing(&parts) {
            break;
        }
        let ps = parts_of(path, None)?;
        if ps.is_empty() {
            unrecognised.push(path.clone());
        }
        for p in ps {
            parts.entry(p.role).or_insert(p);
        }
    }
    let missing: Vec<Role> = Role::ALL
        .into_iter()
        .filter(|r| r.needed_for(full_mode) && !parts.contains_key(r))
        .collect();
    if !missing.is_empty() {
        let list = missing
            .iter()
            .map(|r| format!("{r} ({})", r.upstream_file()))
            .collect::<Vec<_>>()
            .join(", ");
        let extra = if unrecognised.is_empty() {
            String::new()
        } else {
            format!(
                "; not FlashVSR weights: {}",
                unrecognised
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let hint = if missing == [Role::Vae] {
            " (full mode needs the Wan VAE; use --mode tiny, or add Wan2.1_VAE.pth)"
        } else if missing == [Role::TcDecoder] {
            " (tiny modes need the TCDecoder; use --mode full, or add TCDecoder.ckpt)"
        } else {
            ""
        };
        bail!("the weights in {} lack {list}{hint}{extra}", found.origin);
    }
    parts.retain(|r, _| r.needed_for(full_mode));
    Ok(parts)
}

/// `--weights`, else the automatic search, else a download; then classification.
pub fn resolve(args: &WeightArgs, full_mode: bool, quiet: bool) -> Result<Resolved> {
    let flag = args.model_version;
    let mut found = if !args.weights.is_empty() {
        discover::from_args(&args.weights)?
    } else {
        let version = flag.unwrap_or(VersionArg::V1_1);
        let manifest = Manifest::load(version.as_str(), args.manifest.as_deref())?;
        let mut tried = Vec::new();
        match discover::search(&manifest.hf_repo, full_mode, &mut tried) {
            Some(f) if f.missing(full_mode) == [Role::Prompt] && f.other.is_empty() => {
                // Common for ComfyUI folders: everything but the prompt, which comes from GitHub.
                let cfg = hub_config(args, quiet);
                let dir = ensure_bundle(&manifest, &[Role::Prompt], &cfg)?;
                let mut f = f;
                f.named
                    .push((Role::Prompt, dir.join(Role::Prompt.upstream_file())));
                f
            }
            Some(f) => f,
            None => {
                let cfg = hub_config(args, quiet);
                if cfg.offline {
                    let looked = if tried.is_empty() {
                        format!(
                            "$FLASHVSR_MODELS (unset), the Hugging Face cache {}, ComfyUI models folders",
                            super::download::repo_cache_dir(&cfg.cache, &manifest.hf_repo).display()
                        )
                    } else {
                        tried.join(", ")
                    };
                    bail!(
                        "no FlashVSR weights found (looked in: {looked}) and downloads are off (HF_HUB_OFFLINE / --offline); pass --weights DIR or allow downloading"
                    );
                }
                let roles: Vec<Role> = Role::ALL
                    .into_iter()
                    .filter(|r| r.needed_for(full_mode))
                    .collect();
                let dir = ensure_bundle(&manifest, &roles, &cfg)?;
                discover::scan_dir(&dir, false)
                    .with_context(|| format!("cannot read {}", dir.display()))?
            }
        }
    };
    if found.version_hint.is_none() {
        found.version_hint = discover::version_hint(Path::new(&found.origin));
    }
    let parts = classify(&found, full_mode)?;

    let (version, source) = if let Some(v) = version_from_metadata(&parts) {
        (v, VersionSource::GgufMetadata)
    } else if let Some(h) = found.version_hint {
        (
            if h == VersionHint::V1 {
                VersionArg::V1
            } else {
                VersionArg::V1_1
            },
            VersionSource::RepoName,
        )
    } else if let Some(v) = flag {
        (v, VersionSource::Flag)
    } else {
        (VersionArg::V1_1, VersionSource::Default)
    };
    if let Some(f) = flag {
        if f != version && !quiet {
            eprintln!(
                "warning: --model-version {} ignored: the weights say {} ({})",
                f.as_str(),
                version.as_str(),
                if source == VersionSource::GgufMetadata {
                    "file metadata"
                } else {
                    "repository/folder name"
                }
            );
        }
    }
    Ok(Resolved {
        parts,
        origin: found.origin.clone(),
        version,
        version_source: source,
    })
}

fn hub_config(args: &WeightArgs, quiet: bool) -> HubConfig {
    let mut cfg = HubConfig::from_env(quiet);
    cfg.offline |= args.offline;
    cfg
}

/// `flashvsr download`. `HF_HUB_OFFLINE=1` is honoured here too: files already in the cache
/// are found, nothing is fetched.
pub fn download_command(args: &DownloadArgs, quiet: bool) -> Result<()> {
    let manifest = Manifest::load(args.model_version.as_str(), args.manifest.as_deref())?;
    let cfg = HubConfig::from_env(quiet);
    let dir = ensure_bundle(&manifest, &args.parts.roles(), &cfg)?;
    println!("{}", dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn locate_parts_in_all_in_one_names() {
        let n = names(&[
            "blocks.0.self_attn.q.weight",
            "head.head.weight",
            "lq_proj_in.conv1.weight",
            "lq_proj_in.linear_layers.0.weight",
            "tc_decoder.decoder.1.weight",
            "tc_decoder.decoder.3.weight",
            "positive_conditioning",
        ]);
        assert_eq!(locate(Role::Dit, &n).as_deref(), Some(""));
        assert_eq!(locate(Role::LqProj, &n).as_deref(), Some("lq_proj_in."));
        assert_eq!(locate(Role::TcDecoder, &n).as_deref(), Some("tc_decoder."));
        assert_eq!(locate(Role::Vae, &n), None);
        assert_eq!(
            locate(Role::Prompt, &n).as_deref(),
            Some("positive_conditioning")
        );
    }

    #[test]
    fn vae_is_not_mistaken_for_tcdecoder() {
        let n = names(&[
            "decoder.conv1.weight",
            "conv2.weight",
            "decoder.head.2.weight",
        ]);
        assert_eq!(locate(Role::TcDecoder, &n), None);
        assert_eq!(locate(Role::Vae, &n).as_deref(), Some(""));
    }
}
