//! The shared test command builder clears every environment variable the binary reads: the
//! variable names are collected from the sources of every crate the binary links and from the
//! download manifests' `url_env`, and each must be on `support::BINARY_ENV`.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Names read at run time: the literal argument of `var("..")` / `var_os("..")`, and any whole
/// string literal that looks like one of our variables (constants, lists of names). Compile-time
/// reads (`env!`, `option_env!`) are not run-time inputs.
fn names_read(text: &str) -> BTreeSet<String> {
    let name_at = |from: usize| -> Option<&str> {
        let rest = &text[from..];
        let len = rest
            .bytes()
            .take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_')
            .count();
        (len > 0 && rest[len..].starts_with('"')).then(|| &rest[..len])
    };
    let mut out = BTreeSet::new();
    for call in ["var(\"", "var_os(\""] {
        for (i, _) in text.match_indices(call) {
            out.extend(name_at(i + call.len()).map(str::to_string));
        }
    }
    for prefix in ["\"FLASHVSR_", "\"HF_", "\"COMFYUI_", "\"XDG_"] {
        for (i, _) in text.match_indices(prefix) {
            if text[..i].trim_end().ends_with("env!(") {
                continue;
            }
            out.extend(name_at(i + 1).map(str::to_string));
        }
    }
    out
}

#[test]
fn the_command_builder_clears_every_variable_the_binary_reads() {
    let root = workspace();
    let mut files = Vec::new();
    for krate in [
        "flashvsr-cli",
        "flashvsr-model",
        "flashvsr-loader",
        "flashvsr-video",
        "flashvsr-kernels",
    ] {
        rust_files(&root.join("crates").join(krate).join("src"), &mut files);
    }
    let mut read = BTreeSet::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        read.extend(names_read(&text));
    }
    for e in std::fs::read_dir(root.join("models/bundles")).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        for f in v["files"].as_array().unwrap() {
            if let Some(var) = f["url_env"].as_str() {
                read.insert(var.to_string());
            }
        }
    }
    // The scan itself works: names known to be read are found.
    for known in ["HF_HOME", "HOME", "FLASHVSR_MODELS", "FLASHVSR_PROMPT_URL"] {
        assert!(read.contains(known), "scan missed {known}: {read:?}");
    }
    read.remove("PATH"); // kept: the tests need ffmpeg
    let missing: Vec<&String> = read
        .iter()
        .filter(|v| !support::BINARY_ENV.contains(&v.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "tests/support BINARY_ENV lacks {missing:?} (read by the binary)"
    );
}

#[test]
fn names_are_found_in_calls_and_constants_only() {
    let src = r#"
        std::env::var_os("HOME"); std::env::var("FOO_BAR");
        const X: &str = "FLASHVSR_MANIFEST"; let l = ["COMFYUI_PATH"];
        option_env!("FLASHVSR_PTX_ARCH"); eprintln!("set HF_TOKEN"); let s = "ABC";
    "#;
    let got: Vec<String> = names_read(src).into_iter().collect();
    assert_eq!(
        got,
        ["COMFYUI_PATH", "FLASHVSR_MANIFEST", "FOO_BAR", "HOME"]
    );
}
