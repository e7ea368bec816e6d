//! Pinned download manifests (`models/bundles/*.json`): which files make a model, with sizes and
//! sha256. Sizes and hashes live only in those JSON files, never in Rust.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::Role;

const BUNDLE_V1_1: &str = include_str!("../../../../models/bundles/flashvsr-v1.1.json");
const BUNDLE_V1: &str = include_str!("../../../../models/bundles/flashvsr-v1.json");

/// Environment variable naming a manifest JSON file to use instead of the built-in ones (tests,
/// mirrors with other revisions).
pub const MANIFEST_ENV: &str = "FLASHVSR_MANIFEST";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    /// `v1` or `v1.1`.
    pub model_version: String,
    /// Hugging Face repository (`owner/name`).
    pub hf_repo: String,
    /// Branch, tag or 40-hex commit to resolve.
    pub revision: String,
    #[serde(default)]
    pub source: Option<String>,
    pub files: Vec<ManifestFile>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Path inside the repository; also the name inside the snapshot folder.
    pub path: String,
    pub role: Role,
    /// Exact size; `None` where it is not known (then the Hub's `X-Linked-Size` is used).
    pub bytes: Option<u64>,
    pub sha256: String,
    /// Direct URL for files that are not on the Hub (the prompt tensor lives on GitHub).
    #[serde(default)]
    pub url: Option<String>,
    /// Environment variable that overrides `url`.
    #[serde(default)]
    pub url_env: Option<String>,
}

impl ManifestFile {
    /// The direct URL, if this file does not come from the Hub (the env override wins).
    pub fn direct_url(&self) -> Option<String> {
        if let Some(var) = &self.url_env {
            if let Ok(v) = std::env::var(var) {
                if !v.trim().is_empty() {
                    return Some(v);
                }
            }
        }
        self.url.clone()
    }
}

impl Manifest {
    pub fn parse(text: &str, origin: &str) -> Result<Manifest> {
        let m: Manifest = serde_json::from_str(text)
            .with_context(|| format!("manifest {origin} is not valid manifest JSON"))?;
        for f in &m.files {
            if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!(
                    "manifest {origin}: sha256 of {} is not 64 hex digits",
                    f.path
                );
            }
            if f.path.contains("..") || f.path.starts_with('/') {
                bail!(
                    "manifest {origin}: file path {} must stay inside the repository",
                    f.path
                );
            }
        }
        Ok(m)
    }

    /// The manifest for a model version: `$FLASHVSR_MANIFEST` or `explicit` if given, else the
    /// built-in bundle.
    pub fn load(version: &str, explicit: Option<&Path>) -> Result<Manifest> {
        let from_env = std::env::var_os(MANIFEST_ENV).map(std::path::PathBuf::from);
        if let Some(path) = explicit.map(Path::to_path_buf).or(from_env) {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read manifest {}", path.display()))?;
            return Manifest::parse(&text, &path.display().to_string());
        }
        match version {
            "v1.1" => Manifest::parse(BUNDLE_V1_1, "models/bundles/flashvsr-v1.1.json"),
            "v1" => Manifest::parse(BUNDLE_V1, "models/bundles/flashvsr-v1.json"),
            other => bail!("no download manifest for model version {other} (known: v1, v1.1)"),
        }
    }

    #[cfg(test)]
    pub fn file(&self, role: Role) -> Option<&ManifestFile> {
        self.files.iter().find(|f| f.role == role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_bundles_parse_and_cover_every_role() {
        for (text, version) in [(BUNDLE_V1_1, "v1.1"), (BUNDLE_V1, "v1")] {
            let m = Manifest::parse(text, "builtin").unwrap();
            assert_eq!(m.model_version, version);
            for role in Role::ALL {
                let f = m
                    .file(role)
                    .unwrap_or_else(|| panic!("{version}: no {role}"));
                assert_eq!(f.path.rsplit('/').next().unwrap(), role.upstream_file());
            }
            assert!(m.file(Role::Prompt).unwrap().direct_url().is_some());
        }
    }
}
