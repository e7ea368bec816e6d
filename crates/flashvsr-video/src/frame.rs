//! Plain data: RGB frames, frame rates, colour tags and stream information.

use std::fmt;

/// One picture, 8-bit RGB, row-major, `data.len() == width * height * 3`.
#[derive(Clone, PartialEq, Eq)]
pub struct RgbFrame {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl RgbFrame {
    /// A black frame.
    pub fn new(width: usize, height: usize) -> Self {
        RgbFrame {
            width,
            height,
            data: vec![0; width * height * 3],
        }
    }

    /// Bytes an RGB24 frame of this size takes.
    pub fn byte_len(width: usize, height: usize) -> usize {
        width * height * 3
    }

    /// Whether `data` has the length the size implies.
    pub fn is_consistent(&self) -> bool {
        self.data.len() == Self::byte_len(self.width, self.height)
    }
}

impl fmt::Debug for RgbFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never dump megabytes of pixels into a log.
        write!(
            f,
            "RgbFrame({}x{}, {} bytes)",
            self.width,
            self.height,
            self.data.len()
        )
    }
}

/// A frame rate `num/den` frames per second (e.g. 30000/1001), kept exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rational {
    pub num: u32,
    pub den: u32,
}

impl Rational {
    pub const fn new(num: u32, den: u32) -> Self {
        Rational { num, den }
    }

    /// Frames per second as a float; 0 when the denominator is 0.
    pub fn as_f64(&self) -> f64 {
        if self.den == 0 {
            0.0
        } else {
            self.num as f64 / self.den as f64
        }
    }

    /// Both parts non-zero.
    pub fn is_valid(&self) -> bool {
        self.num != 0 && self.den != 0
    }

    /// Parses `"30000/1001"`, `"30:1"` or `"25"`; `None` for anything else, including `0/0`.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let (n, d) = match s.split_once(['/', ':']) {
            Some((n, d)) => (n.trim().parse::<u64>().ok()?, d.trim().parse::<u64>().ok()?),
            None => (s.parse::<u64>().ok()?, 1),
        };
        if n == 0 || d == 0 {
            return None;
        }
        let g = gcd(n, d);
        let (n, d) = (n / g, d / g);
        Some(Rational {
            num: u32::try_from(n).ok()?,
            den: u32::try_from(d).ok()?,
        })
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

impl fmt::Display for Rational {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.num, self.den)
    }
}

/// Colour description of a stream, in ffmpeg's names (`bt709`, `smpte170m`, `tv`, `pc`, ...).
/// `None` = not tagged / unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColorTags {
    /// `color_primaries` (e.g. `bt709`, `bt470bg`, `bt2020`).
    pub primaries: Option<String>,
    /// `color_transfer` / `color_trc` (e.g. `bt709`, `smpte2084`).
    pub transfer: Option<String>,
    /// `color_space` / YCbCr matrix (e.g. `bt709`, `smpte170m`, `bt2020nc`).
    pub matrix: Option<String>,
    /// `color_range`: `tv` (limited) or `pc` (full).
    pub range: Option<String>,
}

impl ColorTags {
    pub fn is_empty(&self) -> bool {
        self.primaries.is_none()
            && self.transfer.is_none()
            && self.matrix.is_none()
            && self.range.is_none()
    }
}

/// What a [`crate::FrameSource`] will deliver.
///
/// `width`/`height` are the size of the delivered RGB frames, i.e. *after* rotation (ffmpeg
/// sources are auto-rotated upright; `rotation` only reports what the file said). `frame_count`
/// and `duration_s` describe the selected frame range when one was requested.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoInfo {
    pub width: usize,
    pub height: usize,
    /// Constant rate at which the frames are meant to be played (the average rate for VFR input).
    pub fps: Rational,
    pub frame_count: Option<u64>,
    pub duration_s: Option<f64>,
    pub has_audio: bool,
    pub has_subtitles: bool,
    /// Rotation in degrees as stored in the file (display matrix / `rotate` tag), if any.
    pub rotation: Option<i32>,
    pub color: ColorTags,
    /// The container reports a variable frame rate (`r_frame_rate != avg_frame_rate`).
    pub variable_frame_rate: bool,
    /// How many frames the container says there are (in the selected range), counted or
    /// estimated from the duration; compared with the decoded count by [`VideoInfo::truncation`].
    pub declared_frames: Option<DeclaredFrames>,
    /// The stream's own pixel format in ffmpeg's names (`yuv420p`, `yuv420p10le`, `yuv444p`,
    /// ...), before the conversion to 8-bit RGB; `None` when unknown.
    pub pix_fmt: Option<String>,
}

/// A frame count from the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeclaredFrames {
    /// Stored in the file (mp4 sample count, Matroska statistics tags, y4m size, image count).
    Counted(u64),
    /// Duration × frame rate, rounded: only about right (start offsets, rounded durations).
    FromDuration(u64),
}

impl DeclaredFrames {
    pub fn count(&self) -> u64 {
        match *self {
            DeclaredFrames::Counted(n) | DeclaredFrames::FromDuration(n) => n,
        }
    }

    /// Frames that may be missing before the input counts as truncated: 1% of a stored count
    /// (edit lists can legitimately hide a few frames), 5% and at least 2 frames of an estimate.
    fn allowed_shortfall(&self) -> u64 {
        match *self {
            DeclaredFrames::Counted(n) => n / 100,
            DeclaredFrames::FromDuration(n) => (n / 20).max(2),
        }
    }

    /// The same count for a frame range (`start..end` of the decoded frames).
    pub(crate) fn for_range(&self, opts: &crate::SourceOptions) -> Self {
        match *self {
            DeclaredFrames::Counted(n) => DeclaredFrames::Counted(opts.selected_count(n)),
            DeclaredFrames::FromDuration(n) => DeclaredFrames::FromDuration(opts.selected_count(n)),
        }
    }
}

/// Fewer frames decoded than the container declares: a cut or damaged file, which ffmpeg
/// decodes up to the damage and then ends as if the video were over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncation {
    pub decoded: u64,
    pub declared: DeclaredFrames,
}

impl fmt::Display for Truncation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match self.declared {
            DeclaredFrames::Counted(n) => format!("the {n} frames the container declares"),
            DeclaredFrames::FromDuration(n) => format!("the about {n} frames its duration implies"),
        };
        write!(
            f,
            "decoded only {} of {source}; the file looks truncated or damaged",
            self.decoded
        )
    }
}

impl VideoInfo {
    /// `Some` when `decoded` frames (of the selected range) fall short of what the container
    /// declares by more than rounding and edit lists explain.
    pub fn truncation(&self, decoded: u64) -> Option<Truncation> {
        let declared = self.declared_frames?;
        (decoded + declared.allowed_shortfall() < declared.count())
            .then_some(Truncation { decoded, declared })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rational_parse() {
        assert_eq!(
            Rational::parse("30000/1001"),
            Some(Rational::new(30000, 1001))
        );
        assert_eq!(Rational::parse("48/2"), Some(Rational::new(24, 1)));
        assert_eq!(Rational::parse("30:1"), Some(Rational::new(30, 1)));
        assert_eq!(Rational::parse("25"), Some(Rational::new(25, 1)));
        assert_eq!(Rational::parse("0/0"), None);
        assert_eq!(Rational::parse("x/1"), None);
        assert_eq!(Rational::new(30000, 1001).to_string(), "30000/1001");
    }

    #[test]
    fn truncation_needs_a_real_shortfall() {
        let mut info = VideoInfo {
            width: 2,
            height: 2,
            fps: Rational::new(30, 1),
            frame_count: Some(30),
            duration_s: Some(1.0),
            has_audio: false,
            has_subtitles: false,
            rotation: None,
            color: ColorTags::default(),
            variable_frame_rate: false,
            declared_frames: Some(DeclaredFrames::Counted(30)),
            pix_fmt: None,
        };
        assert_eq!(info.truncation(30), None);
        let t = info.truncation(11).unwrap();
        assert_eq!(t.decoded, 11);
        assert!(t.to_string().contains("11 of the 30 frames"), "{t}");
        assert!(info.truncation(29).is_some());
        // An estimate from the duration tolerates rounding.
        info.declared_frames = Some(DeclaredFrames::FromDuration(30));
        assert_eq!(info.truncation(28), None);
        assert!(info.truncation(20).is_some());
        info.declared_frames = None;
        assert_eq!(info.truncation(0), None);
    }
}
