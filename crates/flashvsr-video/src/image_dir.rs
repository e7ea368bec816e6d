//! Folders of still images: PNG/JPEG input in natural order, PNG output written atomically.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use crate::{
    ColorTags, FrameSink, FrameSource, Rational, RgbFrame, SourceOptions, VideoError, VideoInfo,
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
        use image::ImageEncoder;
        let tmp = self
            .tmp
            .as_ref()
            .ok_or_else(|| VideoError::format(&self.target, "sink already closed"))?;
        let path = tmp.join(png_frame_name(self.index));
        let file = std::fs::File::create(&path).map_err(|e| VideoError::io(&self.target, e))?;
        let mut out = std::io::BufWriter::new(file);
        image::codecs::png::PngEncoder::new_with_quality(
            &mut out,
            image::codecs::png::CompressionType::Fast,
            image::codecs::png::FilterType::Adaptive,
        )
        .write_image(
            &frame.data,
            frame.width as u32,
            frame.height as u32,
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| {
            VideoError::format(
                &self.target,
                format!("cannot write {}: {e}", png_frame_name(self.index)),
            )
        })?;
        std::io::Write::flush(&mut out).map_err(|e| VideoError::io(&self.target, e))?;
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
}
