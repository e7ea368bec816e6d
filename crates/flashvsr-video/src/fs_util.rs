//! "Nothing half-written": outputs are produced under a hidden temporary name next to the target
//! and moved onto it only when complete.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::VideoError;

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// `dir/.name.partial-PID-N.ext` next to `target`, keeping the extension so that tools that pick a
/// format from the name (ffmpeg's muxer) still do. With `keep_ext = false` there is no extension
/// (used for folders).
pub(crate) fn temp_sibling(target: &Path, keep_ext: bool) -> PathBuf {
    let dir = parent_dir(target);
    let stem = target
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = format!(".{stem}.partial-{}-{n}", std::process::id());
    if keep_ext {
        if let Some(ext) = target.extension() {
            name.push('.');
            name.push_str(&ext.to_string_lossy());
        }
    } else if let Some(ext) = target.extension() {
        // Folders: keep the whole name visible, no extension semantics.
        name = format!(
            ".{stem}.{}.partial-{}-{n}",
            ext.to_string_lossy(),
            std::process::id()
        );
    }
    dir.join(name)
}

/// The folder that holds `path` (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Refuses an existing output unless `overwrite`; checks the folder it goes into exists.
pub(crate) fn check_output_target(target: &Path, overwrite: bool) -> Result<(), VideoError> {
    if target.exists() && !overwrite {
        return Err(VideoError::OutputExists {
            path: target.to_path_buf(),
        });
    }
    let dir = parent_dir(target);
    if !dir.is_dir() {
        return Err(VideoError::io(
            target,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("output folder {} does not exist", dir.display()),
            ),
        ));
    }
    Ok(())
}

/// Moves the finished temporary file onto `target`. Without `overwrite` an output that appeared in
/// the meantime is not replaced (hard link + unlink, which fails on an existing name). The
/// temporary file is removed in every case.
pub(crate) fn commit_file(tmp: &Path, target: &Path, overwrite: bool) -> Result<(), VideoError> {
    let result = if overwrite {
        std::fs::rename(tmp, target).map_err(|e| VideoError::io(target, e))
    } else {
        match std::fs::hard_link(tmp, target) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(VideoError::OutputExists {
                    path: target.to_path_buf(),
                })
            }
            // Filesystems without hard links: check, then rename.
            Err(_) if target.exists() => Err(VideoError::OutputExists {
                path: target.to_path_buf(),
            }),
            Err(_) => std::fs::rename(tmp, target).map_err(|e| VideoError::io(target, e)),
        }
    };
    let _ = std::fs::remove_file(tmp);
    result
}
