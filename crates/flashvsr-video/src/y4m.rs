//! YUV4MPEG2 reader and writer (pure Rust).
//!
//! Reading: 8-bit `C420jpeg`, `C420paldv`, `C420mpeg2`, `C420`, `C422`, `C444` (no `C` tag =
//! `C420jpeg`), range from `XCOLORRANGE=FULL|LIMITED` (default limited), BT.601 matrix, see
//! [`crate::yuv`] for the exact arithmetic. Subsampled chroma is replicated (nearest neighbour).
//! High bit depth (`C420p10`, ...), `Cmono` and alpha formats are refused with a clear error.
//!
//! Writing ([`Y4mLayout::for_pix_fmt`]): `C444 XCOLORRANGE=FULL` when no pixel format is given
//! (the format of the golden fixtures, the closest to the model's RGB), otherwise ffmpeg's names:
//! `yuv420p` (`C420jpeg XCOLORRANGE=LIMITED`, what players expect, [`PLAYER_PIX_FMT`]),
//! `yuv444p` (C444 limited), `yuvj420p` / `yuvj444p` (full range); progressive, square pixels.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::yuv::{planar_to_rgb, rgb_to_planar, Subsampling, YuvRange};
use crate::{
    ColorTags, DeclaredFrames, FrameSink, FrameSource, Rational, RgbFrame, SourceOptions,
    VideoError, VideoInfo,
};

const MAGIC: &[u8] = b"YUV4MPEG2";
const FRAME_MAGIC: &[u8] = b"FRAME";
/// Longest header line accepted (real headers are < 100 bytes).
const MAX_HEADER_LINE: usize = 4096;

/// Parsed stream header.
#[derive(Debug, Clone, PartialEq)]
pub struct Y4mHeader {
    pub width: usize,
    pub height: usize,
    pub fps: Rational,
    pub subsampling: Subsampling,
    pub range: YuvRange,
    /// The `C` tag as written (`420jpeg` when absent).
    pub colorspace: String,
}

impl Y4mHeader {
    pub fn frame_bytes(&self) -> usize {
        self.subsampling.frame_bytes(self.width, self.height)
    }

    /// Parses a header line (without the trailing newline).
    pub fn parse(line: &[u8], path: &Path) -> Result<Self, VideoError> {
        let bad = |msg: String| VideoError::format(path, msg);
        let text = std::str::from_utf8(line).map_err(|_| bad("y4m header is not ASCII".into()))?;
        let mut tokens = text.split(' ').filter(|t| !t.is_empty());
        if tokens.next().map(str::as_bytes) != Some(MAGIC) {
            return Err(bad("not a y4m file (no YUV4MPEG2 signature)".into()));
        }
        let (mut width, mut height, mut fps) = (None, None, None);
        let mut colorspace = "420jpeg".to_string();
        let mut range = YuvRange::Limited;
        for token in tokens {
            let (tag, value) = token.split_at(1);
            match tag {
                "W" => {
                    width = Some(
                        value
                            .parse::<usize>()
                            .map_err(|_| bad(format!("bad y4m width `{value}`")))?,
                    )
                }
                "H" => {
                    height = Some(
                        value
                            .parse::<usize>()
                            .map_err(|_| bad(format!("bad y4m height `{value}`")))?,
                    )
                }
                "F" => {
                    fps = Some(
                        Rational::parse(value)
                            .ok_or_else(|| bad(format!("bad y4m frame rate `{value}`")))?,
                    )
                }
                "C" => colorspace = value.to_string(),
                "I" if !matches!(value, "p" | "?" | "t" | "b" | "m") => {
                    return Err(bad(format!("bad y4m interlacing `{value}`")));
                }
                "X" => {
                    if let Some(r) = value.strip_prefix("COLORRANGE=") {
                        range = match r {
                            "FULL" => YuvRange::Full,
                            "LIMITED" => YuvRange::Limited,
                            _ => return Err(bad(format!("bad y4m XCOLORRANGE `{r}`"))),
                        };
                    }
                }
                _ => {} // A (aspect) and unknown tags: ignored, as the format allows.
            }
        }
        let width = width.ok_or_else(|| bad("y4m header has no width (W)".into()))?;
        let height = height.ok_or_else(|| bad("y4m header has no height (H)".into()))?;
        if width == 0 || height == 0 || width > 1 << 16 || height > 1 << 16 {
            return Err(bad(format!("unsupported y4m frame size {width}x{height}")));
        }
        let subsampling = match colorspace.as_str() {
            "420jpeg" | "420paldv" | "420mpeg2" | "420" => Subsampling::S420,
            "422" => Subsampling::S422,
            "444" => Subsampling::S444,
            "mono" => return Err(bad("monochrome y4m (Cmono) is not supported; convert to C444 or C420".into())),
            c if c.contains('p') => {
                return Err(bad(format!(
                    "y4m with more than 8 bits (C{c}) is not supported; convert with ffmpeg -pix_fmt yuv444p"
                )))
            }
            c => return Err(bad(format!("unsupported y4m colour space C{c}"))),
        };
        Ok(Y4mHeader {
            width,
            height,
            fps: fps.unwrap_or(Rational::new(25, 1)),
            subsampling,
            range,
            colorspace,
        })
    }

    /// The layout in ffmpeg's pixel format names (`yuv420p`, `yuvj444p`, ...).
    pub fn pix_fmt(&self) -> &'static str {
        let full = self.range == YuvRange::Full;
        match (self.subsampling, full) {
            (Subsampling::S444, false) => "yuv444p",
            (Subsampling::S444, true) => "yuvj444p",
            (Subsampling::S422, false) => "yuv422p",
            (Subsampling::S422, true) => "yuvj422p",
            (_, false) => "yuv420p",
            (_, true) => "yuvj420p",
        }
    }

    /// The header line, newline included.
    fn to_line(&self) -> String {
        let range = match self.range {
            YuvRange::Full => "FULL",
            YuvRange::Limited => "LIMITED",
        };
        format!(
            "YUV4MPEG2 W{} H{} F{}:{} Ip A1:1 C{} XCOLORRANGE={range}\n",
            self.width, self.height, self.fps.num, self.fps.den, self.colorspace
        )
    }
}

/// Reads one `\n`-terminated line. `Ok(None)` on a clean end of file before any byte.
fn read_line<R: Read>(r: &mut R, path: &Path, what: &str) -> Result<Option<Vec<u8>>, VideoError> {
    let mut line = Vec::with_capacity(64);
    let mut byte = [0u8; 1];
    loop {
        match r.read(&mut byte) {
            Ok(0) if line.is_empty() => return Ok(None),
            Ok(0) => return Err(VideoError::format(path, format!("truncated y4m {what}"))),
            Ok(_) if byte[0] == b'\n' => return Ok(Some(line)),
            Ok(_) => {
                line.push(byte[0]);
                if line.len() > MAX_HEADER_LINE {
                    return Err(VideoError::format(
                        path,
                        format!("y4m {what} line too long (corrupt file?)"),
                    ));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(VideoError::io(path, e)),
        }
    }
}

/// Streaming y4m reader over any byte source.
pub struct Y4mReader<R: Read> {
    reader: R,
    header: Y4mHeader,
    path: PathBuf,
    planes: Vec<u8>,
    frames_read: u64,
}

impl<R: Read> Y4mReader<R> {
    /// Reads and checks the stream header. `path` is only used in error messages.
    pub fn new(mut reader: R, path: impl Into<PathBuf>) -> Result<Self, VideoError> {
        let path = path.into();
        let line = read_line(&mut reader, &path, "header")?
            .ok_or_else(|| VideoError::format(&path, "empty file, expected a y4m header"))?;
        let header = Y4mHeader::parse(&line, &path)?;
        Ok(Y4mReader {
            reader,
            header,
            path,
            planes: Vec::new(),
            frames_read: 0,
        })
    }

    pub fn header(&self) -> &Y4mHeader {
        &self.header
    }

    /// Reads the next frame's planes (Y, Cb, Cr) into an internal buffer; `false` at end of stream.
    fn read_planes(&mut self) -> Result<bool, VideoError> {
        let Some(line) = read_line(&mut self.reader, &self.path, "frame header")? else {
            return Ok(false);
        };
        if !line.starts_with(FRAME_MAGIC) {
            return Err(VideoError::format(
                &self.path,
                format!(
                    "frame {}: expected a y4m FRAME marker (corrupt file?)",
                    self.frames_read
                ),
            ));
        }
        self.planes.resize(self.header.frame_bytes(), 0);
        self.reader.read_exact(&mut self.planes).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                VideoError::format(
                    &self.path,
                    format!("truncated y4m frame {}", self.frames_read),
                )
            } else {
                VideoError::io(&self.path, e)
            }
        })?;
        self.frames_read += 1;
        Ok(true)
    }

    /// Skips one frame without converting it; `false` at end of stream.
    pub fn skip_frame(&mut self) -> Result<bool, VideoError> {
        self.read_planes()
    }

    /// The next frame as RGB24, `None` at end of stream.
    pub fn read_frame(&mut self) -> Result<Option<RgbFrame>, VideoError> {
        if !self.read_planes()? {
            return Ok(None);
        }
        let h = &self.header;
        let mut frame = RgbFrame::new(h.width, h.height);
        planar_to_rgb(
            &self.planes,
            h.width,
            h.height,
            h.subsampling,
            h.range,
            &mut frame.data,
        );
        Ok(Some(frame))
    }
}

/// [`FrameSource`] over a y4m stream, applying the frame range.
pub(crate) struct Y4mSource<R: Read + Send> {
    reader: Y4mReader<R>,
    info: VideoInfo,
    opts: SourceOptions,
    next_index: u64,
}

impl<R: Read + Send> Y4mSource<R> {
    pub(crate) fn new(
        reader: Y4mReader<R>,
        total_frames: Option<u64>,
        opts: &SourceOptions,
    ) -> Self {
        let h = reader.header();
        let frame_count = total_frames.map(|t| opts.selected_count(t));
        let info = VideoInfo {
            width: h.width,
            height: h.height,
            fps: h.fps,
            frame_count,
            duration_s: frame_count.map(|n| n as f64 / h.fps.as_f64()),
            has_audio: false,
            has_subtitles: false,
            rotation: None,
            color: ColorTags {
                primaries: None,
                transfer: None,
                matrix: Some("bt470bg".into()),
                range: Some(
                    if h.range == YuvRange::Full {
                        "pc"
                    } else {
                        "tv"
                    }
                    .into(),
                ),
            },
            variable_frame_rate: false,
            declared_frames: frame_count.map(DeclaredFrames::Counted),
            pix_fmt: Some(h.pix_fmt().into()),
        };
        Y4mSource {
            reader,
            info,
            opts: opts.clone(),
            next_index: 0,
        }
    }
}

impl<R: Read + Send> FrameSource for Y4mSource<R> {
    fn info(&self) -> &VideoInfo {
        &self.info
    }

    fn next_frame(&mut self) -> Result<Option<RgbFrame>, VideoError> {
        while self.next_index < self.opts.start_frame {
            if !self.reader.skip_frame()? {
                return Ok(None);
            }
            self.next_index += 1;
        }
        if self.opts.past_end(self.next_index) {
            return Ok(None);
        }
        let frame = self.reader.read_frame()?;
        if frame.is_some() {
            self.next_index += 1;
        }
        Ok(frame)
    }
}

/// Opens a y4m file; the frame count comes from the file size when frames carry no parameters.
pub(crate) fn open_file(
    path: &Path,
    opts: &SourceOptions,
) -> Result<Y4mSource<BufReader<File>>, VideoError> {
    let file = File::open(path).map_err(|e| VideoError::io(path, e))?;
    let len = file.metadata().map_err(|e| VideoError::io(path, e))?.len();
    let mut reader = Y4mReader::new(BufReader::with_capacity(1 << 20, file), path)?;
    let header_len = reader
        .reader
        .stream_position()
        .map_err(|e| VideoError::io(path, e))?;
    let per_frame = (FRAME_MAGIC.len() + 1 + reader.header.frame_bytes()) as u64;
    let body = len.saturating_sub(header_len);
    let total = (body % per_frame == 0).then_some(body / per_frame);
    Ok(Y4mSource::new(reader, total, opts))
}

/// Streaming y4m writer over any byte sink.
pub struct Y4mWriter<W: Write> {
    writer: W,
    header: Y4mHeader,
    planes: Vec<u8>,
}

impl<W: Write> Y4mWriter<W> {
    /// Writes a full range header. `subsampling` is 4:4:4, or 4:2:0 for anything else.
    pub fn new(
        writer: W,
        width: usize,
        height: usize,
        fps: Rational,
        subsampling: Subsampling,
    ) -> std::io::Result<Self> {
        Self::with_layout(
            writer,
            width,
            height,
            fps,
            Y4mLayout {
                subsampling,
                range: YuvRange::Full,
            },
        )
    }

    /// Writes the header for `layout` (4:4:4, or 4:2:0 for any other subsampling).
    pub fn with_layout(
        mut writer: W,
        width: usize,
        height: usize,
        fps: Rational,
        layout: Y4mLayout,
    ) -> std::io::Result<Self> {
        let subsampling = layout.subsampling;
        let colorspace = if subsampling == Subsampling::S444 {
            "444"
        } else {
            "420jpeg"
        };
        let header = Y4mHeader {
            width,
            height,
            fps,
            subsampling: if subsampling == Subsampling::S444 {
                Subsampling::S444
            } else {
                Subsampling::S420
            },
            range: layout.range,
            colorspace: colorspace.into(),
        };
        writer.write_all(header.to_line().as_bytes())?;
        Ok(Y4mWriter {
            writer,
            header,
            planes: Vec::new(),
        })
    }

    pub fn write_frame(&mut self, frame: &RgbFrame) -> std::io::Result<()> {
        let h = &self.header;
        rgb_to_planar(
            &frame.data,
            h.width,
            h.height,
            h.subsampling,
            h.range,
            &mut self.planes,
        );
        self.writer.write_all(b"FRAME\n")?;
        self.writer.write_all(&self.planes)
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.writer.flush()
    }

    pub fn into_inner(self) -> W {
        self.writer
    }
}

/// The pixel format to ask for when the y4m output goes to a player rather than back into
/// flashvsr or a test: 4:2:0, limited range.
pub const PLAYER_PIX_FMT: &str = "yuv420p";

/// What a written y4m stream holds: chroma subsampling and value range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Y4mLayout {
    pub subsampling: Subsampling,
    pub range: YuvRange,
}

impl Y4mLayout {
    /// From an `EncodeOptions::pix_fmt`: `None` = C444 full range (see the module docs).
    pub fn for_pix_fmt(pix_fmt: Option<&str>, path: &Path) -> Result<Self, VideoError> {
        let (subsampling, range) = match pix_fmt {
            None | Some("yuvj444p") => (Subsampling::S444, YuvRange::Full),
            Some("yuv444p") => (Subsampling::S444, YuvRange::Limited),
            Some("yuv420p") => (Subsampling::S420, YuvRange::Limited),
            Some("yuvj420p") => (Subsampling::S420, YuvRange::Full),
            Some(other) => {
                return Err(VideoError::format(
                    path,
                    format!(
                        "y4m output is 8-bit yuv420p, yuv444p (limited range) or yuvj420p, \
                         yuvj444p (full range); pixel format (--pix-fmt) `{other}` is not one of them"
                    ),
                ))
            }
        };
        Ok(Y4mLayout { subsampling, range })
    }
}

/// Writes a y4m file under a temporary name, renamed on `finish`, or straight to stdout.
pub(crate) struct Y4mSink {
    writer: Option<Y4mWriter<BufWriter<Box<dyn Write + Send>>>>,
    /// `(temporary, target, overwrite)` for files; `None` for stdout.
    file: Option<(PathBuf, PathBuf, bool)>,
    label: PathBuf,
}

impl Y4mSink {
    pub(crate) fn create_file(
        target: &Path,
        width: usize,
        height: usize,
        fps: Rational,
        layout: Y4mLayout,
        overwrite: bool,
    ) -> Result<Self, VideoError> {
        crate::fs_util::check_output_target(target, overwrite)?;
        let tmp = crate::fs_util::temp_sibling(target, true);
        let file = File::create(&tmp).map_err(|e| VideoError::io(target, e))?;
        let out: Box<dyn Write + Send> = Box::new(file);
        let mut sink = Y4mSink {
            writer: None,
            file: Some((tmp, target.to_path_buf(), overwrite)),
            label: target.into(),
        };
        match Y4mWriter::with_layout(
            BufWriter::with_capacity(1 << 20, out),
            width,
            height,
            fps,
            layout,
        ) {
            Ok(w) => sink.writer = Some(w),
            Err(e) => return Err(VideoError::io(target, e)), // Drop removes the temporary file.
        }
        Ok(sink)
    }

    pub(crate) fn stdout(
        width: usize,
        height: usize,
        fps: Rational,
        layout: Y4mLayout,
    ) -> Result<Self, VideoError> {
        let label = PathBuf::from(crate::error::STDOUT_LABEL);
        let out: Box<dyn Write + Send> = Box::new(std::io::stdout());
        let writer = Y4mWriter::with_layout(
            BufWriter::with_capacity(1 << 20, out),
            width,
            height,
            fps,
            layout,
        )
        .map_err(|e| VideoError::io(&label, e))?;
        Ok(Y4mSink {
            writer: Some(writer),
            file: None,
            label,
        })
    }

    fn discard(&mut self) {
        self.writer = None;
        if let Some((tmp, _, _)) = self.file.take() {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

impl FrameSink for Y4mSink {
    fn write_frame(&mut self, frame: &RgbFrame) -> Result<(), VideoError> {
        let w = self
            .writer
            .as_mut()
            .ok_or_else(|| VideoError::format(&self.label, "sink already closed"))?;
        w.write_frame(frame)
            .map_err(|e| VideoError::io(&self.label, e))
    }

    fn finish(mut self: Box<Self>) -> Result<(), VideoError> {
        let Some(writer) = self.writer.take() else {
            return Err(VideoError::format(&self.label, "sink already closed"));
        };
        let flushed = writer
            .into_inner()
            .into_inner()
            .map_err(|e| VideoError::io(&self.label, e.into_error()));
        let mut inner = match flushed {
            Ok(inner) => inner,
            Err(e) => {
                self.discard();
                return Err(e);
            }
        };
        if let Err(e) = inner.flush() {
            self.discard();
            return Err(VideoError::io(&self.label, e));
        }
        drop(inner);
        match self.file.take() {
            Some((tmp, target, overwrite)) => crate::fs_util::commit_file(&tmp, &target, overwrite),
            None => Ok(()),
        }
    }

    fn abort(mut self: Box<Self>) {
        self.discard();
    }
}

impl Drop for Y4mSink {
    fn drop(&mut self) {
        self.discard();
    }
}
