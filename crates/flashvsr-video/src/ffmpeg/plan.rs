//! What an ffmpeg output will be, decided before a frame is written: encoder, pixel format, what
//! happens to each audio and subtitle stream of the source, and the notes that tell the user.
//! The sink and the one-frame test encode ([`super::sink::check`]) both build on this plan.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use super::command::run_to_end;
use super::probe::{Probe, StreamDesc};
use crate::{EncodeOptions, VideoError};

/// An ffmpeg output, fully decided.
#[derive(Debug, Clone)]
pub(crate) struct EncodePlan {
    /// Lower-case extension of the target (picks the muxer).
    pub ext: String,
    /// Video encoder; `None` leaves the choice to ffmpeg's muxer default.
    pub codec: Option<String>,
    pub pix_fmt: String,
    /// Source audio streams, each with its encoder (`None` = copied).
    pub audio: Vec<(StreamDesc, Option<&'static str>)>,
    /// Source subtitle streams kept, each with its encoder (`None` = copied).
    pub subtitles: Vec<(StreamDesc, Option<&'static str>)>,
    /// What the user should know (re-encoded audio, dropped subtitles, pixel format choices).
    pub notes: Vec<String>,
}

pub(crate) fn lower_ext(path: &Path) -> String {
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

pub(crate) fn default_crf(codec: &str) -> Option<u32> {
    match codec {
        "libx264" | "libx264rgb" => Some(18),
        "libx265" => Some(20),
        "libvpx-vp9" | "libsvtav1" | "libaom-av1" => Some(30),
        _ => None,
    }
}

/// How one source audio stream goes into the container: `None` = copy, `Some(enc)` = re-encode.
pub(crate) fn audio_plan(ext: &str, codec: &str) -> Option<&'static str> {
    let keep = |ok: &[&str]| (!ok.contains(&codec)).then_some("aac");
    match ext {
        "mp4" | "m4v" => keep(&["aac", "mp3", "ac3", "eac3", "opus", "flac", "alac", "mp2"]),
        "mov" => matches!(codec, "opus" | "vorbis" | "flac").then_some("aac"),
        "webm" => (!matches!(codec, "opus" | "vorbis")).then_some("libopus"),
        "ts" => keep(&["aac", "mp3", "mp2", "ac3", "eac3", "opus", "dts"]),
        "flv" => keep(&["aac", "mp3"]),
        "avi" => keep(&[
            "mp3",
            "mp2",
            "ac3",
            "aac",
            "dts",
            "pcm_s16le",
            "pcm_u8",
            "pcm_s24le",
        ]),
        _ => None,
    }
}

/// Subtitle handling per container: `Ok(None)` copy, `Ok(Some(enc))` convert, `Err(())` drop.
pub(crate) fn subtitle_plan(ext: &str, codec: &str) -> Result<Option<&'static str>, ()> {
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

fn encoder_name(enc: &str) -> &str {
    match enc {
        "aac" => "AAC",
        "libopus" => "Opus",
        other => other,
    }
}

/// Decides everything about an ffmpeg output of `width`×`height` frames at `target`.
pub(crate) fn plan(
    target: &Path,
    width: usize,
    height: usize,
    source: Option<&Probe>,
    opts: &EncodeOptions,
) -> Result<EncodePlan, VideoError> {
    let ext = lower_ext(target);
    let codec = opts
        .codec
        .clone()
        .or_else(|| default_codec(&ext).map(String::from));
    let supported = codec.as_deref().and_then(encoder_pix_fmts);
    let (pix_fmt, mut notes) = choose_pix_fmt(
        PixFmtRequest {
            requested: opts.pix_fmt.as_deref(),
            source: source.and_then(|p| p.info.pix_fmt.as_deref()),
            codec: codec.as_deref(),
            supported: supported.as_deref(),
        },
        width,
        height,
        target,
    )?;
    let (mut audio, mut subtitles) = (Vec::new(), Vec::new());
    if let Some(probed) = source {
        let transfer = probed.info.color.transfer.as_deref();
        if let Some(kind) = transfer.and_then(hdr_kind) {
            notes.push(format!(
                "the input is HDR ({kind}): the model sees its coded values as 8-bit RGB, without \
                 tone mapping; the output keeps the HDR colour tags"
            ));
        }
        for stream in &probed.audio {
            let enc = audio_plan(&ext, &stream.codec);
            if let Some(enc) = enc {
                notes.push(format!(
                    "audio stream {} ({}) cannot be copied into .{ext}; re-encoding it as {}",
                    stream.index,
                    stream.codec,
                    encoder_name(enc)
                ));
            }
            audio.push((stream.clone(), enc));
        }
        for stream in &probed.subtitles {
            match subtitle_plan(&ext, &stream.codec) {
                Ok(enc) => subtitles.push((stream.clone(), enc)),
                Err(()) => notes.push(format!(
                    "subtitle stream {} ({}) cannot be stored in .{ext}; dropping it",
                    stream.index, stream.codec
                )),
            }
        }
    }
    Ok(EncodePlan {
        ext,
        codec,
        pix_fmt,
        audio,
        subtitles,
        notes,
    })
}

fn hdr_kind(transfer: &str) -> Option<&'static str> {
    match transfer {
        "smpte2084" => Some("PQ"),
        "arib-std-b67" => Some("HLG"),
        _ => None,
    }
}

/// Chroma layout of a YUV pixel format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chroma {
    S420,
    S422,
    S444,
}

/// Chroma and bit depth of an ffmpeg pixel format name, as far as choosing the output needs:
/// RGB formats count as 4:4:4, grey and unknown ones as 4:2:0.
fn chroma_and_depth(pix_fmt: &str) -> (Chroma, u32) {
    let digits = |s: &str| -> Option<u32> {
        let d: String = s.chars().take_while(char::is_ascii_digit).collect();
        d.parse().ok()
    };
    let chroma_of = |c: &str| match c {
        "444" => Chroma::S444,
        "422" => Chroma::S422,
        _ => Chroma::S420,
    };
    let yuv = ["yuvj", "yuva", "yuv"]
        .iter()
        .find_map(|p| pix_fmt.strip_prefix(p));
    if let Some(rest) = yuv {
        let chroma = chroma_of(rest.get(..3).unwrap_or(""));
        let depth = rest.get(4..).and_then(digits).unwrap_or(8);
        return (chroma, depth);
    }
    match pix_fmt {
        "nv12" | "nv21" => return (Chroma::S420, 8),
        "nv16" | "nv61" => return (Chroma::S422, 8),
        "nv24" | "nv42" => return (Chroma::S444, 8),
        _ => {}
    }
    // p010le, p210le, p416le, ...: chroma from the first digit, depth from the last two.
    if let Some(rest) = pix_fmt.strip_prefix('p').filter(|r| r.len() >= 3) {
        if let (Some(c), Some(d)) = (rest.get(..1), rest.get(1..3).and_then(digits)) {
            let chroma = match c {
                "4" => Chroma::S444,
                "2" => Chroma::S422,
                _ => Chroma::S420,
            };
            return (chroma, d);
        }
    }
    if let Some(rest) = pix_fmt
        .strip_prefix("gbrap")
        .or_else(|| pix_fmt.strip_prefix("gbrp"))
    {
        return (Chroma::S444, digits(rest).unwrap_or(8));
    }
    if ["rgb", "bgr", "argb", "abgr"]
        .iter()
        .any(|p| pix_fmt.starts_with(p))
    {
        let wide = pix_fmt.contains("48") || pix_fmt.contains("64");
        return (Chroma::S444, if wide { 16 } else { 8 });
    }
    if let Some(rest) = pix_fmt.strip_prefix("gray") {
        return (Chroma::S420, digits(rest).unwrap_or(8));
    }
    (Chroma::S420, 8)
}

/// The planar YUV format of `chroma` at `depth` bits (8, 10 or 12).
fn yuv_pix_fmt(chroma: Chroma, depth: u32) -> String {
    let c = match chroma {
        Chroma::S420 => "420",
        Chroma::S422 => "422",
        Chroma::S444 => "444",
    };
    match depth {
        0..=8 => format!("yuv{c}p"),
        9..=10 => format!("yuv{c}p10le"),
        _ => format!("yuv{c}p12le"),
    }
}

/// Whether `pix_fmt` subsamples chroma horizontally / vertically.
fn subsampled(pix_fmt: &str) -> (bool, bool) {
    match chroma_and_depth(pix_fmt).0 {
        Chroma::S420 if pix_fmt.starts_with("gray") => (false, false),
        Chroma::S420 => (true, true),
        Chroma::S422 => (true, false),
        Chroma::S444 => (false, false),
    }
}

/// The inputs of [`choose_pix_fmt`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct PixFmtRequest<'a> {
    /// What the user asked for.
    pub requested: Option<&'a str>,
    /// The source stream's own format.
    pub source: Option<&'a str>,
    pub codec: Option<&'a str>,
    /// The encoder's pixel formats (`None`: unknown, not checked).
    pub supported: Option<&'a [String]>,
}

/// The output pixel format and the notes that explain an automatic choice. A request is checked
/// (odd sizes, the encoder's list); without one, the input's chroma and bit depth are kept where
/// the encoder can, 4:4:4 replaces 4:2:0/4:2:2 for odd sizes, and 8-bit 4:2:0 is the fallback.
pub(crate) fn choose_pix_fmt(
    req: PixFmtRequest,
    width: usize,
    height: usize,
    target: &Path,
) -> Result<(String, Vec<String>), VideoError> {
    let (odd_w, odd_h) = (!width.is_multiple_of(2), !height.is_multiple_of(2));
    let codec = req.codec.unwrap_or("the default encoder");
    if let Some(p) = req.requested {
        let (sub_x, sub_y) = subsampled(p);
        if (sub_x && odd_w) || (sub_y && odd_h) {
            return Err(VideoError::format(
                target,
                format!(
                    "{width}x{height} cannot be encoded as {p} (odd size); \
                     pass --pix-fmt yuv444p (or an even --scale)"
                ),
            ));
        }
        if let Some(list) = req.supported.filter(|l| !l.iter().any(|f| f == p)) {
            return Err(VideoError::format(
                target,
                format!(
                    "{codec} cannot encode pixel format (--pix-fmt) {p}; it takes {}",
                    list.join(", ")
                ),
            ));
        }
        return Ok((p.to_string(), Vec::new()));
    }

    let (src_chroma, src_depth) = req
        .source
        .map(chroma_and_depth)
        .unwrap_or((Chroma::S420, 8));
    let mut notes = Vec::new();
    let mut chroma = src_chroma;
    let fits = |c: Chroma| match c {
        Chroma::S420 => !odd_w && !odd_h,
        Chroma::S422 => !odd_w,
        Chroma::S444 => true,
    };
    if !fits(chroma) {
        chroma = Chroma::S444;
    }
    let depth = src_depth.min(12);
    let mut candidates = vec![
        yuv_pix_fmt(chroma, depth),
        yuv_pix_fmt(chroma, depth.min(10)),
        yuv_pix_fmt(chroma, 8),
    ];
    if fits(Chroma::S420) {
        candidates.push(yuv_pix_fmt(Chroma::S420, depth.min(10)));
        candidates.push(yuv_pix_fmt(Chroma::S420, 8));
    }
    candidates.dedup();
    let chosen = match req.supported {
        None => candidates[0].clone(),
        Some(list) => match candidates.iter().find(|c| list.contains(c)) {
            Some(c) => c.clone(),
            // None of ours: the encoder's own first choice (e.g. ProRes takes 4:2:2 10-bit only).
            None => list
                .iter()
                .find(|f| f.starts_with("yuv"))
                .or(list.first())
                .cloned()
                .unwrap_or_else(|| candidates[0].clone()),
        },
    };
    let (chosen_chroma, chosen_depth) = chroma_and_depth(&chosen);
    if chroma != src_chroma && chosen_chroma == Chroma::S444 {
        notes.push(format!(
            "{width}x{height} has an odd side, which 4:2:0 cannot hold: writing {chosen} \
             (--pix-fmt chooses another format)"
        ));
    }
    if src_depth > 8 && chosen_depth > 8 {
        notes.push(format!(
            "the input is {src_depth}-bit ({}): writing {chosen}; the model itself works on \
             8-bit RGB, so the output has 8-bit precision in a {chosen_depth}-bit format",
            req.source.unwrap_or("?")
        ));
    } else if src_depth > 8 {
        notes.push(format!(
            "the input is {src_depth}-bit ({}) but {codec} cannot write more than 8 bits here: \
             writing {chosen} (8-bit); --codec libx265 or libsvtav1 keep 10 bits",
            req.source.unwrap_or("?")
        ));
    }
    Ok((chosen, notes))
}

/// The pixel formats `codec` accepts, from `ffmpeg -h encoder=CODEC` (cached); `None` when
/// ffmpeg does not know the encoder or does not list formats for it.
fn encoder_pix_fmts(codec: &str) -> Option<Vec<String>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Option<Vec<String>>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(hit) = cache.lock().ok()?.get(codec) {
        return hit.clone();
    }
    let arg = format!("encoder={codec}");
    let found = run_to_end(
        super::ffmpeg_program(),
        ["-hide_banner", "-h", arg.as_str()],
        Path::new(codec),
    )
    .ok()
    .and_then(|out| {
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("Supported pixel formats:")
                    .map(str::to_string)
            })
            .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
            .filter(|l| !l.is_empty())
    });
    if let Ok(mut c) = cache.lock() {
        c.insert(codec.to_string(), found.clone());
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choose(
        requested: Option<&str>,
        source: Option<&str>,
        supported: Option<&[&str]>,
        w: usize,
        h: usize,
    ) -> Result<(String, Vec<String>), VideoError> {
        let list: Option<Vec<String>> =
            supported.map(|l| l.iter().map(|s| s.to_string()).collect());
        choose_pix_fmt(
            PixFmtRequest {
                requested,
                source,
                codec: Some("enc"),
                supported: list.as_deref(),
            },
            w,
            h,
            Path::new("o.mp4"),
        )
    }

    #[test]
    fn subtitle_and_audio_plans() {
        assert_eq!(subtitle_plan("mkv", "hdmv_pgs_subtitle"), Ok(None));
        assert_eq!(subtitle_plan("mkv", "mov_text"), Ok(Some("srt")));
        assert_eq!(subtitle_plan("mp4", "subrip"), Ok(Some("mov_text")));
        assert_eq!(subtitle_plan("webm", "mov_text"), Ok(Some("webvtt")));
        assert_eq!(subtitle_plan("webm", "dvd_subtitle"), Err(()));
        assert_eq!(subtitle_plan("avi", "mov_text"), Err(()));
        assert_eq!(audio_plan("mp4", "aac"), None);
        assert_eq!(audio_plan("mp4", "pcm_s16le"), Some("aac"));
        assert_eq!(audio_plan("webm", "aac"), Some("libopus"));
        assert_eq!(audio_plan("mkv", "pcm_s16le"), None);
        assert_eq!(audio_plan("flv", "opus"), Some("aac"));
    }

    #[test]
    fn pixel_format_names() {
        assert_eq!(chroma_and_depth("yuv420p10le"), (Chroma::S420, 10));
        assert_eq!(chroma_and_depth("yuvj444p"), (Chroma::S444, 8));
        assert_eq!(chroma_and_depth("yuv422p12le"), (Chroma::S422, 12));
        assert_eq!(chroma_and_depth("p010le"), (Chroma::S420, 10));
        assert_eq!(chroma_and_depth("gbrp10le"), (Chroma::S444, 10));
        assert_eq!(chroma_and_depth("rgb24"), (Chroma::S444, 8));
        assert_eq!(chroma_and_depth("nv12"), (Chroma::S420, 8));
        assert_eq!(yuv_pix_fmt(Chroma::S444, 16), "yuv444p12le");
    }

    #[test]
    fn odd_sizes_get_444_unless_420_is_asked_for() {
        let err = choose(Some("yuv420p"), None, None, 5, 4)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("odd size") && err.contains("--pix-fmt yuv444p"),
            "{err}"
        );
        let (p, notes) = choose(None, Some("yuv420p"), None, 5, 4).unwrap();
        assert_eq!(p, "yuv444p");
        assert!(notes[0].contains("odd side"), "{notes:?}");
        assert_eq!(
            choose(None, None, None, 6, 4).unwrap(),
            ("yuv420p".into(), vec![])
        );
        // 4:2:2 holds an odd height.
        assert_eq!(
            choose(Some("yuv422p"), None, None, 6, 5).unwrap().0,
            "yuv422p"
        );
    }

    #[test]
    fn ten_bit_input_stays_ten_bit_where_the_encoder_can() {
        let x264: &[&str] = &["yuv420p", "yuv444p", "yuv420p10le", "yuv444p10le"];
        let (p, notes) = choose(None, Some("yuv420p10le"), Some(x264), 64, 64).unwrap();
        assert_eq!(p, "yuv420p10le");
        assert!(
            notes[0].contains("10-bit") && notes[0].contains("8-bit RGB"),
            "{notes:?}"
        );
        let (p, _) = choose(None, Some("yuv444p12le"), Some(x264), 64, 64).unwrap();
        assert_eq!(p, "yuv444p10le");
        let (p, _) = choose(None, Some("yuv444p"), Some(x264), 64, 64).unwrap();
        assert_eq!(p, "yuv444p");
        let (p, notes) = choose(None, Some("yuv420p10le"), Some(&["yuv420p"]), 64, 64).unwrap();
        assert_eq!(p, "yuv420p");
        assert!(
            notes[0].contains("cannot write more than 8 bits"),
            "{notes:?}"
        );
        let prores: &[&str] = &["yuv422p10le", "yuv444p10le"];
        assert_eq!(
            choose(None, None, Some(prores), 64, 64).unwrap().0,
            "yuv422p10le"
        );
        let err = choose(Some("yuv420p10le"), None, Some(&["yuv420p"]), 64, 64).unwrap_err();
        assert!(
            err.to_string().contains("cannot encode pixel format"),
            "{err}"
        );
    }
}
