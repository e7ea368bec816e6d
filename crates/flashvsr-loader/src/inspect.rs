//! `flashvsr inspect`: metadata and a tensor table for files or folders.

use std::path::Path;

use crate::error::Result;
use crate::gguf::Value;
use crate::store::{Format, TensorInfo, WeightStore};

#[derive(Debug, Clone, serde::Serialize)]
pub struct FileEntry {
    pub path: String,
    pub format: Format,
    pub bytes: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct InspectReport {
    pub files: Vec<FileEntry>,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub total_bytes: u64,
    pub total_params: u64,
}

/// Reads the headers of `paths` (files and/or folders).
pub fn inspect<P: AsRef<Path>>(paths: &[P]) -> Result<InspectReport> {
    let store = WeightStore::open(paths)?;
    Ok(inspect_store(&store))
}

pub fn inspect_store(store: &WeightStore) -> InspectReport {
    let files = store
        .file_formats()
        .into_iter()
        .map(|(p, f)| FileEntry {
            path: p.display().to_string(),
            format: f,
            bytes: std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
        })
        .collect();
    let tensors: Vec<TensorInfo> = store.infos().cloned().collect();
    InspectReport {
        files,
        metadata: store
            .metadata()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
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
                "file {} ({}, {} bytes)",
                file.path, file.format, file.bytes
            )?;
        }
        if !self.metadata.is_empty() {
            writeln!(f, "metadata:")?;
            for (k, v) in &self.metadata {
                let mut s = v.to_string();
                if s.len() > 120 {
                    let cut = (0..=117)
                        .rev()
                        .find(|&i| s.is_char_boundary(i))
                        .unwrap_or(0);
                    s.truncate(cut);
                    s.push_str("...");
                }
                writeln!(f, "  {k} ({}) = {s}", v.type_name())?;
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
