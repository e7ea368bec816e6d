//! Stale partial outputs. Outputs are written under hidden names next to their target and moved
//! into place at the end (the video crate's `.NAME.partial-PID-N[.EXT]` for files and
//! `.NAME.EXT.partial-PID-N` for folders, `synth`'s `.FILE.partial-PID-0`, the loader's
//! `.FILE.tmp-PID` of `convert` and `synth-weights`); a clean stop removes
//! them, but a run that is killed outright (SIGKILL, a second Ctrl-C, a crash, power loss)
//! cannot. The next run into the same folder removes those whose process is gone.
//!
//! Only names of exactly that shape are touched, and only when no process with that id runs
//! (checked in /proc; elsewhere nothing is removed).

use std::path::{Path, PathBuf};

/// The id of the process that owns a partial output named `name`, if it is one of ours.
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    // The loader's `.FILE.tmp-PID` (flashvsr_loader::fsutil::write_atomic).
    if let Some(at) = rest.rfind(".tmp-") {
        let pid = &rest[at + ".tmp-".len()..];
        return (at > 0 && digits(pid)).then(|| pid.parse().ok()).flatten();
    }
    let at = rest.rfind(".partial-")?;
    if at == 0 {
        return None; // no target name before the marker
    }
    let (pid, tail) = rest[at + ".partial-".len()..].split_once('-')?;
    let (counter, ext) = match tail.split_once('.') {
        Some((c, e)) => (c, Some(e)),
        None => (tail, None),
    };
    if !digits(pid) || !digits(counter) || ext.is_some_and(|e| e.is_empty() || e.contains('.')) {
        return None;
    }
    pid.parse().ok()
}

/// Whether process `pid` runs now. Where that cannot be told, every process counts as running.
fn is_running(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    if cfg!(target_os = "linux") && Path::new("/proc/self").exists() {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

/// Removes the partial outputs of processes that no longer run from `dir`; returns what was
/// removed.
pub fn remove_stale(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = owner_pid(&name.to_string_lossy()) else {
            continue;
        };
        if is_running(pid) {
            continue;
        }
        let path = entry.path();
        // Not following links: a link named like a partial is removed, never its target.
        let gone = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path).is_ok(),
            Ok(_) => std::fs::remove_file(&path).is_ok(),
            Err(_) => false,
        };
        if gone {
            removed.push(path);
        }
    }
    removed.sort();
    removed
}

/// [`remove_stale`] in the folder that holds `target`, saying what it removed unless quiet.
pub fn clean_next_to(target: &Path, quiet: bool) {
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    clean_in(&dir, quiet);
}

/// [`remove_stale`] in `dir`, saying what it removed unless quiet.
pub fn clean_in(dir: &Path, quiet: bool) {
    let removed = remove_stale(dir);
    if !quiet && !removed.is_empty() {
        let names: Vec<String> = removed
            .iter()
            .filter_map(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        eprintln!(
            "note: removed {} left by interrupted runs in {}: {}",
            if removed.len() == 1 {
                "1 partial output".to_string()
            } else {
                format!("{} partial outputs", removed.len())
            },
            dir.display(),
            names.join(", ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_partial_names_and_nothing_else() {
        assert_eq!(owner_pid(".out.partial-123-0.mp4"), Some(123));
        assert_eq!(owner_pid(".out.partial-123-17"), Some(123));
        assert_eq!(owner_pid(".frames.d.partial-9-2"), Some(9));
        assert_eq!(owner_pid(".my.clip.partial-4242-1.mkv"), Some(4242));
        assert_eq!(owner_pid(".LQ_proj_in.ckpt.partial-77-0"), Some(77));
        assert_eq!(owner_pid(".dit-q8_0.gguf.tmp-314"), Some(314));
        for not_ours in [
            "out.partial-123-0.mp4",
            ".partial-123-0.mp4",
            ".out.partial-123.mp4",
            ".out.partial-x-0.mp4",
            ".out.partial-123-0x",
            ".out.partial-123-0.",
            ".out.partial-123-0.tar.gz",
            ".out.partial",
            ".tmp-12",
            ".a.gguf.tmp-12x",
            ".a.gguf.tmp-",
            "a.gguf.tmp-12",
            "notes.txt",
        ] {
            assert_eq!(owner_pid(not_ours), None, "{not_ours}");
        }
    }

    #[test]
    fn only_dead_owners_partials_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dead = u32::MAX - 1; // above any pid_max
        let me = std::process::id();
        let names = [
            format!(".a.partial-{dead}-0.mp4"),
            format!(".b.partial-{me}-0.mp4"),
            "keep.mp4".to_string(),
            format!("a.partial-{dead}-0.mp4"),
            format!(".c.gguf.tmp-{dead}"),
        ];
        for n in &names {
            std::fs::write(tmp.path().join(n), b"x").unwrap();
        }
        let folder = tmp.path().join(format!(".frames.partial-{dead}-3"));
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("frame_000000.png"), b"x").unwrap();
        let removed = remove_stale(tmp.path());
        if !cfg!(target_os = "linux") {
            assert!(removed.is_empty());
            return;
        }
        assert_eq!(
            removed,
            vec![
                tmp.path().join(&names[0]),
                tmp.path().join(&names[4]),
                folder.clone()
            ]
        );
        for n in &names[1..4] {
            assert!(tmp.path().join(n).exists(), "{n} was removed");
        }
        assert!(!folder.exists());
    }
}
