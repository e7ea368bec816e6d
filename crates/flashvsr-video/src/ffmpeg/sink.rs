//! Encoding through `ffmpeg -f rawvideo -pix_fmt rgb24 -i pipe:0 [-i source] ... TMPFILE`.
//!
//! The output is written to a hidden temporary file next to the target (same extension, so ffmpeg
//! picks the same muxer) and renamed onto the target only when ffmpeg succeeded. `abort()` or
//! dropping the sink without `finish()` kills ffmpeg and deletes the temporary file.
//!
//! From the source file (when given): every audio stream is copied (re-encoded only when the
//! container cannot hold its codec: AAC for mp4, Opus for webm), subtitles are copied, converted
//! to the container's text format (mov_text / webvtt / srt) or dropped with a warning when the container
//! cannot hold them (bitmap subtitles in mp4/webm), global metadata and chapters are copied.
//! Colour: the RGB frames are converted with the source's YCbCr matrix and range and tagged with
//! them (primaries and transfer copied when known); an untagged source gets BT.709 limited range.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ChildStdin;

use super::command::{failure_message, FfmpegChild};
use super::ffmpeg_url;
use super::probe::{probe, Probe, StreamDesc};
use crate::fs_util::{check_output_target, commit_file, temp_sibling};
use crate::threaded::ThreadedSink;
use crate::{EncodeOptions, FrameSink, InputSpec, Rational, RgbFrame, VideoError};

struct FfmpegSink {
    ffmpeg: FfmpegChild,
    stdin: Option<ChildStdin>,
    tmp: PathBuf,
    target: PathBuf,
    overwrite: bool,
    done: bool,
}

impl FfmpegSink {
    fn reap(&mut self, kill: bool) -> (Option<std::process::ExitStatus>, Vec<String>) {
        self.stdin = None; // EOF for ffmpeg
        self.ffmpeg.reap(kill)
    }

    fn discard(&mut self) {
        if !self.done {
            self.done = true;
            self.reap(true);
        }
        let _ = std::fs::remove_file(&self.tmp);
    }
}

impl FrameSink for FfmpegSink {
    fn write_frame(&mut self, frame: &RgbFrame) -> Result<(), VideoError> {
        let Some(stdin) = self.stdin.as_mut() else {
            return Err(VideoError::format(&self.target, "sink already closed"));
        };
        if let Err(e) = stdin.write_all(&frame.data) {
            // ffmpeg went away; its stderr says why.
            self.done = true;
            let (status, tail) = self.reap(true);
            let _ = std::fs::remove_file(&self.tmp);
            let msg = if tail.is_empty() {
                format!("{e}")
            } else {
                failure_message(status, &tail)
            };
            return Err(VideoError::ffmpeg(&self.target, msg));
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<(), VideoError> {
        self.done = true;
        let (status, tail) = self.reap(false);
        match status {
            Some(s) if s.success() => commit_file(&self.tmp, &self.target, self.overwrite),
            other => {
                let _ = std::fs::remove_file(&self.tmp);
                Err(VideoError::ffmpeg(
                    &self.target,
                    failure_message(other, &tail),
                ))
            }
        }
    }

    fn abort(mut self: Box<Self>) {
        self.discard();
    }
}

impl Drop for FfmpegSink {
    fn drop(&mut self) {
        if !self.done {
            self.discard();
        }
    }
}

fn lower_ext(path: &Path) -> String {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
}

fn default_codec(ext: &str) -> Option<&'static str> {
    match ext {
        "mp4" | "m4v" | "mov" | "mkv" | "avi" | "ts" | "flv" => Some("libx264"),
        "webm" => Some("libvpx-vp9"),
        _ => None,
    }
}

fn default_crf(codec: &str) -> Option<u32> {
    match codec {
        "libx264" | "libx264rgb" => Some(18),
        "libx265" => Some(20),
        "libvpx-vp9" | "libsvtav1" | "libaom-av1" => Some(30),
        _ => None,
    }
}

/// How one source audio stream goes into the container: `None` = copy, `Some(enc)` = re-encode.
fn audio_plan(ext: &str, codec: &str) -> Option<&'static str> {
    match ext {
        "mp4" | "m4v" => (!matches!(
            codec,
            "aac" | "mp3" | "ac3" | "eac3" | "opus" | "flac" | "alac" | "mp2"
        ))
        .then_some("aac"),
        "mov" => matches!(codec, "opus" | "vorbis" | "flac").then_some("aac"),
        "webm" => (!matches!(codec, "opus" | "vorbis")).then_some("libopus"),
        _ => None,
    }
}

/// Subtitle handling per container: `Ok(None)` copy, `Ok(Some(enc))` convert, `Err(())` drop.
fn subtitle_plan(ext: &str, codec: &str) -> Result<Option<&'static str>, ()> {
    let text = matches!(
        codec,
        "subrip" | "srt" | "ass" | "ssa" | "webvtt" | "mov_text" | "text"
    );
    match ext {
        // Matroska holds nearly everything, but not mov_text (ffmpeg 5.1 refuses it): use SubRip.
        "mkv" | "mka" if codec == "mov_text" => Ok(Some("srt")),
        "mkv" | "mka" => Ok(None),
        "mp4" | "m4v" | "mov" if codec == "mov_text" => Ok(None),
        "mp4" | "m4v" | "mov" if text => Ok(Some("mov_text")),
        "webm" if codec == "webvtt" => Ok(None),
        "webm" if text => Ok(Some("webvtt")),
        _ => Err(()),
    }
}

/// ffprobe colour-space names to the scale filter's `out_color_matrix` names.
fn scale_matrix(color_space: &str) -> Option<&'static str> {
    match color_space {
        "bt709" => Some("bt709"),
        "bt470bg" => Some("bt470"),
        "smpte170m" => Some("smpte170m"),
        "fcc" => Some("fcc"),
        "smpte240m" => Some("smpte240m"),
        "bt2020nc" | "bt2020c" => Some("bt2020"),
        _ => None,
    }
}

fn pix_fmt_is_yuv(pix_fmt: &str) -> bool {
    pix_fmt.starts_with("yuv") || pix_fmt.starts_with("nv") || pix_fmt.starts_with("p01")
}

/// Builds the ffmpeg argument list (everything after the program name).
fn build_args(
    tmp: &Path,
    target: &Path,
    width: usize,
    height: usize,
    fps: Rational,
    source: Option<(&Path, &Probe)>,
    opts: &EncodeOptions,
) -> Result<Vec<String>, VideoError> {
    let ext = lower_ext(target);
    let mut a: Vec<String> = ["-nostdin", "-hide_banner", "-v", "error", "-y"]
        .map(String::from)
        .to_vec();
    a.extend(["-f", "rawvideo", "-pix_fmt", "rgb24"].map(String::from));
    a.extend([
        "-s".into(),
        format!("{width}x{height}"),
        "-framerate".into(),
        fps.to_string(),
        "-i".into(),
        "pipe:0".into(),
    ]);
    // Inputs first (options before the file they belong to), then the output mapping.
    if let Some((src, _)) = source {
        if let Some(start) = opts.source_start_s.filter(|s| *s > 0.0) {
            a.extend(["-ss".into(), format!("{start:.6}")]);
        }
        if let Some(dur) = opts.source_duration_s.filter(|d| *d > 0.0) {
            a.extend(["-t".into(), format!("{dur:.6}")]);
        }
        a.extend([
            "-i".into(),
            ffmpeg_url(src, false).to_string_lossy().into_owned(),
        ]);
    }
    a.extend(["-map".into(), "0:v:0".into()]);
    if let Some((_, probed)) = source {
        for (k, StreamDesc { index, codec }) in probed.audio.iter().enumerate() {
            a.extend(["-map".into(), format!("1:{index}")]);
            let enc = audio_plan(&ext, codec);
            if let Some(enc) = enc {
                tracing::warn!("{}: audio stream {index} ({codec}) does not fit .{ext}; re-encoding it with {enc}", target.display());
            }
            a.extend([format!("-c:a:{k}"), enc.unwrap_or("copy").into()]);
        }
        let mut kept = 0;
        for StreamDesc { index, codec } in &probed.subtitles {
            match subtitle_plan(&ext, codec) {
                Ok(enc) => {
                    a.extend(["-map".into(), format!("1:{index}")]);
                    a.extend([format!("-c:s:{kept}"), enc.unwrap_or("copy").into()]);
                    kept += 1;
                }
                Err(()) => tracing::warn!(
                    "{}: subtitle stream {index} ({codec}) cannot be stored in .{ext}; dropping it",
                    target.display()
                ),
            }
        }
        a.extend(["-map_metadata", "1", "-map_chapters", "1"].map(String::from));
    }

    let codec = opts
        .codec
        .clone()
        .or_else(|| default_codec(&ext).map(String::from));
    let pix_fmt = opts.pix_fmt.clone().unwrap_or_else(|| "yuv420p".into());
    let subsampled = pix_fmt.starts_with("yuv420")
        || pix_fmt.starts_with("yuv422")
        || pix_fmt.starts_with("nv")
        || pix_fmt.starts_with("p01");
    if subsampled
        && (!width.is_multiple_of(2)
            || (!height.is_multiple_of(2) && !pix_fmt.starts_with("yuv422")))
    {
        return Err(VideoError::format(
            target,
            format!(
                "{width}x{height} cannot be encoded as {pix_fmt} (odd size); use pix_fmt yuv444p"
            ),
        ));
    }
    if let Some(codec) = &codec {
        a.extend(["-c:v".into(), codec.clone()]);
        if let Some(crf) = opts.crf.or_else(|| default_crf(codec)) {
            a.extend(["-crf".into(), crf.to_string()]);
            if matches!(codec.as_str(), "libvpx-vp9" | "libaom-av1") {
                a.extend(["-b:v".into(), "0".into()]);
            }
        }
    } else if let Some(crf) = opts.crf {
        a.extend(["-crf".into(), crf.to_string()]);
    }
    if let Some(preset) = &opts.preset {
        a.extend(["-preset".into(), preset.clone()]);
    }

    if pix_fmt_is_yuv(&pix_fmt) {
        let src_color = source
            .map(|(_, p)| p.info.color.clone())
            .unwrap_or_default();
        let (matrix_tag, matrix) = match src_color
            .matrix
            .as_deref()
            .and_then(|m| scale_matrix(m).map(|s| (m, s)))
        {
            Some((tag, m)) => (tag.to_string(), m),
            None => ("bt709".to_string(), "bt709"),
        };
        let range = match src_color.range.as_deref() {
            Some("pc") => "pc",
            _ => "tv",
        };
        let scale_range = if range == "pc" { "full" } else { "limited" };
        a.extend([
            "-vf".into(),
            format!("scale=out_color_matrix={matrix}:out_range={scale_range}:flags=bicubic+accurate_rnd+full_chroma_int"),
        ]);
        a.extend([
            "-colorspace".into(),
            matrix_tag,
            "-color_range".into(),
            range.into(),
        ]);
        if let Some(p) = src_color.primaries {
            a.extend(["-color_primaries".into(), p]);
        }
        if let Some(t) = src_color.transfer {
            a.extend(["-color_trc".into(), t]);
        }
    }
    a.extend(["-pix_fmt".into(), pix_fmt]);
    if matches!(ext.as_str(), "mp4" | "m4v" | "mov") {
        a.extend(["-movflags".into(), "+faststart".into()]);
    }
    a.push(ffmpeg_url(tmp, true).to_string_lossy().into_owned());
    Ok(a)
}

/// Starts ffmpeg writing `target` and wraps it in a writer thread.
pub(crate) fn open(
    target: &Path,
    width: usize,
    height: usize,
    fps: Rational,
    source: Option<&InputSpec>,
    opts: &EncodeOptions,
) -> Result<Box<dyn FrameSink>, VideoError> {
    super::require_ffmpeg()?;
    check_output_target(target, opts.overwrite)?;
    let probed = match source {
        Some(InputSpec::File(src)) => Some((src.as_path(), probe(src)?)),
        _ => None,
    };
    let tmp = temp_sibling(target, true);
    let args = build_args(
        &tmp,
        target,
        width,
        height,
        fps,
        probed.as_ref().map(|(p, pr)| (*p, pr)),
        opts,
    )?;
    tracing::debug!("ffmpeg {}", args.join(" "));
    let (ffmpeg, stdin) = FfmpegChild::spawn_encoder(&args, target)?;
    let cancel = ffmpeg.canceller();
    let sink = FfmpegSink {
        ffmpeg,
        stdin: Some(stdin),
        tmp,
        target: target.to_path_buf(),
        overwrite: opts.overwrite,
        done: false,
    };
    let queue = if opts.queue_frames == 0 {
        4
    } else {
        opts.queue_frames
    };
    Ok(Box::new(ThreadedSink::spawn(
        Box::new(sink),
        width,
        height,
        queue,
        target.to_path_buf(),
        Some(cancel),
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtitle_and_audio_plans() {
        assert_eq!(subtitle_plan("mkv", "hdmv_pgs_subtitle"), Ok(None));
        assert_eq!(subtitle_plan("mkv", "mov_text"), Ok(Some("srt")));
        assert_eq!(subtitle_plan("mp4", "subrip"), Ok(Some("mov_text")));
        assert_eq!(subtitle_plan("webm", "mov_text"), Ok(Some("webvtt")));
        assert_eq!(subtitle_plan("webm", "dvd_subtitle"), Err(()));
        assert_eq!(audio_plan("mp4", "aac"), None);
        assert_eq!(audio_plan("mp4", "pcm_s16le"), Some("aac"));
        assert_eq!(audio_plan("webm", "aac"), Some("libopus"));
        assert_eq!(audio_plan("mkv", "pcm_s16le"), None);
    }

    #[test]
    fn odd_size_420_is_refused() {
        let err = build_args(
            Path::new(".t.mp4"),
            Path::new("o.mp4"),
            5,
            4,
            Rational::new(24, 1),
            None,
            &EncodeOptions::default(),
        );
        assert!(err.unwrap_err().to_string().contains("odd size"));
    }
}
