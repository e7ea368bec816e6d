//! Decoding through `ffmpeg ... -f rawvideo -pix_fmt rgb24 pipe:1`, one frame per read.
//!
//! * Rotation: ffmpeg's default auto-rotation is kept, so frames arrive upright and
//!   `VideoInfo::width/height` are the upright size; the output is written upright and untagged.
//! * Variable frame rate: frames are passed exactly as decoded (`-fps_mode passthrough`: nothing
//!   duplicated or dropped) and `VideoInfo::fps` is the average rate, so an encoded result is
//!   constant frame rate at the average rate with the same frame count and about the same duration.
//! * Colour: ffmpeg converts to RGB with the file's own matrix and range (BT.601 when untagged).
//! * Anamorphic video (non-square pixels) is delivered at its stored size, not stretched.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ChildStdout;

use super::command::{failure_message, FfmpegChild};
use super::ffmpeg_url;
use super::probe::{info_for_range, probe};
use crate::threaded::ThreadedSource;
use crate::{FrameSource, RgbFrame, SourceOptions, VideoError, VideoInfo};

struct FfmpegSource {
    ffmpeg: FfmpegChild,
    stdout: ChildStdout,
    info: VideoInfo,
    opts: SourceOptions,
    path: PathBuf,
    next_index: u64,
    done: bool,
    scratch: Vec<u8>,
}

impl FfmpegSource {
    /// Reads one frame into `buf`; `false` on a clean end of stream.
    fn read_frame_bytes(&mut self, buf: &mut [u8]) -> Result<bool, VideoError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.stdout.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(VideoError::io(&self.path, e)),
            }
        }
        if filled == buf.len() {
            return Ok(true);
        }
        // End of stream: ffmpeg's exit status says whether it is a clean end.
        let (status, tail) = self.ffmpeg.reap(false);
        self.done = true;
        match status {
            Some(s) if s.success() && filled == 0 => Ok(false),
            Some(s) if s.success() => Err(VideoError::format(
                &self.path,
                format!(
                    "ffmpeg delivered a truncated frame {} ({filled} of {} bytes)",
                    self.next_index,
                    buf.len()
                ),
            )),
            other => Err(VideoError::ffmpeg(
                &self.path,
                failure_message(other, &tail),
            )),
        }
    }
}

impl FrameSource for FfmpegSource {
    fn info(&self) -> &VideoInfo {
        &self.info
    }

    fn next_frame(&mut self) -> Result<Option<RgbFrame>, VideoError> {
        if self.done {
            return Ok(None);
        }
        let bytes = RgbFrame::byte_len(self.info.width, self.info.height);
        while self.next_index < self.opts.start_frame {
            let mut scratch = std::mem::take(&mut self.scratch);
            scratch.resize(bytes, 0);
            let more = self.read_frame_bytes(&mut scratch);
            self.scratch = scratch;
            if !more? {
                return Ok(None);
            }
            self.next_index += 1;
        }
        if self.opts.past_end(self.next_index) {
            // Range done: stop decoding the rest of the file.
            self.ffmpeg.reap(true);
            self.done = true;
            return Ok(None);
        }
        let mut frame = RgbFrame::new(self.info.width, self.info.height);
        if !self.read_frame_bytes(&mut frame.data)? {
            return Ok(None);
        }
        self.next_index += 1;
        Ok(Some(frame))
    }
}

impl Drop for FfmpegSource {
    fn drop(&mut self) {
        if !self.done {
            self.ffmpeg.reap(true);
        }
    }
}

/// Probes `path` and starts the decoder on a reader thread.
pub(crate) fn open(path: &Path, opts: &SourceOptions) -> Result<Box<dyn FrameSource>, VideoError> {
    let probed = probe(path)?;
    let info = info_for_range(&probed.info, opts);
    let (w, h) = (info.width, info.height);
    // The explicit scale keeps every frame at the probed (upright) size even if the stream
    // changes resolution midway, so the byte stream never misaligns.
    let filter = format!("scale={w}:{h}:flags=bicubic+accurate_rnd+full_chroma_int");
    let mut args: Vec<OsString> = ["-nostdin", "-hide_banner", "-v", "error", "-i"]
        .map(OsString::from)
        .to_vec();
    args.push(ffmpeg_url(path, false));
    args.extend(
        [
            "-map",
            &format!("0:{}", probed.video_index),
            "-an",
            "-sn",
            "-dn",
            "-fps_mode",
            "passthrough",
            "-vf",
            &filter,
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "pipe:1",
        ]
        .map(OsString::from),
    );
    let (ffmpeg, stdout) = FfmpegChild::spawn_decoder(&args, path)?;
    let cancel = ffmpeg.canceller();
    let source = FfmpegSource {
        ffmpeg,
        stdout,
        info,
        opts: opts.clone(),
        path: path.to_path_buf(),
        next_index: 0,
        done: false,
        scratch: Vec::new(),
    };
    Ok(Box::new(ThreadedSource::spawn(
        Box::new(source),
        opts.queue_frames,
        path.to_path_buf(),
        Some(cancel),
    )?))
}
