//! Encoding through `ffmpeg -f rawvideo -pix_fmt rgb24 -i pipe:0 [-i source] ... TMPFILE`.
//!
//! The output is written to a hidden temporary file next to the target (same extension, so ffmpeg
//! picks the same muxer) and renamed onto the target only when ffmpeg succeeded. `abort()` or
//! dropping the sink without `finish()` kills ffmpeg and deletes the temporary file.
//!
//! What goes in (encoder, pixel format, each audio and subtitle stream of the source) is decided
//! by [`super::plan`]: audio is copied unless the container cannot hold its codec, subtitles are
//! copied, converted to the container's text format or dropped, global metadata and chapters are
//! copied. [`check`] runs the same command on one black frame into a hidden file, so that a
//! refused container, codec, preset or pixel format shows before any frame is computed.
//! Colour: the RGB frames are converted with the source's YCbCr matrix and range and tagged with
//! them (primaries and transfer copied when known); an untagged source gets BT.709 limited range.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ChildStdin;

use super::command::{failure_message, FfmpegChild};
use super::ffmpeg_url;
use super::plan::{default_crf, lower_ext, plan, EncodePlan};
use super::probe::{probe, Probe};
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
            return Err(VideoError::ffmpeg(
                &self.target,
                hide_temp_name(&msg, &self.tmp, &self.target),
            ));
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
                let msg = failure_message(other, &tail);
                Err(VideoError::ffmpeg(
                    &self.target,
                    hide_temp_name(&msg, &self.tmp, &self.target),
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

/// ffmpeg's messages name the hidden file it writes; users know the target.
fn hide_temp_name(msg: &str, tmp: &Path, target: &Path) -> String {
    let (tmp, target) = (tmp.to_string_lossy(), target.to_string_lossy());
    msg.replace(&format!("file:{tmp}"), &target)
        .replace(tmp.as_ref(), &target)
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

/// Builds the ffmpeg argument list (everything after the program name) for `plan`.
fn build_args(
    tmp: &Path,
    width: usize,
    height: usize,
    fps: Rational,
    source: Option<(&Path, &Probe)>,
    opts: &EncodeOptions,
    plan: &EncodePlan,
) -> Vec<String> {
    let ext = plan.ext.as_str();
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
    if source.is_some() {
        for (k, (stream, enc)) in plan.audio.iter().enumerate() {
            a.extend(["-map".into(), format!("1:{}", stream.index)]);
            a.extend([format!("-c:a:{k}"), enc.unwrap_or("copy").into()]);
        }
        for (k, (stream, enc)) in plan.subtitles.iter().enumerate() {
            a.extend(["-map".into(), format!("1:{}", stream.index)]);
            a.extend([format!("-c:s:{k}"), enc.unwrap_or("copy").into()]);
        }
        a.extend(["-map_metadata", "1", "-map_chapters", "1"].map(String::from));
    }

    let pix_fmt = plan.pix_fmt.clone();
    if let Some(codec) = &plan.codec {
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
    if matches!(ext, "mp4" | "m4v" | "mov") {
        a.extend(["-movflags".into(), "+faststart".into()]);
    }
    a.push(ffmpeg_url(tmp, true).to_string_lossy().into_owned());
    a
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
    let source = probed.as_ref().map(|(p, pr)| (*p, pr));
    let plan = plan(target, width, height, source.map(|(_, p)| p), opts)?;
    for note in &plan.notes {
        tracing::info!("{}: {note}", target.display());
    }
    let tmp = temp_sibling(target, true);
    let args = build_args(&tmp, width, height, fps, source, opts, &plan);
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

/// The largest frame the one-frame test encode feeds (bigger sizes skip it: their memory is
/// the size checks' business, not a test encode's).
const CHECK_MAX_PIXELS: usize = 1 << 27;

/// The checks of an ffmpeg output that need no frames: the target, the plan, and one black frame
/// through exactly the command the sink will run (with the source's streams cut to one frame's
/// duration) into a hidden file beside the target, removed afterwards. Errors name the target,
/// never the hidden file.
pub(crate) fn check(
    target: &Path,
    width: usize,
    height: usize,
    fps: Rational,
    source: Option<&InputSpec>,
    opts: &EncodeOptions,
) -> Result<EncodePlan, VideoError> {
    super::require_ffmpeg()?;
    check_output_target(target, opts.overwrite)?;
    let ext = lower_ext(target);
    if ext.is_empty() {
        let name = target.to_string_lossy();
        return Err(VideoError::format(
            target,
            format!(
                "no file extension to choose a container from: name a video file \
                 (e.g. {name}.mp4), or end a folder name with / ({name}/) for PNG frames"
            ),
        ));
    }
    let probed = match source {
        Some(InputSpec::File(src)) => Some((src.as_path(), probe(src)?)),
        _ => None,
    };
    let source = probed.as_ref().map(|(p, pr)| (*p, pr));
    let plan = plan(target, width, height, source.map(|(_, p)| p), opts)?;
    if width.saturating_mul(height) > CHECK_MAX_PIXELS {
        return Ok(plan);
    }
    let one_frame = EncodeOptions {
        source_duration_s: Some(1.0 / fps.as_f64().max(1e-3)),
        ..opts.clone()
    };
    let tmp = temp_sibling(target, true);
    let args = build_args(&tmp, width, height, fps, source, &one_frame, &plan);
    let result = (|| {
        let (mut ffmpeg, mut stdin) = FfmpegChild::spawn_encoder(&args, target)?;
        // A write error means ffmpeg already gave up; its status and stderr say why.
        let _ = stdin.write_all(&RgbFrame::new(width, height).data);
        drop(stdin);
        match ffmpeg.reap(false) {
            (Some(s), _) if s.success() => Ok(()),
            (status, tail) => Err(explain_refusal(status, &tail, &plan, &tmp, target)),
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    result.map(|()| plan)
}

/// The error of a refused test encode, in the user's terms where ffmpeg's are known.
fn explain_refusal(
    status: Option<std::process::ExitStatus>,
    tail: &[String],
    plan: &EncodePlan,
    tmp: &Path,
    target: &Path,
) -> VideoError {
    let text = tail.join(" | ");
    let msg = if text.contains("Unable to find a suitable output format") {
        format!(
            "ffmpeg knows no container for .{} (try .mp4, .mkv, .mov, .webm, a .y4m file or a \
             folder/ of PNG frames)",
            plan.ext
        )
    } else if let Some(enc) = text
        .split("Unknown encoder '")
        .nth(1)
        .and_then(|r| r.split('\'').next())
    {
        format!("ffmpeg has no encoder {enc} (`ffmpeg -encoders` lists those it has)")
    } else {
        let codec = plan.codec.as_deref().unwrap_or("the default encoder");
        format!(
            "a one-frame test encode ({codec}, {}, .{}) was refused, so nothing was upscaled: {}",
            plan.pix_fmt,
            plan.ext,
            failure_message(status, tail)
        )
    };
    VideoError::ffmpeg(target, hide_temp_name(&msg, tmp, target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_are_hidden() {
        let msg = "[NULL @ 0x1] Unable to find a suitable output format for 'file:d/.o.partial-1-0.xyz' | d/.o.partial-1-0.xyz: Invalid argument";
        assert_eq!(
            hide_temp_name(msg, Path::new("d/.o.partial-1-0.xyz"), Path::new("d/o.xyz")),
            "[NULL @ 0x1] Unable to find a suitable output format for 'd/o.xyz' | d/o.xyz: Invalid argument"
        );
    }
}
