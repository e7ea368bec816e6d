//! Expected tensor layouts of FlashVSR components (`models/layouts/*.json`, built into the binary)
//! and validation of weight files against them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::error::{LoadError, Result};
use crate::store::{weight_files, WeightStore};

/// One expected tensor.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    /// Present in some upstream files but not needed (e.g. the Wan VAE encoder).
    #[serde(default)]
    pub optional: bool,
}

#[derive(Debug, serde::Deserialize)]
struct LayoutFile {
    component: String,
    description: String,
    tensors: Vec<TensorSpec>,
}

const LAYOUTS: &[(&str, &str)] = &[
    ("dit", include_str!("../../../models/layouts/dit.json")),
    (
        "lq_proj_v1",
        include_str!("../../../models/layouts/lq_proj_v1.json"),
    ),
    (
        "lq_proj_v1_1",
        include_str!("../../../models/layouts/lq_proj_v1_1.json"),
    ),
    (
        "tc_decoder",
        include_str!("../../../models/layouts/tc_decoder.json"),
    ),
    (
        "wan_vae",
        include_str!("../../../models/layouts/wan_vae.json"),
    ),
    (
        "prompt",
        include_str!("../../../models/layouts/prompt.json"),
    ),
];

fn parse(component: &str) -> Option<LayoutFile> {
    let (_, text) = LAYOUTS.iter().find(|(c, _)| *c == component)?;
    // The layouts are compiled in and covered by tests: a parse failure is a build defect.
    serde_json::from_str::<LayoutFile>(text)
        .ok()
        .filter(|l| l.component == component)
}

/// Names of the known components.
pub fn components() -> Vec<&'static str> {
    LAYOUTS.iter().map(|(c, _)| *c).collect()
}

/// The real (full-size) tensor layout of a component, optional tensors included.
pub fn component_layout(component: &str) -> Option<Vec<TensorSpec>> {
    parse(component).map(|l| l.tensors)
}

/// One-line description of a component.
pub fn component_description(component: &str) -> Option<String> {
    parse(component).map(|l| l.description)
}

/// How strictly shapes are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckMode {
    /// Names and exact shapes (the real model dims). A shape with the same element count that
    /// only differs by dims of 1 (ggml writers drop them) is accepted.
    Exact,
    /// Names and ranks only, dims free (reduced test models).
    Structure,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Mismatch {
    pub name: String,
    pub expected: Vec<usize>,
    pub found: Vec<usize>,
}

/// Result of checking files against a component layout.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ValidationReport {
    pub component: String,
    pub mode: CheckMode,
    pub files: Vec<String>,
    pub checked: usize,
    pub missing: Vec<TensorSpec>,
    pub unexpected: Vec<String>,
    pub mismatched: Vec<Mismatch>,
    /// Tensors present with a layout match but unreadable (unknown type, bad shape metadata).
    pub unreadable: Vec<(String, String)>,
    /// Files given that hold other components (not checked).
    pub skipped: Vec<String>,
}

impl ValidationReport {
    pub fn is_ok(&self) -> bool {
        self.missing.is_empty()
            && self.unexpected.is_empty()
            && self.mismatched.is_empty()
            && self.unreadable.is_empty()
    }
}

impl std::fmt::Display for ValidationReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.mode {
            CheckMode::Exact => "exact shapes",
            CheckMode::Structure => "structure only: names and ranks",
        };
        writeln!(
            f,
            "component {} ({mode}); files: {}",
            self.component,
            if self.files.is_empty() {
                "none holds it".to_string()
            } else {
                self.files.join(", ")
            }
        )?;
        if !self.skipped.is_empty() {
            writeln!(
                f,
                "  skipped (other components): {}",
                self.skipped.join(", ")
            )?;
        }
        for m in &self.missing {
            writeln!(f, "  missing     {} {:?}", m.name, m.shape)?;
        }
        for n in &self.unexpected {
            writeln!(f, "  unexpected  {n}")?;
        }
        for m in &self.mismatched {
            writeln!(
                f,
                "  mis-shaped  {}: expected {:?}, found {:?}",
                m.name, m.expected, m.found
            )?;
        }
        for (n, why) in &self.unreadable {
            writeln!(f, "  unreadable  {n}: {why}")?;
        }
        if self.is_ok() {
            writeln!(f, "OK: {} tensors match", self.checked)
        } else {
            writeln!(
                f,
                "FAILED: {} missing, {} unexpected, {} mis-shaped, {} unreadable (of {} checked)",
                self.missing.len(),
                self.unexpected.len(),
                self.mismatched.len(),
                self.unreadable.len(),
                self.checked
            )
        }
    }
}

fn squeeze(s: &[usize]) -> Vec<usize> {
    s.iter().copied().filter(|&d| d != 1).collect()
}

/// Checks an opened store against a component layout.
pub fn validate_store(
    store: &WeightStore,
    component: &str,
    mode: CheckMode,
) -> Result<ValidationReport> {
    check(Some(store), component, mode)
}

/// Checks `store` (`None`: no file holds the component) against a component layout.
fn check(
    store: Option<&WeightStore>,
    component: &str,
    mode: CheckMode,
) -> Result<ValidationReport> {
    let specs = component_layout(component).ok_or_else(|| {
        LoadError::Other(format!(
            "unknown component '{component}' (known: {})",
            components().join(", ")
        ))
    })?;
    let mut report = ValidationReport {
        component: component.to_string(),
        mode,
        files: store.map_or_else(Vec::new, |s| {
            s.files().iter().map(|p| p.display().to_string()).collect()
        }),
        checked: 0,
        missing: vec![],
        unexpected: vec![],
        mismatched: vec![],
        unreadable: vec![],
        skipped: vec![],
    };
    let known: BTreeSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    for spec in &specs {
        let Some(info) = store.and_then(|s| s.info(&spec.name)) else {
            if !spec.optional {
                report.missing.push(spec.clone());
            }
            continue;
        };
        report.checked += 1;
        if let Some(p) = &info.problem {
            report.unreadable.push((spec.name.clone(), p.clone()));
            continue;
        }
        let ok = match mode {
            CheckMode::Exact => {
                info.shape == spec.shape
                    || (info.elem_count() == spec.shape.iter().product::<usize>()
                        && squeeze(&info.shape) == squeeze(&spec.shape))
            }
            CheckMode::Structure => info.shape.len() == spec.shape.len(),
        };
        if !ok {
            report.mismatched.push(Mismatch {
                name: spec.name.clone(),
                expected: spec.shape.clone(),
                found: info.shape.clone(),
            });
        }
    }
    for name in store.map_or_else(Vec::new, |s| s.names()) {
        if !known.contains(name.as_str()) {
            report.unexpected.push(name);
        }
    }
    Ok(report)
}

/// Opens files/folders and checks them against the real layout of `component`.
pub fn validate<P: AsRef<Path>>(paths: &[P], component: &str) -> Result<ValidationReport> {
    validate_with(paths, component, CheckMode::Exact)
}

/// Like [`validate`] with a chosen [`CheckMode`]. Of several files, only those holding the
/// component are checked (upstream's components are one per file and reuse names): the file
/// with most of its tensors, plus any file that shares no tensor name with those chosen (a
/// component split in shards); the others are listed as skipped.
pub fn validate_with<P: AsRef<Path>>(
    paths: &[P],
    component: &str,
    mode: CheckMode,
) -> Result<ValidationReport> {
    let files = weight_files(paths)?;
    if files.len() == 1 {
        return validate_store(&WeightStore::open(&files)?, component, mode);
    }
    let specs = component_layout(component).unwrap_or_default();
    let known: BTreeSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    let stores = WeightStore::open_each(&files)?;
    let held: Vec<usize> = stores
        .iter()
        .map(|s| {
            s.names()
                .iter()
                .filter(|n| known.contains(n.as_str()))
                .count()
        })
        .collect();
    let mut order: Vec<usize> = (0..stores.len()).filter(|&i| held[i] > 0).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(held[i])); // stable: file order among equals
    let mut chosen: Vec<usize> = Vec::new();
    let mut taken = BTreeSet::new();
    for i in order {
        let names = stores[i].names();
        if names.iter().any(|n| taken.contains(n)) {
            continue; // another component that reuses names
        }
        taken.extend(names);
        chosen.push(i);
    }
    chosen.sort();
    let chosen_files: Vec<&PathBuf> = chosen.iter().map(|&i| &files[i]).collect();
    let mut report = if chosen_files.is_empty() {
        check(None, component, mode)?
    } else {
        check(Some(&WeightStore::open(&chosen_files)?), component, mode)?
    };
    report.skipped = (0..files.len())
        .filter(|i| !chosen.contains(i))
        .map(|i| files[i].display().to_string())
        .collect();
    Ok(report)
}
