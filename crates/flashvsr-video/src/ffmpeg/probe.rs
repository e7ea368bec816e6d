//! Stream facts from `ffprobe -of json -show_format -show_streams`.

use std::path::Path;

use serde_json::Value;

use super::command::{failure_message, last_lines, run_to_end};
use super::{ffmpeg_url, ffprobe_program};
use crate::{ColorTags, DeclaredFrames, Rational, SourceOptions, VideoError, VideoInfo};

/// One non-video stream of the source: its absolute index and codec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StreamDesc {
    pub index: usize,
    pub codec: String,
}

/// What the decoder and the muxer need to know about a file.
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    /// Whole-file facts (no frame range applied).
    pub info: VideoInfo,
    /// Absolute index of the video stream that is decoded (first one that is not cover art).
    pub video_index: usize,
    pub audio: Vec<StreamDesc>,
    pub subtitles: Vec<StreamDesc>,
}

/// Relative difference above which `r_frame_rate` and `avg_frame_rate` count as different (VFR).
/// Exact comparison would flag CFR files whose average is a rounded fraction (2997/100).
const VFR_TOLERANCE: f64 = 1e-3;

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn known_tag(v: &Value, key: &str) -> Option<String> {
    str_field(v, key)
        .filter(|s| !matches!(*s, "unknown" | "unspecified" | "reserved" | ""))
        .map(str::to_string)
}

fn parse_num<T: std::str::FromStr>(v: Option<&Value>) -> Option<T> {
    match v? {
        Value::String(s) => s.trim().parse().ok(),
        n @ Value::Number(_) => n.to_string().parse().ok(),
        _ => None,
    }
}

/// Rotation from the display matrix side data (ffprobe 5+) or the legacy `rotate` tag.
fn rotation_of(stream: &Value) -> Option<i32> {
    let from_side_data = stream
        .get("side_data_list")
        .and_then(Value::as_array)
        .and_then(|list| {
            list.iter()
                .find_map(|sd| parse_num::<f64>(sd.get("rotation")).map(|r| r.round() as i32))
        });
    from_side_data
        .or_else(|| {
            parse_num::<f64>(stream.get("tags").and_then(|t| t.get("rotate")))
                .map(|r| r.round() as i32)
        })
        .filter(|r| *r != 0)
}

fn frame_count_of(stream: &Value) -> Option<u64> {
    parse_num::<u64>(stream.get("nb_frames"))
        .filter(|n| *n > 0)
        // Matroska statistics tags (`NUMBER_OF_FRAMES`, `NUMBER_OF_FRAMES-eng`).
        .or_else(|| stats_tag(stream, "NUMBER_OF_FRAMES").and_then(|v| parse_num::<u64>(Some(v))))
}

/// The first tag whose name starts with `prefix` (Matroska suffixes a language: `DURATION-eng`).
fn stats_tag<'a>(stream: &'a Value, prefix: &str) -> Option<&'a Value> {
    let tags = stream.get("tags")?.as_object()?;
    tags.iter()
        .find(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v)
}

/// `HH:MM:SS.fraction` (Matroska's `DURATION` statistics tag) in seconds.
fn parse_clock(text: &str) -> Option<f64> {
    let mut secs = 0.0;
    for part in text.trim().split(':') {
        secs = secs * 60.0 + part.parse::<f64>().ok()?;
    }
    Some(secs)
}

/// The video stream's own duration: its `duration`, else Matroska's `DURATION` tag.
fn stream_duration_of(stream: &Value) -> Option<f64> {
    parse_num::<f64>(stream.get("duration"))
        .or_else(|| {
            stats_tag(stream, "DURATION")
                .and_then(Value::as_str)
                .and_then(parse_clock)
        })
        .filter(|d| d.is_finite() && *d > 0.0)
}

/// Parses ffprobe's JSON output. `path` is for messages.
pub(crate) fn parse_probe_json(json: &str, path: &Path) -> Result<Probe, VideoError> {
    let root: Value = serde_json::from_str(json)
        .map_err(|e| VideoError::format(path, format!("cannot parse ffprobe output: {e}")))?;
    let streams = root
        .get("streams")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut video = None;
    let (mut audio, mut subtitles) = (Vec::new(), Vec::new());
    for (pos, s) in streams.iter().enumerate() {
        let index = parse_num::<usize>(s.get("index")).unwrap_or(pos);
        let codec = str_field(s, "codec_name").unwrap_or("unknown").to_string();
        match str_field(s, "codec_type") {
            Some("video") => {
                let cover_art = s
                    .get("disposition")
                    .and_then(|d| d.get("attached_pic"))
                    .and_then(Value::as_i64)
                    == Some(1);
                if video.is_none() && !cover_art {
                    video = Some((index, s));
                }
            }
            Some("audio") => audio.push(StreamDesc { index, codec }),
            Some("subtitle") => subtitles.push(StreamDesc { index, codec }),
            _ => {}
        }
    }
    let (video_index, v) = video.ok_or_else(|| VideoError::format(path, "no video stream"))?;
    let coded_w = parse_num::<usize>(v.get("width")).filter(|w| *w > 0);
    let coded_h = parse_num::<usize>(v.get("height")).filter(|h| *h > 0);
    let (Some(coded_w), Some(coded_h)) = (coded_w, coded_h) else {
        return Err(VideoError::format(path, "video stream has no frame size"));
    };
    let rotation = rotation_of(v);
    // ffmpeg auto-rotates while decoding, so a quarter turn swaps the delivered size.
    let (width, height) = match rotation {
        Some(r) if r.rem_euclid(180) == 90 => (coded_h, coded_w),
        _ => (coded_w, coded_h),
    };
    let r_rate = str_field(v, "r_frame_rate").and_then(Rational::parse);
    let avg_rate = str_field(v, "avg_frame_rate").and_then(Rational::parse);
    let variable_frame_rate = match (r_rate, avg_rate) {
        (Some(r), Some(a)) => ((r.as_f64() - a.as_f64()) / a.as_f64()).abs() > VFR_TOLERANCE,
        _ => false,
    };
    let fps = match (r_rate, avg_rate) {
        (_, Some(a)) if variable_frame_rate => a,
        (Some(r), _) => r,
        (None, Some(a)) => a,
        (None, None) => return Err(VideoError::format(path, "video stream has no frame rate")),
    };
    let duration_s = parse_num::<f64>(root.get("format").and_then(|f| f.get("duration")))
        .or_else(|| parse_num::<f64>(v.get("duration")))
        .filter(|d| d.is_finite() && *d > 0.0);
    let frame_count = frame_count_of(v);
    // The video stream's duration first: the container's may include longer audio.
    let declared_frames = frame_count.map(DeclaredFrames::Counted).or_else(|| {
        stream_duration_of(v)
            .or(duration_s)
            .map(|d| DeclaredFrames::FromDuration((d * fps.as_f64()).round() as u64))
    });
    let info = VideoInfo {
        width,
        height,
        fps,
        frame_count,
        duration_s,
        has_audio: !audio.is_empty(),
        has_subtitles: !subtitles.is_empty(),
        rotation,
        color: ColorTags {
            primaries: known_tag(v, "color_primaries"),
            transfer: known_tag(v, "color_transfer"),
            matrix: known_tag(v, "color_space"),
            range: known_tag(v, "color_range"),
        },
        variable_frame_rate,
        declared_frames,
        pix_fmt: str_field(v, "pix_fmt").map(str::to_string),
    };
    Ok(Probe {
        info,
        video_index,
        audio,
        subtitles,
    })
}

/// Runs ffprobe on `path`.
pub(crate) fn probe(path: &Path) -> Result<Probe, VideoError> {
    super::require_ffmpeg()?;
    let args = [
        "-v",
        "error",
        "-of",
        "json",
        "-show_format",
        "-show_streams",
        "-i",
    ]
    .map(std::ffi::OsString::from)
    .into_iter()
    .chain([ffmpeg_url(path, false)]);
    let out = run_to_end(ffprobe_program(), args, path)?;
    if !out.status.success() {
        let tail = last_lines(&out.stderr, 6);
        return Err(VideoError::Ffmpeg {
            path: path.to_path_buf(),
            msg: format!("ffprobe {}", failure_message(Some(out.status), &tail)),
        });
    }
    parse_probe_json(&String::from_utf8_lossy(&out.stdout), path)
}

/// Whole-file info narrowed to the selected frame range.
pub(crate) fn info_for_range(info: &VideoInfo, opts: &SourceOptions) -> VideoInfo {
    let mut out = info.clone();
    let ranged = opts.start_frame > 0 || opts.end_frame.is_some();
    if ranged {
        out.frame_count = info.frame_count.map(|n| opts.selected_count(n));
        out.duration_s = out.frame_count.map(|n| n as f64 / info.fps.as_f64());
        out.declared_frames = info.declared_frames.map(|d| d.for_range(opts));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rotation_vfr_and_colour() {
        let json = r#"{"streams":[
          {"index":0,"codec_type":"video","codec_name":"mjpeg","width":10,"height":10,"r_frame_rate":"90000/1","avg_frame_rate":"0/0","disposition":{"attached_pic":1}},
          {"index":1,"codec_type":"video","codec_name":"h264","width":1920,"height":1080,
           "r_frame_rate":"30/1","avg_frame_rate":"2400/100","nb_frames":"48",
           "color_space":"bt709","color_range":"tv","color_primaries":"unknown",
           "side_data_list":[{"side_data_type":"Display Matrix","rotation":-90}]},
          {"index":2,"codec_type":"audio","codec_name":"aac"},
          {"index":3,"codec_type":"subtitle","codec_name":"mov_text"}],
          "format":{"duration":"2.000000"}}"#;
        let p = parse_probe_json(json, Path::new("x.mp4")).unwrap();
        assert_eq!(p.video_index, 1);
        assert_eq!((p.info.width, p.info.height), (1080, 1920));
        assert_eq!(p.info.rotation, Some(-90));
        assert!(p.info.variable_frame_rate);
        assert_eq!(p.info.fps, Rational::new(24, 1));
        assert_eq!(p.info.frame_count, Some(48));
        assert_eq!(p.info.declared_frames, Some(DeclaredFrames::Counted(48)));
        assert_eq!(p.info.color.matrix.as_deref(), Some("bt709"));
        assert_eq!(p.info.color.primaries, None);
        assert!(p.info.has_audio && p.info.has_subtitles);
        assert_eq!(
            p.subtitles[0],
            StreamDesc {
                index: 3,
                codec: "mov_text".into()
            }
        );
    }

    #[test]
    fn frames_declared_by_duration_and_pixel_format() {
        // Matroska: no sample count, the duration in a tag; the audio makes the file longer.
        let json = r#"{"streams":[
          {"index":0,"codec_type":"video","codec_name":"h264","width":64,"height":48,
           "pix_fmt":"yuv420p10le","r_frame_rate":"30/1","avg_frame_rate":"30/1",
           "tags":{"DURATION":"00:00:01.000000000"}}],
          "format":{"duration":"1.500000"}}"#;
        let p = parse_probe_json(json, Path::new("x.mkv")).unwrap();
        assert_eq!(p.info.frame_count, None);
        assert_eq!(
            p.info.declared_frames,
            Some(DeclaredFrames::FromDuration(30))
        );
        assert_eq!(p.info.pix_fmt.as_deref(), Some("yuv420p10le"));
        let ranged = info_for_range(
            &p.info,
            &SourceOptions {
                start_frame: 10,
                ..Default::default()
            },
        );
        assert_eq!(
            ranged.declared_frames,
            Some(DeclaredFrames::FromDuration(20))
        );
    }

    #[test]
    fn no_video_is_an_error() {
        let err = parse_probe_json(
            r#"{"streams":[{"index":0,"codec_type":"audio"}]}"#,
            Path::new("a.m4a"),
        );
        assert!(err
            .unwrap_err()
            .to_string()
            .contains("a.m4a: no video stream"));
    }
}
