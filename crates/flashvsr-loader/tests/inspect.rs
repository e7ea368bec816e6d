//! `inspect`: metadata and the tensor table, as text and JSON.

use flashvsr_loader::inspect;

mod common;
use common::{GGUF, TINY};

#[test]
fn inspect_gguf_table_and_json() {
    let r = inspect::inspect(&[format!("{GGUF}/nd-orig-shape.gguf")]).unwrap();
    assert_eq!(r.tensors.len(), 6);
    let text = r.to_string();
    let line = text
        .lines()
        .find(|l| l.starts_with("blocks.0.conv3d.weight "))
        .unwrap();
    assert!(
        line.contains("[8,6,4,3,3]") && line.contains("[8,24,3,3]") && line.contains("orig_shape"),
        "{line}"
    );
    assert!(
        text.contains("[8,24,3,3]") && text.contains("orig_shape") && text.contains("F16"),
        "{text}"
    );
    assert!(
        text.contains("comfy.gguf.orig_shape.blocks.0.conv3d.weight (arr) = [8, 6, 4, 3, 3]"),
        "{text}"
    );
    let json: serde_json::Value = serde_json::to_value(&r).unwrap();
    let t = &json["tensors"][0];
    assert!(t["name"].is_string() && t["shape"].is_array() && t["stored_shape"].is_array());
    assert!(t["offset"].is_u64() && t["nbytes"].is_u64() && t["shape_source"].is_string());
    // Unloadable tensors are listed with their problem.
    let r = inspect::inspect(&[format!("{GGUF}/types.gguf")]).unwrap();
    assert_eq!(r.tensors.len(), 25);
}

#[test]
fn inspect_folder_of_pickles() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["TCDecoder.ckpt", "posi_prompt.pth"] {
        std::os::unix::fs::symlink(format!("{TINY}/{f}"), dir.path().join(f)).unwrap();
    }
    let r = inspect::inspect(&[dir.path()]).unwrap();
    assert_eq!(r.files.len(), 2);
    assert_eq!(r.tensors.len(), 67);
    let text = r.to_string();
    let line = text
        .lines()
        .find(|l| l.starts_with("posi_prompt "))
        .unwrap();
    assert!(
        line.contains("[1,16,64]") && line.contains("BF16") && line.contains("posi_prompt.pth"),
        "{line}"
    );
}
