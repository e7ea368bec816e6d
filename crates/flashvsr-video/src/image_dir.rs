//! Still images: PNG/JPEG folders in natural order in; PNG folders, numbered sequences
//! (`seq_%04d.png`) and single pictures out, each written atomically.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use crate::{
    ColorTags, DeclaredFrames, FrameSink, FrameSource, Rational, RgbFrame, SourceOptions,
    VideoError, VideoInfo,
};

const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg"];

/// Compares file names so that digit runs compare as numbers: `frame2 < frame10`.
/// Ties (e.g. `a01` vs `a1`) fall back to the plain byte order so the order is total.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    loop {
        match (x.first(), y.first()) {
            (None, None) => return a.cmp(b),
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(c), Some(d)) if c.is_ascii_digit() && d.is_ascii_digit() => {
                let dx = x.iter().take_while(|c| c.is_ascii_digit()).count();
                let dy = y.iter().take_while(|c| c.is_ascii_digit()).count();
                let (nx, ny) = (trim_zeros(&x[..dx]), trim_zeros(&y[..dy]));
                let ord = nx.len().cmp(&ny.len()).then_with(|| nx.cmp(ny));
                if ord != Ordering::Equal {
                    return ord;
                }
                x = &x[dx..];
                y = &y[dy..];
            }
            (Some(c), Some(d)) => {
                if c != d {
                    return c.cmp(d);
                }
                x = &x[1..];
                y = &y[1..];
            }
        }
    }
}

fn trim_zeros(digits: &[u8]) -> &[u8] {
    let start = digits
        .iter()
        .position(|&c| c != b'0')
        .unwrap_or(digits.len());
    &digits[start..]
}

/// The PNG/JPEG files of `dir`, naturally sorted.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>, VideoError> {
    let entries = std::fs::read_dir(dir).map_err(|e| VideoError::io(dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| VideoError::io(dir, e))?;
        let path = entry.path();
        let is_image = path
            .extension()
            .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)));
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if is_image && !hidden && path.is_file() {
            files.push(path);
        }
    }
    files.sort_by(|a, b| {
        let (a, b) = (
            a.file_name().unwrap_or_default(),
            b.file_name().unwrap_or_default(),
        );
        natural_cmp(&a.to_string_lossy(), &b.to_string_lossy())
    });
    Ok(files)
}

/// Decodes one image to RGB8: grey is replicated, alpha is dropped (not composited), 16-bit
/// samples are rounded to 8 bits.
pub fn read_rgb_image(path: &Path) -> Result<RgbFrame, VideoError> {
    let img = image::ImageReader::open(path)
        .map_err(|e| VideoError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| VideoError::io(path, e))?
        .decode()
        .map_err(|e| VideoError::format(path, format!("cannot decode image: {e}")))?;
    let rgb = img.into_rgb8();
    let (w, h) = rgb.dimensions();
    Ok(RgbFrame {
        width: w as usize,
        height: h as usize,
        data: rgb.into_raw(),
    })
}

/// Frames from an image folder.
pub(crate) struct ImageDirSource {
    files: std::vec::IntoIter<PathBuf>,
    info: VideoInfo,
}

impl ImageDirSource {
    pub(crate) fn open(dir: &Path, opts: &SourceOptions) -> Result<Self, VideoError> {
        let all = list_images(dir)?;
        if all.is_empty() {
            return Err(VideoError::format(
                dir,
                "no .png/.jpg/.jpeg images in this folder",
            ));
        }
        let total = all.len() as u64;
        let selected: Vec<PathBuf> = all
            .into_iter()
            .enumerate()
            .filter(|(i, _)| opts.wants(*i as u64))
            .map(|(_, p)| p)
            .collect();
        let first = selected.first().ok_or_else(|| {
            VideoError::format(
                dir,
                format!("frame range selects none of the {total} images"),
            )
        })?;
        let (w, h) = image::image_dimensions(first)
            .map_err(|e| VideoError::format(first, format!("cannot read image size: {e}")))?;
        let fps = if opts.image_fps.is_valid() {
            opts.image_fps
        } else {
            Rational::new(30, 1)
        };
        let count = selected.len() as u64;
        let info = VideoInfo {
            width: w as usize,
            height: h as usize,
            fps,
            frame_count: Some(count),
            duration_s: Some(count as f64 / fps.as_f64()),
            has_audio: false,
            has_subtitles: false,
            rotation: None,
            color: ColorTags::default(),
            variable_frame_rate: false,
            declared_frames: Some(DeclaredFrames::Counted(count)),
            pix_fmt: None,
        };
        Ok(ImageDirSource {
            files: selected.into_iter(),
            info,
        })
    }
}

impl FrameSource for ImageDirSource {
    fn info(&self) -> &VideoInfo {
        &self.info
    }

    fn next_frame(&mut self) -> Result<Option<RgbFrame>, VideoError> {
        let Some(path) = self.files.next() else {
            return Ok(None);
        };
        let frame = read_rgb_image(&path)?;
        if frame.width != self.info.width || frame.height != self.info.height {
            return Err(VideoError::format(
                &path,
                format!(
                    "image is {}x{} but the first frame is {}x{}; all frames must have the same size",
                    frame.width, frame.height, self.info.width, self.info.height
                ),
            ));
        }
        Ok(Some(frame))
    }
}

/// Name of output frame `index`.
pub fn png_frame_name(index: u64) -> String {
    format!("frame_{index:06}.png")
}

fn is_our_frame_name(name: &str) -> bool {
    name.strip_prefix("frame_")
        .and_then(|s| s.strip_suffix(".png"))
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|c| c.is_ascii_digit()))
}

/// The early checks of a PNG folder output (an empty or absent folder in an existing one, or
/// `overwrite`); returns the folder without its trailing `/`.
pub(crate) fn check_png_dir_target(target: &Path, overwrite: bool) -> Result<PathBuf, VideoError> {
    let target = PathBuf::from(
        target
            .to_string_lossy()
            .trim_end_matches(['/', std::path::MAIN_SEPARATOR]),
    );
    if target.as_os_str().is_empty() {
        return Err(VideoError::Invalid("output folder name is empty".into()));
    }
    if target.exists() {
        if !target.is_dir() {
            return Err(VideoError::format(&target, "exists and is not a folder"));
        }
        let non_empty = std::fs::read_dir(&target)
            .map_err(|e| VideoError::io(&target, e))?
            .next()
            .is_some();
        if non_empty && !overwrite {
            return Err(VideoError::OutputExists { path: target });
        }
    }
    let parent = crate::fs_util::parent_dir(&target);
    if !parent.is_dir() {
        return Err(VideoError::format(
            &target,
            format!("output folder {} does not exist", parent.display()),
        ));
    }
    Ok(target)
}

/// Writes `frame_000000.png`, ... into a hidden sibling folder; `finish` moves it onto the target.
///
/// The target is refused if it exists and is not empty, unless `overwrite`; then its existing
/// `frame_NNNNNN.png` files (only those) are replaced by the new frames, other files are kept.
pub(crate) struct PngDirSink {
    tmp: Option<PathBuf>,
    target: PathBuf,
    overwrite: bool,
    index: u64,
}

impl PngDirSink {
    pub(crate) fn create(target: &Path, overwrite: bool) -> Result<Self, VideoError> {
        let target = check_png_dir_target(target, overwrite)?;
        let tmp = crate::fs_util::temp_sibling(&target, false);
        std::fs::create_dir(&tmp).map_err(|e| VideoError::io(&target, e))?;
        Ok(PngDirSink {
            tmp: Some(tmp),
            target,
            overwrite,
            index: 0,
        })
    }

    fn commit(&self, tmp: &Path) -> Result<(), VideoError> {
        let target = &self.target;
        if !target.exists() {
            return std::fs::rename(tmp, target).map_err(|e| VideoError::io(target, e));
        }
        let mut existing = Vec::new();
        for entry in std::fs::read_dir(target).map_err(|e| VideoError::io(target, e))? {
            existing.push(entry.map_err(|e| VideoError::io(target, e))?.file_name());
        }
        if existing.is_empty() {
            std::fs::remove_dir(target).map_err(|e| VideoError::io(target, e))?;
            return std::fs::rename(tmp, target).map_err(|e| VideoError::io(target, e));
        }
        if !self.overwrite {
            return Err(VideoError::OutputExists {
                path: target.clone(),
            });
        }
        // Overwrite into a non-empty folder: drop stale frames of ours, then move the new ones in.
        for name in existing {
            if is_our_frame_name(&name.to_string_lossy()) {
                let p = target.join(&name);
                std::fs::remove_file(&p).map_err(|e| VideoError::io(&p, e))?;
            }
        }
        for i in 0..self.index {
            let name = png_frame_name(i);
            std::fs::rename(tmp.join(&name), target.join(&name))
                .map_err(|e| VideoError::io(target.join(&name), e))?;
        }
        std::fs::remove_dir_all(tmp).map_err(|e| VideoError::io(tmp, e))
    }
}

impl FrameSink for PngDirSink {
    fn write_frame(&mut self, frame: &RgbFrame) -> Result<(), VideoError> {
        let tmp = self
            .tmp
            .as_ref()
            .ok_or_else(|| VideoError::format(&self.target, "sink already closed"))?;
        let name = png_frame_name(self.index);
        write_picture(&tmp.join(&name), frame, &self.target, &name)?;
        self.index += 1;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<(), VideoError> {
        let tmp = self
            .tmp
            .take()
            .ok_or_else(|| VideoError::format(&self.target, "sink already closed"))?;
        let result = self.commit(&tmp);
        if tmp.exists() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result
    }

    fn abort(mut self: Box<Self>) {
        if let Some(tmp) = self.tmp.take() {
            let _ = std::fs::remove_dir_all(tmp);
        }
    }
}

impl Drop for PngDirSink {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = std::fs::remove_dir_all(tmp);
        }
    }
}

/// Writes one picture, PNG or JPEG by `path`'s extension. Errors name `target` and `what`.
fn write_picture(
    path: &Path,
    frame: &RgbFrame,
    target: &Path,
    what: &str,
) -> Result<(), VideoError> {
    use image::ImageEncoder;
    let file = std::fs::File::create(path).map_err(|e| VideoError::io(target, e))?;
    let mut out = std::io::BufWriter::new(file);
    let (w, h) = (frame.width as u32, frame.height as u32);
    let written = if has_extension(path, "jpg") || has_extension(path, "jpeg") {
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY).write_image(
            &frame.data,
            w,
            h,
            image::ExtendedColorType::Rgb8,
        )
    } else {
        image::codecs::png::PngEncoder::new_with_quality(
            &mut out,
            image::codecs::png::CompressionType::Fast,
            image::codecs::png::FilterType::Adaptive,
        )
        .write_image(&frame.data, w, h, image::ExtendedColorType::Rgb8)
    };
    written.map_err(|e| VideoError::format(target, format!("cannot write {what}: {e}")))?;
    std::io::Write::flush(&mut out).map_err(|e| VideoError::io(target, e))
}

/// JPEG quality of written pictures (high: the point of upscaling is detail).
const JPEG_QUALITY: u8 = 95;

/// Extensions pictures are written in (PNG, JPEG).
const WRITTEN_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg"];

/// An output name like `shots/seq_%04d.png`: one `%d`, `%Nd` or `%0Nd` (always zero-padded to N
/// digits, as ffmpeg does), `%%` for a literal `%`, in the file name only. Frames are numbered
/// from [`ImagePattern::FIRST_NUMBER`], as ffmpeg numbers them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePattern {
    dir: PathBuf,
    prefix: String,
    digits: usize,
    suffix: String,
}

impl ImagePattern {
    pub const FIRST_NUMBER: u64 = 1;

    /// Parses and checks a pattern; the error says what is supported.
    pub fn parse(path: &Path) -> Result<Self, VideoError> {
        let usage = "an image sequence name takes one %d or %0Nd number (e.g. seq_%04d.png)";
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| VideoError::format(path, usage))?;
        if !WRITTEN_EXTENSIONS.iter().any(|e| has_extension(path, e)) {
            return Err(VideoError::format(
                path,
                "image sequences are written as .png or .jpg (e.g. seq_%04d.png)",
            ));
        }
        let (mut prefix, mut suffix) = (String::new(), String::new());
        let mut digits = None;
        let mut chars = name.chars().peekable();
        while let Some(c) = chars.next() {
            let out = if digits.is_some() {
                &mut suffix
            } else {
                &mut prefix
            };
            if c != '%' {
                out.push(c);
                continue;
            }
            if chars.peek() == Some(&'%') {
                chars.next();
                out.push('%');
                continue;
            }
            let mut width = String::new();
            while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                width.push(*d);
                chars.next();
            }
            if chars.next() != Some('d') || digits.is_some() {
                return Err(VideoError::format(path, usage));
            }
            let width: usize = if width.is_empty() {
                1
            } else {
                width.parse().unwrap_or(0)
            };
            if !(1..=12).contains(&width) {
                return Err(VideoError::format(path, usage));
            }
            digits = Some(width);
        }
        let digits = digits.ok_or_else(|| VideoError::format(path, usage))?;
        Ok(ImagePattern {
            dir: crate::fs_util::parent_dir(path),
            prefix,
            digits,
            suffix,
        })
    }

    /// The path of the picture numbered `number`.
    pub fn path_of(&self, number: u64) -> PathBuf {
        self.dir.join(self.name_of(number))
    }

    fn name_of(&self, number: u64) -> String {
        format!(
            "{}{number:0width$}{}",
            self.prefix,
            self.suffix,
            width = self.digits
        )
    }
}

fn has_extension(path: &Path, ext: &str) -> bool {
    crate::spec::has_extension(path, ext)
}

/// Writes a numbered sequence into a hidden folder beside the pictures; `finish` moves them to
/// their names (refusing existing ones unless `overwrite`), `abort` or drop deletes them.
pub(crate) struct ImageSequenceSink {
    pattern: ImagePattern,
    label: PathBuf,
    tmp: Option<PathBuf>,
    overwrite: bool,
    written: u64,
}

impl ImageSequenceSink {
    pub(crate) fn create(path: &Path, overwrite: bool) -> Result<Self, VideoError> {
        let pattern = check_sequence_target(path, overwrite)?;
        let tmp = crate::fs_util::temp_sibling(path, false);
        std::fs::create_dir(&tmp).map_err(|e| VideoError::io(path, e))?;
        Ok(ImageSequenceSink {
            pattern,
            label: path.to_path_buf(),
            tmp: Some(tmp),
            overwrite,
            written: 0,
        })
    }

    fn commit(&self, tmp: &Path) -> Result<(), VideoError> {
        let numbers = ImagePattern::FIRST_NUMBER..ImagePattern::FIRST_NUMBER + self.written;
        if !self.overwrite {
            if let Some(existing) = numbers
                .clone()
                .map(|n| self.pattern.path_of(n))
                .find(|p| p.exists())
            {
                return Err(VideoError::OutputExists { path: existing });
            }
        }
        for n in numbers {
            let (from, to) = (tmp.join(self.pattern.name_of(n)), self.pattern.path_of(n));
            std::fs::rename(&from, &to).map_err(|e| VideoError::io(&to, e))?;
        }
        Ok(())
    }
}

/// The early checks of a sequence output: a valid pattern, an existing folder, and no first
/// picture in the way unless `overwrite`.
pub(crate) fn check_sequence_target(
    path: &Path,
    overwrite: bool,
) -> Result<ImagePattern, VideoError> {
    let pattern = ImagePattern::parse(path)?;
    if !pattern.dir.is_dir() {
        return Err(VideoError::format(
            path,
            format!("output folder {} does not exist", pattern.dir.display()),
        ));
    }
    let first = pattern.path_of(ImagePattern::FIRST_NUMBER);
    if first.exists() && !overwrite {
        return Err(VideoError::OutputExists { path: first });
    }
    Ok(pattern)
}

impl FrameSink for ImageSequenceSink {
    fn write_frame(&mut self, frame: &RgbFrame) -> Result<(), VideoError> {
        let tmp = self
            .tmp
            .as_ref()
            .ok_or_else(|| VideoError::format(&self.label, "sink already closed"))?;
        let name = self
            .pattern
            .name_of(ImagePattern::FIRST_NUMBER + self.written);
        write_picture(&tmp.join(&name), frame, &self.label, &name)?;
        self.written += 1;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<(), VideoError> {
        let tmp = self
            .tmp
            .take()
            .ok_or_else(|| VideoError::format(&self.label, "sink already closed"))?;
        let result = self.commit(&tmp);
        let _ = std::fs::remove_dir_all(&tmp);
        result
    }

    fn abort(mut self: Box<Self>) {
        if let Some(tmp) = self.tmp.take() {
            let _ = std::fs::remove_dir_all(tmp);
        }
    }
}

impl Drop for ImageSequenceSink {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = std::fs::remove_dir_all(tmp);
        }
    }
}

/// Why a video cannot go into one picture; also the error at a second frame.
pub(crate) fn one_picture_only(path: &Path) -> VideoError {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "frames".into());
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "png".into());
    VideoError::format(
        path,
        format!(
            "one picture file holds one frame and this video has more; write a folder \
             (`{stem}/`) or a numbered sequence (`{stem}_%04d.{ext}`)"
        ),
    )
}

/// One picture, written under a hidden name and moved into place by `finish`.
pub(crate) struct ImageSink {
    target: PathBuf,
    tmp: PathBuf,
    overwrite: bool,
    written: bool,
    done: bool,
}

impl ImageSink {
    pub(crate) fn create(target: &Path, overwrite: bool) -> Result<Self, VideoError> {
        crate::fs_util::check_output_target(target, overwrite)?;
        Ok(ImageSink {
            target: target.to_path_buf(),
            tmp: crate::fs_util::temp_sibling(target, true),
            overwrite,
            written: false,
            done: false,
        })
    }
}

impl FrameSink for ImageSink {
    fn write_frame(&mut self, frame: &RgbFrame) -> Result<(), VideoError> {
        if self.written {
            return Err(one_picture_only(&self.target));
        }
        let name = self
            .target
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        write_picture(&self.tmp, frame, &self.target, &name)?;
        self.written = true;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<(), VideoError> {
        self.done = true;
        crate::fs_util::commit_file(&self.tmp, &self.target, self.overwrite)
    }

    fn abort(mut self: Box<Self>) {
        self.done = true;
        let _ = std::fs::remove_file(&self.tmp);
    }
}

impl Drop for ImageSink {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order() {
        let mut names = vec![
            "frame10.png",
            "frame2.png",
            "frame1.png",
            "frame02.png",
            "a.png",
            "frame100.png",
        ];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            names,
            [
                "a.png",
                "frame1.png",
                "frame02.png",
                "frame2.png",
                "frame10.png",
                "frame100.png"
            ]
        );
        assert!(is_our_frame_name("frame_000012.png"));
        assert!(!is_our_frame_name("frame_.png"));
        assert!(!is_our_frame_name("other.png"));
    }

    #[test]
    fn image_patterns() {
        let p = ImagePattern::parse(Path::new("out/seq_%04d.png")).unwrap();
        assert_eq!(p.path_of(7), Path::new("out/seq_0007.png"));
        let p = ImagePattern::parse(Path::new("a%%_%d.JPG")).unwrap();
        assert_eq!(p.path_of(12), Path::new("./a%_12.JPG"));
        assert_eq!(
            ImagePattern::parse(Path::new("s_%3d.png"))
                .unwrap()
                .path_of(5),
            Path::new("./s_005.png")
        );
        for bad in [
            "s_%s.png",
            "s_%d_%d.png",
            "s.png",
            "s_%.png",
            "s_%04d.tif",
            "s_%0d.png",
        ] {
            assert!(ImagePattern::parse(Path::new(bad)).is_err(), "{bad}");
        }
    }
}
