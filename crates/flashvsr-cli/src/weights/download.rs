//! Fetching the weights from the Hugging Face Hub into the standard HF cache layout
//! (`hub/models--owner--name/{blobs,snapshots,refs}`), resumable and verified against the pinned
//! manifest (size and sha256 computed while streaming).

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use super::manifest::{Manifest, ManifestFile};
use super::Role;
use crate::progress::Progress;

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Where and how to download, from the usual Hugging Face environment variables.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// `HF_ENDPOINT` (default `https://huggingface.co`), without a trailing `/`.
    pub endpoint: String,
    /// `HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
    pub cache: PathBuf,
    /// `HF_TOKEN`, sent to the endpoint only (never to a CDN it redirects to).
    pub token: Option<String>,
    /// `HF_HUB_OFFLINE=1`: never touch the network.
    pub offline: bool,
    pub quiet: bool,
}

impl HubConfig {
    pub fn from_env(quiet: bool) -> HubConfig {
        let endpoint = std::env::var("HF_ENDPOINT")
            .ok()
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
            .trim_end_matches('/')
            .to_string();
        let token = std::env::var("HF_TOKEN")
            .ok()
            .filter(|s| !s.trim().is_empty());
        let offline = std::env::var("HF_HUB_OFFLINE")
            .is_ok_and(|v| matches!(v.trim(), "1" | "true" | "TRUE" | "yes"));
        HubConfig {
            endpoint,
            cache: hub_cache_dir(),
            token,
            offline,
            quiet,
        }
    }
}

/// `$HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
pub fn hf_home() -> PathBuf {
    if let Some(h) = std::env::var_os("HF_HOME").filter(|s| !s.is_empty()) {
        return PathBuf::from(h);
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|s| !s.is_empty()) {
        return PathBuf::from(x).join("huggingface");
    }
    home_dir().join(".cache").join("huggingface")
}

pub fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .or_else(|| std::env::var_os("USERPROFILE"))
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// The hub cache: `$HF_HUB_CACHE`, else `<hf_home>/hub`.
pub fn hub_cache_dir() -> PathBuf {
    match std::env::var_os("HF_HUB_CACHE").filter(|s| !s.is_empty()) {
        Some(c) => PathBuf::from(c),
        None => hf_home().join("hub"),
    }
}

/// `<cache>/models--owner--name`.
pub fn repo_cache_dir(cache: &Path, repo: &str) -> PathBuf {
    cache.join(format!("models--{}", repo.replace('/', "--")))
}

fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Percent-encodes everything but RFC 3986 unreserved characters (and `/` when `keep_slash`).
fn percent_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What the Hub says about one file before the transfer.
#[derive(Debug, Clone)]
struct FileMeta {
    commit: String,
    etag: String,
    size: u64,
    /// Where the bytes are (the CDN URL of an LFS file, else the resolve URL itself).
    location: String,
}

/// Downloads (or finds in the cache) the files of `roles` and returns the snapshot folder that
/// holds them under their upstream names.
pub fn ensure_bundle(manifest: &Manifest, roles: &[Role], cfg: &HubConfig) -> Result<PathBuf> {
    let repo_dir = repo_cache_dir(&cfg.cache, &manifest.hf_repo);
    let mut commit = known_commit(&repo_dir, &manifest.revision);
    let wanted: Vec<&ManifestFile> = manifest
        .files
        .iter()
        .filter(|f| roles.contains(&f.role))
        .collect();
    if wanted.is_empty() {
        bail!("manifest {} lists none of the needed files", manifest.name);
    }

    let present = |commit: &Option<String>, f: &ManifestFile| -> bool {
        let Some(c) = commit else { return false };
        let p = repo_dir.join("snapshots").join(c).join(&f.path);
        match fs::metadata(&p) {
            Ok(m) => f.bytes.is_none_or(|b| b == m.len()),
            Err(_) => false,
        }
    };
    let missing: Vec<&ManifestFile> = wanted
        .iter()
        .copied()
        .filter(|f| !present(&commit, f))
        .collect();
    if missing.is_empty() {
        if let Some(c) = &commit {
            return Ok(repo_dir.join("snapshots").join(c));
        }
    }
    if cfg.offline {
        bail!(
            "the {} weights are not in the Hugging Face cache ({}) and HF_HUB_OFFLINE is set; unset it to download, or pass --weights DIR",
            manifest.model_version,
            repo_dir.display()
        );
    }

    let http = Http::new(cfg)?;
    let total: u64 = missing.iter().filter_map(|f| f.bytes).sum();
    if !cfg.quiet {
        eprintln!(
            "Downloading {} file(s) of FlashVSR {} (~{:.2} GB) from {} into {}",
            missing.len(),
            manifest.model_version,
            total as f64 / 1e9,
            if missing.iter().all(|f| f.direct_url().is_some()) {
                "GitHub"
            } else {
                cfg.endpoint.as_str()
            },
            repo_dir.display()
        );
    }
    // Hub files first: they tell the commit the snapshot folder is named after.
    let mut ordered = missing.clone();
    ordered.sort_by_key(|f| f.direct_url().is_some());
    for f in ordered {
        match f.direct_url() {
            None => {
                let url = format!(
                    "{}/{}/resolve/{}/{}",
                    cfg.endpoint,
                    manifest.hf_repo,
                    percent_encode(&manifest.revision, false),
                    percent_encode(&f.path, true)
                );
                let meta = http
                    .metadata(&url)
                    .with_context(|| format!("cannot download {} from {url}", f.path))?;
                check_meta_against_manifest(&meta, f, &url)?;
                let blob = fetch_blob(
                    &http,
                    &repo_dir,
                    &meta.location,
                    meta.size,
                    f,
                    true,
                    cfg.quiet,
                )?;
                link_snapshot(&repo_dir, &meta.commit, &f.path, &blob)?;
                if meta.commit != manifest.revision {
                    write_ref(&repo_dir, &manifest.revision, &meta.commit)?;
                }
                commit = Some(meta.commit);
            }
            Some(url) => {
                let c = match &commit {
                    Some(c) => c.clone(),
                    None if is_commit_hash(&manifest.revision) => manifest.revision.clone(),
                    None => {
                        // Only a direct file is missing and the revision is a branch: ask the Hub
                        // which commit the snapshot belongs to.
                        let hub_file = manifest.files.iter().find(|x| x.direct_url().is_none()).ok_or_else(|| {
                            anyhow!("manifest {}: cannot name a snapshot without a Hub file or a commit revision", manifest.name)
                        })?;
                        let u = format!(
                            "{}/{}/resolve/{}/{}",
                            cfg.endpoint,
                            manifest.hf_repo,
                            percent_encode(&manifest.revision, false),
                            percent_encode(&hub_file.path, true)
                        );
                        http.metadata(&u)?.commit
                    }
                };
                let size = f.bytes.ok_or_else(|| {
                    anyhow!("manifest {}: {} needs a byte size", manifest.name, f.path)
                })?;
                let blob = fetch_blob(&http, &repo_dir, &url, size, f, false, cfg.quiet)
                    .with_context(|| format!("cannot download {} from {url}", f.path))?;
                link_snapshot(&repo_dir, &c, &f.path, &blob)?;
                commit = Some(c);
            }
        }
    }
    let c = commit.ok_or_else(|| anyhow!("no commit known for {}", manifest.hf_repo))?;
    Ok(repo_dir.join("snapshots").join(c))
}

/// The commit a revision resolved to last time (`refs/<revision>`), or the revision itself when
/// it already is a commit hash.
fn known_commit(repo_dir: &Path, revision: &str) -> Option<String> {
    if is_commit_hash(revision) {
        return Some(revision.to_string());
    }
    let text = fs::read_to_string(repo_dir.join("refs").join(revision)).ok()?;
    let c = text.trim().to_string();
    is_commit_hash(&c).then_some(c)
}

fn check_meta_against_manifest(meta: &FileMeta, f: &ManifestFile, url: &str) -> Result<()> {
    if let Some(b) = f.bytes {
        if b != meta.size {
            bail!(
                "{url} is {} bytes but the manifest pins {b}: the repository holds a different file; pass --weights to use your own copy",
                meta.size
            );
        }
    }
    if is_sha256(&meta.etag) && !meta.etag.eq_ignore_ascii_case(&f.sha256) {
        bail!(
            "{url} has sha256 {} but the manifest pins {}: the repository holds a different file; pass --weights to use your own copy",
            meta.etag,
            f.sha256
        );
    }
    Ok(())
}

/// Downloads into `blobs/<sha256>` (resuming `blobs/<sha256>.incomplete`), verifying size and
/// sha256; returns the blob path. An existing blob of the right size is reused.
fn fetch_blob(
    http: &Http,
    repo_dir: &Path,
    url: &str,
    size: u64,
    f: &ManifestFile,
    via_hub: bool,
    quiet: bool,
) -> Result<PathBuf> {
    let blobs = repo_dir.join("blobs");
    fs::create_dir_all(&blobs).with_context(|| format!("cannot create {}", blobs.display()))?;
    let sha = f.sha256.to_ascii_lowercase();
    let blob = blobs.join(&sha);
    if fs::metadata(&blob).is_ok_and(|m| m.len() == size) {
        return Ok(blob);
    }
    // One writer per blob across processes; held until this function returns.
    let _lock = lock_blob(repo_dir, &sha, &f.path, quiet)?;
    if fs::metadata(&blob).is_ok_and(|m| m.len() == size) {
        return Ok(blob); // another process finished it while we waited
    }
    let partial = blobs.join(format!("{sha}.incomplete"));
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(&partial)
        .with_context(|| format!("cannot write {}", partial.display()))?;
    let mut have = file.metadata()?.len();
    if have > size {
        file.set_len(0)?;
        have = 0;
    }
    // Resuming: the bytes already on disk are part of the hash.
    let mut hasher = Sha256::new();
    if have > 0 {
        file.seek(SeekFrom::Start(0))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut left = have;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = file.read(&mut buf[..want])?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
    }

    let mut progress = Progress::bytes(&f.path, Some(size), quiet);
    progress.set_position(have);
    if have < size {
        let resp = http.get_range(url, have, via_hub)?;
        let status = resp.status();
        if have > 0 && status == 200 {
            // The server ignored the range: start over.
            file.set_len(0)?;
            hasher = Sha256::new();
            have = 0;
            progress.set_position(0);
        } else if status == 206 {
            let start = resp
                .header("Content-Range")
                .and_then(|v| v.trim().strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.trim().parse::<u64>().ok());
            if start != Some(have) {
                bail!(
                    "{url} answered the range request from byte {have} with Content-Range {:?}",
                    resp.header("Content-Range")
                );
            }
        } else if status != 200 {
            bail!("{url} answered HTTP {status}");
        }
        let mut reader = resp.into_reader();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            if crate::interrupt::requested() {
                bail!(crate::interrupt::Interrupted);
            }
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    bail!("connection lost while downloading {} after {have} of {size} bytes ({e}); run the command again to resume", f.path)
                }
            };
            if have + n as u64 > size {
                bail!("{url} sent more than the expected {size} bytes");
            }
            file.write_all(&buf[..n])
                .with_context(|| format!("cannot write {}", partial.display()))?;
            hasher.update(&buf[..n]);
            have += n as u64;
            progress.set_position(have);
        }
    }
    file.flush()?;
    drop(file);
    progress.finish();
    if have != size {
        bail!(
            "download of {} stopped at {have} of {size} bytes; run the command again to resume",
            f.path
        );
    }
    let got = hex(&hasher.finalize());
    if got != sha {
        let _ = fs::remove_file(&partial);
        bail!(
            "{} failed its sha256 check (expected {sha}, got {got}); the corrupt download was deleted, run the command again",
            f.path
        );
    }
    fs::rename(&partial, &blob)
        .with_context(|| format!("cannot move {} into place", partial.display()))?;
    Ok(blob)
}

/// An exclusive lock on `<cache>/.locks/<repo folder>/<sha256>.lock`, the lock file that
/// `huggingface_hub` uses for the same blob (an advisory `flock` on Unix, as its `filelock`
/// takes), so that two flashvsr runs, or flashvsr and a Python download, never write one
/// `.incomplete` file at once. The OS releases it when the process ends: no stale locks.
fn lock_blob(repo_dir: &Path, sha: &str, name: &str, quiet: bool) -> Result<fs::File> {
    let folder = repo_dir.file_name().unwrap_or_default();
    let dir = repo_dir
        .parent()
        .unwrap_or(repo_dir)
        .join(".locks")
        .join(folder);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(format!("{sha}.lock"));
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot create the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            if !quiet {
                eprintln!(
                    "waiting for another process that is downloading {name} (lock {})",
                    path.display()
                );
            }
            file.lock()
                .with_context(|| format!("cannot lock {}", path.display()))?;
        }
        Err(fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
    Ok(file)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `snapshots/<commit>/<path>` → `../../blobs/<sha>` (a copy where symlinks are not possible).
fn link_snapshot(repo_dir: &Path, commit: &str, path: &str, blob: &Path) -> Result<()> {
    let dest = repo_dir.join("snapshots").join(commit).join(path);
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    if fs::symlink_metadata(&dest).is_ok() {
        fs::remove_file(&dest).with_context(|| format!("cannot replace {}", dest.display()))?;
    }
    let depth = path.split('/').count() + 1; // snapshots/<commit>/<path...>
    let blob_name = blob
        .file_name()
        .ok_or_else(|| anyhow!("blob path without a name"))?;
    let target: PathBuf = std::iter::repeat_n("..", depth)
        .collect::<PathBuf>()
        .join("blobs")
        .join(blob_name);
    #[cfg(unix)]
    let linked = std::os::unix::fs::symlink(&target, &dest);
    #[cfg(not(unix))]
    let linked: std::io::Result<()> = Err(std::io::Error::other("no symlinks"));
    if linked.is_err() {
        fs::copy(blob, &dest).with_context(|| format!("cannot write {}", dest.display()))?;
    }
    Ok(())
}

fn write_ref(repo_dir: &Path, revision: &str, commit: &str) -> Result<()> {
    let path = repo_dir.join("refs").join(revision);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(&path, commit).with_context(|| format!("cannot write {}", path.display()))
}

/// The two HTTP clients: one that never follows redirects (metadata), one that does (bytes).
struct Http {
    manual: ureq::Agent,
    follow: ureq::Agent,
    endpoint: String,
    token: Option<String>,
}

impl Http {
    fn new(cfg: &HubConfig) -> Result<Http> {
        let ua = format!("flashvsr/{}", env!("CARGO_PKG_VERSION"));
        let builder = || {
            ureq::AgentBuilder::new()
                .user_agent(&ua)
                .timeout_connect(Duration::from_secs(30))
                .timeout_read(Duration::from_secs(120))
        };
        Ok(Http {
            manual: builder().redirects(0).build(),
            follow: builder().redirects(8).build(),
            endpoint: cfg.endpoint.clone(),
            token: cfg.token.clone(),
        })
    }

    fn authorise(&self, req: ureq::Request, url: &str) -> ureq::Request {
        match &self.token {
            Some(t) if url.starts_with(&self.endpoint) => {
                req.set("Authorization", &format!("Bearer {t}"))
            }
            _ => req,
        }
    }

    /// HEAD with manual redirects: relative ones are followed, the first absolute one (the CDN)
    /// stops the loop and carries the file's metadata.
    fn metadata(&self, url: &str) -> Result<FileMeta> {
        let mut current = url.to_string();
        for _ in 0..10 {
            let req = self.authorise(
                self.manual
                    .head(&current)
                    .set("Accept-Encoding", "identity"),
                &current,
            );
            let resp = match req.call() {
                Ok(r) => r,
                Err(ureq::Error::Status(code, r)) => return Err(hub_error(code, &r, &current)),
                Err(e) => return Err(transport_error(&self.endpoint, e)),
            };
            let status = resp.status();
            let location = resp.header("Location").map(str::to_string);
            if (300..400).contains(&status) {
                let loc = location
                    .clone()
                    .ok_or_else(|| anyhow!("{current}: redirect without a Location"))?;
                if loc.starts_with('/') {
                    current = format!("{}{}", origin(&current), loc);
                    continue;
                }
            }
            let commit = resp
                .header("X-Repo-Commit")
                .map(str::to_string)
                .ok_or_else(|| anyhow!("{current}: the server did not send X-Repo-Commit; is HF_ENDPOINT a Hugging Face endpoint?"))?;
            let etag = resp
                .header("X-Linked-Etag")
                .or_else(|| resp.header("ETag"))
                .map(|e| {
                    e.trim()
                        .trim_start_matches("W/")
                        .trim_matches('"')
                        .to_string()
                })
                .ok_or_else(|| anyhow!("{current}: the server sent no ETag"))?;
            let size = resp
                .header("X-Linked-Size")
                .or_else(|| {
                    if (300..400).contains(&status) {
                        None
                    } else {
                        resp.header("Content-Length")
                    }
                })
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| anyhow!("{current}: the server sent no file size"))?;
            let location = if (300..400).contains(&status) {
                location.unwrap_or(current.clone())
            } else {
                current.clone()
            };
            return Ok(FileMeta {
                commit,
                etag,
                size,
                location,
            });
        }
        bail!("{url}: too many redirects")
    }

    /// GET from byte `start` (a plain GET when 0), following redirects.
    fn get_range(&self, url: &str, start: u64, authorise: bool) -> Result<ureq::Response> {
        let mut req = self.follow.get(url).set("Accept-Encoding", "identity");
        if start > 0 {
            req = req.set("Range", &format!("bytes={start}-"));
        }
        if authorise {
            req = self.authorise(req, url);
        }
        match req.call() {
            Ok(r) => Ok(r),
            Err(ureq::Error::Status(code, r)) => Err(hub_error(code, &r, url)),
            Err(e) => Err(transport_error(url, e)),
        }
    }
}

fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

fn hub_error(code: u16, resp: &ureq::Response, url: &str) -> anyhow::Error {
    let kind = resp.header("X-Error-Code").unwrap_or("");
    let msg = resp.header("X-Error-Message").unwrap_or("");
    let hint = match (code, kind) {
        (_, "GatedRepo") | (401, _) | (403, _) => "the repository needs a login: set HF_TOKEN",
        (_, "RepoNotFound") => "repository not found: check the repository name",
        (_, "RevisionNotFound") => "revision not found: check the manifest revision",
        (_, "EntryNotFound") | (404, _) => "file not found in the repository",
        _ => "the server refused the request",
    };
    let detail = if msg.is_empty() {
        String::new()
    } else {
        format!(" ({msg})")
    };
    anyhow!("{url} answered HTTP {code}{detail}: {hint}")
}

fn transport_error(what: &str, e: ureq::Error) -> anyhow::Error {
    anyhow!(
        "cannot reach {what} ({e}); check the network, set HF_ENDPOINT to a mirror, or download the weights yourself and pass --weights DIR"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_lock_is_exclusive_across_handles_and_where_huggingface_hub_puts_it() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("hub").join("models--a--b");
        std::fs::create_dir_all(&repo).unwrap();
        let first = lock_blob(&repo, "abc", "x.bin", true).unwrap();
        assert!(tmp
            .path()
            .join("hub/.locks/models--a--b/abc.lock")
            .is_file());
        let (tx, rx) = std::sync::mpsc::channel();
        let repo2 = repo.clone();
        let waiter = std::thread::spawn(move || {
            let _second = lock_blob(&repo2, "abc", "x.bin", true).unwrap();
            tx.send(()).unwrap();
        });
        // The second lock cannot be taken while the first is held...
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(300))
            .is_err());
        drop(first);
        // ...and is taken once it is released.
        rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        waiter.join().unwrap();
    }

    #[test]
    fn url_parts() {
        assert_eq!(percent_encode("refs/pr/5", false), "refs%2Fpr%2F5");
        assert_eq!(percent_encode("a b/c.ckpt", true), "a%20b/c.ckpt");
        assert_eq!(
            origin("http://127.0.0.1:8080/x/y?z"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            repo_cache_dir(Path::new("/c"), "A/B-v1.1"),
            PathBuf::from("/c/models--A--B-v1.1")
        );
    }
}
