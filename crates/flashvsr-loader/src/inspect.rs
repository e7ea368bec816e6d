//! `flashvsr inspect`: metadata and a tensor table for files or folders, file by file (upstream's
//! components are one per file and reuse tensor names).

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::Result;
use crate::gguf::Value;
use crate::store::{Format, TensorInfo, WeightStore};

#[derive(Debug, Clone, serde::Serialize)]
pub struct FileEntry {
    pub path: String,
    pub format: Format,
    pub bytes: u64,
    /// This file's own metadata.
    pub metadata: Vec<(String, Value)>,
    /// How many tensors it holds.
    pub tensor_count: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct InspectReport {
    pub files: Vec<FileEntry>,
    /// Metadata of all files, merged (where two files set a key, the first wins).
    pub metadata: Vec<(String, Value)>,
    /// Every file's tensors, file by file (a name may appear in several files).
    pub tensors: Vec<TensorInfo>,
    pub total_bytes: u64,
    pub total_params: u64,
}

/// Reads the headers of `paths` (files and/or folders), each file on its own.
pub fn inspect<P: AsRef<Path>>(paths: &[P]) -> Result<InspectReport> {
    Ok(inspect_stores(&WeightStore::open_each(paths)?))
}

pub fn inspect_store(store: &WeightStore) -> InspectReport {
    inspect_stores(std::slice::from_ref(store))
}

fn pairs(m: &BTreeMap<String, Value>) -> Vec<(String, Value)> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// One report over several stores, in order.
pub fn inspect_stores(stores: &[WeightStore]) -> InspectReport {
    let mut files = Vec::new();
    let mut metadata = BTreeMap::new();
    let mut tensors: Vec<TensorInfo> = Vec::new();
    for store in stores {
        for ((p, format), (_, meta)) in store.file_formats().into_iter().zip(store.file_metadata())
        {
            files.push(FileEntry {
                path: p.display().to_string(),
                format,
                bytes: std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
                metadata: pairs(meta),
                tensor_count: store.infos().filter(|t| t.file == p).count(),
            });
        }
        for (k, v) in store.metadata() {
            metadata.entry(k.clone()).or_insert_with(|| v.clone());
        }
        tensors.extend(store.infos().cloned());
    }
    InspectReport {
        files,
        metadata: pairs(&metadata),
        total_bytes: tensors.iter().filter_map(|t| t.nbytes).sum(),
        total_params: tensors.iter().map(|t| t.elem_count() as u64).sum(),
        tensors,
    }
}

fn dims(s: &[usize]) -> String {
    format!(
        "[{}]",
        s.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(",")
    )
}

impl std::fmt::Display for InspectReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for file in &self.files {
            writeln!(
                f,
                "file {} ({}, {} bytes, {} tensors)",
                file.path, file.format, file.bytes, file.tensor_count
            )?;
            if !file.metadata.is_empty() {
                writeln!(f, "  metadata:")?;
            }
            for (k, v) in &file.metadata {
                let mut s = v.to_string();
                if s.len() > 120 {
                    let cut = (0..=117)
                        .rev()
                        .find(|&i| s.is_char_boundary(i))
                        .unwrap_or(0);
                    s.truncate(cut);
                    s.push_str("...");
                }
                writeln!(f, "    {k} ({}) = {s}", v.type_name())?;
            }
        }
        let w = self
            .tensors
            .iter()
            .map(|t| t.name.len())
            .max()
            .unwrap_or(4)
            .max(4);
        writeln!(
            f,
            "{:<w$}  {:<22} {:<22} {:<7} {:>12} {:>12}  {:<11} file",
            "name", "shape", "stored", "type", "bytes", "offset", "shape from"
        )?;
        for t in &self.tensors {
            writeln!(
                f,
                "{:<w$}  {:<22} {:<22} {:<7} {:>12} {:>12}  {:<11} {}{}",
                t.name,
                dims(&t.shape),
                dims(&t.stored_shape),
                t.dtype,
                t.nbytes.map_or("?".into(), |n| n.to_string()),
                t.offset.map_or("-".into(), |n| n.to_string()),
                t.shape_source.to_string(),
                t.file
                    .file_name()
                    .map_or(String::new(), |n| n.to_string_lossy().into_owned()),
                t.problem
                    .as_ref()
                    .map_or(String::new(), |p| format!("  ERROR: {p}")),
            )?;
        }
        writeln!(
            f,
            "{} tensors, {} parameters, {} bytes",
            self.tensors.len(),
            self.total_params,
            self.total_bytes
        )
    }
}
