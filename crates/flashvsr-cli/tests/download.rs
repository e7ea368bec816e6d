//! `flashvsr download` against a local imitation of the Hugging Face Hub: HF cache layout,
//! resume of a partial `.incomplete` file, sha256 catching wrong bytes, clear errors.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use support::hub::{sha256_hex, Fault, HubEmulator, COMMIT};
use support::{flashvsr, stderr};

const REPO: &str = "Test/FlashVSR-v1.1";
const FILES: [(&str, &str); 4] = [
    ("diffusion_pytorch_model_streaming_dmd.safetensors", "dit"),
    ("LQ_proj_in.ckpt", "lq_proj"),
    ("TCDecoder.ckpt", "tc_decoder"),
    ("Wan2.1_VAE.pth", "vae"),
];

fn bytes_for(name: &str, len: usize) -> Vec<u8> {
    // Deterministic, name-dependent content.
    let seed = name
        .bytes()
        .fold(7u64, |a, b| a.wrapping_mul(31).wrapping_add(b as u64));
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

struct Setup {
    hub: HubEmulator,
    tmp: tempfile::TempDir,
    manifest: PathBuf,
    files: Vec<(String, Vec<u8>)>,
}

/// Serves four Hub files and one raw prompt; writes a manifest for them.
fn setup(faults: &[(&str, Fault)]) -> Setup {
    let hub = HubEmulator::start();
    let tmp = tempfile::tempdir().unwrap();
    let mut entries = Vec::new();
    let mut files = Vec::new();
    let fault_for = |n: &str| {
        faults
            .iter()
            .find(|(f, _)| *f == n)
            .map(|(_, f)| f.clone())
            .unwrap_or_default()
    };
    for (i, (name, role)) in FILES.iter().enumerate() {
        let bytes = bytes_for(name, 150_000 + i * 7_001);
        let sha = hub.add_hub_file(REPO, name, bytes.clone(), fault_for(name));
        entries.push(
            serde_json::json!({"path": name, "role": role, "bytes": bytes.len(), "sha256": sha}),
        );
        files.push((name.to_string(), bytes));
    }
    let prompt = bytes_for("posi_prompt.pth", 40_000);
    let sha = hub.add_raw_file(
        "posi_prompt.pth",
        prompt.clone(),
        fault_for("posi_prompt.pth"),
    );
    entries.push(serde_json::json!({
        "path": "posi_prompt.pth", "role": "prompt", "bytes": prompt.len(), "sha256": sha,
        "url": "https://invalid.example/posi_prompt.pth", "url_env": "FLASHVSR_PROMPT_URL"
    }));
    files.push(("posi_prompt.pth".into(), prompt));
    let manifest = serde_json::json!({
        "name": "test-v1.1", "model_version": "v1.1", "hf_repo": REPO, "revision": "main", "files": entries
    });
    let path = tmp.path().join("manifest.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    Setup {
        hub,
        tmp,
        manifest: path,
        files,
    }
}

impl Setup {
    fn hf_home(&self) -> PathBuf {
        self.tmp.path().join("hf")
    }

    fn repo_dir(&self) -> PathBuf {
        self.hf_home()
            .join("hub")
            .join("models--Test--FlashVSR-v1.1")
    }

    fn download(&self, parts: &str) -> Output {
        flashvsr(self.tmp.path())
            .args(["download", "--parts", parts])
            .env_remove("HF_HUB_OFFLINE")
            .env("HF_ENDPOINT", &self.hub.base)
            .env("FLASHVSR_MANIFEST", &self.manifest)
            .env("FLASHVSR_PROMPT_URL", self.hub.raw_url("posi_prompt.pth"))
            .output()
            .unwrap()
    }

    fn bytes(&self, name: &str) -> &[u8] {
        &self.files.iter().find(|(n, _)| n == name).unwrap().1
    }
}

fn list_dir(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn download_fills_hf_cache_layout_and_reuses_it() {
    let s = setup(&[]);
    let out = s.download("all");
    assert!(out.status.success(), "download failed: {}", stderr(&out));
    let snapshot = s.repo_dir().join("snapshots").join(COMMIT);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        snapshot.display().to_string()
    );
    for (name, bytes) in &s.files {
        let p = snapshot.join(name);
        let meta = std::fs::symlink_metadata(&p).unwrap();
        assert!(
            meta.file_type().is_symlink(),
            "{name} should be a symlink into blobs/"
        );
        let target = std::fs::read_link(&p).unwrap();
        assert_eq!(target, Path::new("../../blobs").join(sha256_hex(bytes)));
        assert_eq!(&std::fs::read(&p).unwrap(), bytes, "{name} content");
    }
    assert_eq!(
        std::fs::read_to_string(s.repo_dir().join("refs/main"))
            .unwrap()
            .trim(),
        COMMIT
    );
    assert!(list_dir(&s.repo_dir().join("blobs"))
        .iter()
        .all(|n| !n.ends_with(".incomplete")));
    // The metadata step must go through the resolve route with the 302 (not the CDN directly).
    let log = s.hub.log();
    assert!(log
        .iter()
        .any(|l| l.method == "HEAD" && l.path.contains("/resolve/main/LQ_proj_in.ckpt")));
    assert!(log
        .iter()
        .any(|l| l.method == "GET" && l.path.starts_with("/cdn/")));

    // Second run: everything is cached, nothing is fetched.
    s.hub.clear_log();
    let out = s.download("all");
    assert!(
        out.status.success(),
        "second download failed: {}",
        stderr(&out)
    );
    assert!(
        s.hub.log().is_empty(),
        "cached run touched the network: {:?}",
        s.hub.log()
    );
}

#[test]
fn download_resumes_a_partial_incomplete_file() {
    let s = setup(&[]);
    let name = "LQ_proj_in.ckpt";
    let bytes = s.bytes(name).to_vec();
    let sha = sha256_hex(&bytes);
    let blobs = s.repo_dir().join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let half = bytes.len() / 2;
    std::fs::write(blobs.join(format!("{sha}.incomplete")), &bytes[..half]).unwrap();

    let out = s.download("tiny");
    assert!(out.status.success(), "download failed: {}", stderr(&out));
    let log = s.hub.log();
    let ranged: Vec<_> = log
        .iter()
        .filter(|l| l.path.ends_with(name) && l.method == "GET")
        .collect();
    assert_eq!(ranged.len(), 1, "one GET for the resumed file: {log:?}");
    assert_eq!(
        ranged[0].range.as_deref(),
        Some(format!("bytes={half}-").as_str())
    );
    assert_eq!(std::fs::read(blobs.join(&sha)).unwrap(), bytes);
    assert!(!blobs.join(format!("{sha}.incomplete")).exists());
    // tiny parts only: no VAE.
    assert!(!s
        .repo_dir()
        .join("snapshots")
        .join(COMMIT)
        .join("Wan2.1_VAE.pth")
        .exists());
}

#[test]
fn download_resumes_after_a_dropped_connection() {
    let name = "TCDecoder.ckpt";
    let s = setup(&[(
        name,
        Fault {
            truncate_first: 1,
            truncate_at: 60_000,
            ..Default::default()
        },
    )]);
    let out = s.download("tiny");
    assert!(!out.status.success(), "a truncated transfer must fail");
    let err = stderr(&out);
    let last = err.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains("resume") && last.contains(name),
        "stderr: {err}"
    );
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error")).count(),
        1,
        "one error line: {err}"
    );

    let out = s.download("tiny");
    assert!(
        out.status.success(),
        "resumed download failed: {}",
        stderr(&out)
    );
    let log = s.hub.log();
    let gets: Vec<_> = log
        .iter()
        .filter(|l| l.path.ends_with(name) && l.method == "GET")
        .collect();
    assert_eq!(
        gets.last().unwrap().range.as_deref(),
        Some("bytes=60000-"),
        "{gets:?}"
    );
    let p = s.repo_dir().join("snapshots").join(COMMIT).join(name);
    assert_eq!(std::fs::read(p).unwrap(), s.bytes(name));
}

#[test]
fn download_catches_wrong_bytes_by_sha256() {
    let name = "diffusion_pytorch_model_streaming_dmd.safetensors";
    let mut wrong = bytes_for(name, 150_000);
    wrong[1234] ^= 0x55;
    let s = setup(&[(
        name,
        Fault {
            wrong_bytes: Some(wrong),
            ..Default::default()
        },
    )]);
    let out = s.download("tiny");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("sha256") && err.contains(name),
        "stderr: {err}"
    );
    let sha = sha256_hex(s.bytes(name));
    let blobs = s.repo_dir().join("blobs");
    assert!(!blobs.join(&sha).exists(), "a corrupt blob was kept");
    assert!(
        !blobs.join(format!("{sha}.incomplete")).exists(),
        "the corrupt partial file was kept"
    );
    assert!(!s
        .repo_dir()
        .join("snapshots")
        .join(COMMIT)
        .join(name)
        .exists());
}

#[test]
fn download_restarts_when_the_server_ignores_range() {
    let name = "LQ_proj_in.ckpt";
    let s = setup(&[(
        name,
        Fault {
            ignore_range: true,
            ..Default::default()
        },
    )]);
    let bytes = s.bytes(name).to_vec();
    let sha = sha256_hex(&bytes);
    let blobs = s.repo_dir().join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(format!("{sha}.incomplete")), &bytes[..1000]).unwrap();
    let out = s.download("tiny");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(blobs.join(&sha)).unwrap(), bytes);
}

#[test]
fn download_reports_a_missing_repository() {
    let s = setup(&[]);
    let text = std::fs::read_to_string(&s.manifest)
        .unwrap()
        .replace(REPO, "Nobody/Nothing");
    std::fs::write(&s.manifest, text).unwrap();
    let out = s.download("tiny");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("404") && err.contains("repository not found"),
        "stderr: {err}"
    );
}
