//! The Ray driver (`scripts/ray_upscale.py`) on a local CPU cluster (`num_cpus = 2`) through the
//! built binary and small synthetic weights: a 3-segment job whose first attempt at segment 1 is
//! killed mid-run equals one uninterrupted run within the join tolerance, with the source's
//! audio copied once, and leaves no flashvsr behind; a half-finished job resumes from the
//! segments on disk; a folder of clips (mp4 and y4m) is one job.
//!
//! Needs python3 with `ray` (`.ci/run` installs it) and ffmpeg.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{flashvsr, isolated, ok};

const FRAMES: usize = 72;
/// Segment 1 (frames 21..45) warms up from frame 0; segment 2 (45..72) from frame 24.
const EXACT_FRAMES: usize = 45;
/// Output frames are 128x128 (32x32 input, ×4).
const FRAME_BYTES: usize = 128 * 128 * 3;
/// The join tolerance of the model test (crates/flashvsr-model/tests/segments.rs): 40 dB, an
/// RMS error of 2.5 levels, against ~17 dB for a join without warm-up.
const JOIN_PSNR_DB: f64 = 40.0;

fn driver() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/ray_upscale.py")
}

/// ffmpeg's stdout (support::ffmpeg asserts success only).
fn ffmpeg_out(args: &[&str]) -> Vec<u8> {
    let o = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y"])
        .args(args)
        .output()
        .expect("ffmpeg is installed");
    assert!(
        o.status.success(),
        "ffmpeg {args:?}: {}",
        support::stderr(&o)
    );
    o.stdout
}

/// The decoded frames of a video, RGB24.
fn frames(path: &Path) -> Vec<Vec<u8>> {
    let raw = ffmpeg_out(&[
        "-i",
        path.to_str().unwrap(),
        // Frames as stored (no frame duplicated for the audio-priming start offset).
        "-fps_mode",
        "passthrough",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-",
    ]);
    assert_eq!(raw.len() % FRAME_BYTES, 0);
    raw.chunks(FRAME_BYTES).map(<[u8]>::to_vec).collect()
}

fn audio_packets_md5(path: &Path) -> Vec<u8> {
    ffmpeg_out(&[
        "-i",
        path.to_str().unwrap(),
        "-map",
        "0:a",
        "-c",
        "copy",
        "-f",
        "md5",
        "-",
    ])
}

fn psnr(a: &[u8], b: &[u8]) -> f64 {
    let mse = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    10.0 * (255.0f64 * 255.0 / mse).log10()
}

/// Every frame of `got` against `want`: the same count, bit-identical up to `exact`, within the
/// join tolerance after.
fn assert_matches(what: &str, got: &[Vec<u8>], want: &[Vec<u8>], exact: usize) {
    assert_eq!(got.len(), want.len(), "{what}: every frame, once");
    for f in 0..exact {
        assert!(
            got[f] == want[f],
            "{what}: frame {f} differs from the single run"
        );
    }
    let p: Vec<f64> = (exact..got.len())
        .map(|f| psnr(&got[f], &want[f]))
        .collect();
    eprintln!("{what}: PSNR vs the single run from frame {exact}: {p:.1?}");
    assert!(
        p.iter().all(|&v| v >= JOIN_PSNR_DB),
        "{what}: join PSNR {p:?}"
    );
}

/// The encoder settings for the single runs and every segment: lossless, so that frames compare
/// as the model made them (up to the shared RGB → YUV 4:4:4 rounding).
fn lossless() -> Vec<&'static str> {
    vec!["--codec", "ffv1", "--pix-fmt", "yuv444p"]
}

struct Job {
    home: PathBuf,
    weights: PathBuf,
    /// python3's user site as seen outside the isolated environment (a `pip install --user`
    /// ray must stay importable with HOME moved).
    user_base: String,
}

impl Job {
    fn new(home: &Path) -> Job {
        let ray = Command::new("python3")
            .args(["-c", "import ray, site; print(site.getuserbase())"])
            .output();
        let user_base = match ray {
            Ok(o) if o.status.success() => support::stdout(&o).trim().to_string(),
            _ => panic!(
                "this test needs python3 with ray (python3 -m pip install ray==2.60.0, as .ci/run does)"
            ),
        };
        let weights = home.join("w");
        ok(&flashvsr(home)
            .args(["-q", "synth-weights"])
            .arg(&weights)
            .output()
            .unwrap());
        Job {
            home: home.to_path_buf(),
            weights,
            user_base,
        }
    }

    fn weight_args(&self) -> Vec<String> {
        let w = self.weights.to_str().unwrap().to_string();
        vec!["--weights".into(), w, "--device".into(), "cpu".into()]
    }

    /// One uninterrupted `upscale` run.
    fn single(&self, input: &Path, output: &Path, encoder: &[&str]) {
        ok(&flashvsr(&self.home)
            .args(["-q", "upscale"])
            .arg(input)
            .arg(output)
            .args(self.weight_args())
            .args(encoder)
            .output()
            .unwrap());
    }

    /// The driver in the binary's isolated environment; `kill` = the index of the segment whose
    /// first attempt is killed. Returns the JSON summary.
    fn ray(
        &self,
        input: &Path,
        output: &Path,
        encoder: &[&str],
        kill: Option<usize>,
    ) -> serde_json::Value {
        let mut cmd = isolated("python3", &self.home);
        cmd.arg(driver())
            .arg(input)
            .arg(output)
            .args(["--flashvsr", env!("CARGO_BIN_EXE_flashvsr")])
            .args(["--segment-frames", "21", "--warmup", "21"])
            .args([
                "--num-cpus",
                "2",
                "--gpus-per-task",
                "0",
                "--max-retries",
                "2",
            ])
            .args(["--keep-segments", "-y", "--json", "--"])
            .args(self.weight_args())
            .args(encoder)
            .env("PYTHONUSERBASE", &self.user_base)
            .env("RAY_DISABLE_USAGE_STATS", "1")
            .env_remove("RAY_ADDRESS")
            .env_remove("FLASHVSR_RAY_TEST_KILL_SEGMENT");
        if let Some(i) = kill {
            cmd.env("FLASHVSR_RAY_TEST_KILL_SEGMENT", i.to_string());
        }
        let o: Output = cmd.output().unwrap();
        let out = ok(&o);
        let last = out.lines().last().unwrap_or_default();
        serde_json::from_str(last)
            .unwrap_or_else(|e| panic!("driver summary: {e}\n{out}\n{}", support::stderr(&o)))
    }
}

/// A 32x32 testsrc2 clip of `seconds` at 24 fps, with a sine as AAC audio.
fn clip_with_audio(path: &Path, seconds: u32) {
    support::ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &format!("testsrc2=size=32x32:rate=24:duration={seconds}"),
        "-f",
        "lavfi",
        "-i",
        &format!("sine=frequency=440:duration={seconds}"),
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-shortest",
        path.to_str().unwrap(),
    ]);
}

#[test]
fn ray_job_of_three_segments_matches_one_run_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let job = Job::new(dir);
    let input = dir.join("in.mp4");
    clip_with_audio(&input, 3);

    // The plan comes from the engine.
    let plan = ok(&flashvsr(dir)
        .arg("plan-segments")
        .arg(&input)
        .args(["--segment-frames", "21", "--warmup", "21", "--json"])
        .output()
        .unwrap());
    let plan: serde_json::Value = serde_json::from_str(&plan).unwrap();
    assert_eq!(plan["total_frames"], FRAMES);
    let bounds: Vec<&str> = plan["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["frames_arg"].as_str().unwrap())
        .collect();
    assert_eq!(bounds, ["0:21", "21:45", "45:"]);

    let single = dir.join("single.mkv");
    job.single(&input, &single, &lossless());
    let want = frames(&single);
    assert_eq!(want.len(), FRAMES);

    // The first attempt at segment 1 kills its worker while its flashvsr runs; Ray retries it.
    let output = dir.join("out.mkv");
    let summary = job.ray(&input, &output, &lossless(), Some(1));
    assert_eq!(summary["segments"], 3, "{summary}");
    assert_eq!(summary["segments_run"], 3, "{summary}");
    let work = dir.join("out.mkv.segments");
    let marker = std::fs::read_to_string(work.join(".killed_segment_1"))
        .expect("the test hook did not kill segment 1's first attempt");
    // The killed attempt's flashvsr died with its worker: an orphan would have run on beside
    // the retry and, done, left its output under the dead worker's temporary name.
    let pid = marker.trim();
    let runs = || {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        String::from_utf8_lossy(&cmdline).contains("flashvsr")
    };
    let t0 = std::time::Instant::now();
    while runs() && t0.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let left: Vec<String> = support::names_in(&work)
        .into_iter()
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(
        left.is_empty(),
        "the killed attempt's flashvsr (pid {pid}) ran on after its worker died: {left:?}"
    );
    // Where the warm-up reaches frame 0 the join is exact; after the join at frame 45 (warm-up
    // from frame 24) measured 51.8 dB rising to 68 dB on these weights.
    let got = frames(&output);
    assert_matches("3 segments", &got, &want, EXACT_FRAMES);
    assert_even_frame_times(&output, FRAMES);
    // The source's audio, copied once, packet for packet, in sync as in the single run.
    assert_eq!(audio_packets_md5(&output), audio_packets_md5(&input));
    let (lead, single_lead) = (audio_lead(&output), audio_lead(&single));
    assert!(
        (lead - single_lead).abs() < 2e-3,
        "audio {lead} s after the video, single run {single_lead}"
    );

    // Resume: with segment 2 lost, only it runs again, and the output is the same.
    std::fs::remove_file(work.join("segment_00002.mkv")).unwrap();
    let summary = job.ray(&input, &output, &lossless(), None);
    assert_eq!(summary["segments_reused"], 2, "{summary}");
    assert_eq!(summary["segments_run"], 1, "{summary}");
    assert!(frames(&output) == got, "the resumed job's output differs");
}

/// Presentation times of a video's frames, in seconds.
fn frame_times(path: &Path) -> Vec<f64> {
    let o = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .args(["frame=pts_time", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .unwrap();
    support::stdout(&o)
        .lines()
        // One line per frame, `0.000000,` where side data follows on lines of its own.
        .filter_map(|l| l.split(',').next()?.trim().parse().ok())
        .collect()
}

/// Where the audio starts relative to the video, in seconds (A/V sync).
fn audio_lead(path: &Path) -> f64 {
    let start = |stream: &str| -> f64 {
        let o = Command::new("ffprobe")
            .args(["-v", "error", "-select_streams", stream, "-show_entries"])
            .args(["stream=start_time", "-of", "csv=p=0"])
            .arg(path)
            .output()
            .unwrap();
        let text = support::stdout(&o);
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{}: {stream} start {text:?}", path.display()))
    };
    start("a:0") - start("v:0")
}

/// `n` frames at 24 fps, evenly spaced (no gap at the joins), and the audio where the single
/// run has it relative to the video.
fn assert_even_frame_times(path: &Path, n: usize) {
    let times = frame_times(path);
    assert_eq!(times.len(), n, "{}: frame times {times:?}", path.display());
    for (i, t) in times.iter().enumerate() {
        // Matroska stores milliseconds.
        let want = times[0] + i as f64 / 24.0;
        assert!(
            (t - want).abs() < 1.5e-3,
            "{}: frame {i} at {t}, not {want}: {times:?}",
            path.display()
        );
    }
}

#[test]
fn ray_job_of_a_folder_upscales_every_clip() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let job = Job::new(dir);
    let clips = dir.join("clips");
    std::fs::create_dir(&clips).unwrap();
    // mp4 with audio through the default encoder (libx264), and a y4m (joined without ffmpeg).
    let mp4 = clips.join("a.mp4");
    clip_with_audio(&mp4, 2);
    let y4m = clips.join("b.y4m");
    std::fs::write(&y4m, support::y4m_bytes(32, 32, 50)).unwrap();
    std::fs::write(clips.join("notes.txt"), "not a video").unwrap();

    let out = dir.join("upscaled");
    let summary = job.ray(&clips, &out, &[], None);
    assert_eq!(summary["clips"], 2, "{summary}");
    // 48 frames: 0..21, 21..48; 50 frames: 0..21, 21..50 (short tails merged).
    assert_eq!(summary["segments"], 4, "{summary}");
    assert_eq!(support::names_in(&out), ["a.mp4", "b.y4m"]);

    // y4m: both segments warm up from frame 0, so the joined file is the single run's, byte
    // for byte.
    let single_y4m = dir.join("b.y4m");
    job.single(&y4m, &single_y4m, &[]);
    assert!(
        std::fs::read(out.join("b.y4m")).unwrap() == std::fs::read(&single_y4m).unwrap(),
        "the joined y4m differs from the single run"
    );

    // mp4: the same model frames through two lossy encodes of the same settings (one per
    // segment vs one for the clip): every frame once, in place, at the source's rate.
    let single_mp4 = dir.join("a.mp4");
    job.single(&mp4, &single_mp4, &[]);
    let (got, want) = (frames(&out.join("a.mp4")), frames(&single_mp4));
    assert_eq!(got.len(), 48);
    assert_eq!(got.len(), want.len());
    let p: Vec<f64> = (0..got.len()).map(|f| psnr(&got[f], &want[f])).collect();
    let shifted = psnr(&got[21], &want[20]).max(psnr(&got[21], &want[22]));
    eprintln!(
        "mp4 segments vs one encode, per frame: {p:.1?}; frame 21 vs its neighbours: {shifted:.1}"
    );
    // Measured 30.8 to 37 dB where the encodes differ (identical elsewhere); a frame out of
    // place compares at ~11 dB.
    let min = p.iter().cloned().fold(f64::INFINITY, f64::min);
    assert!(
        min >= 25.0 && min > shifted + 10.0,
        "mp4 frames {p:?} (shifted {shifted:.1})"
    );
    assert_even_frame_times(&out.join("a.mp4"), 48);
    assert_eq!(
        audio_packets_md5(&out.join("a.mp4")),
        audio_packets_md5(&mp4)
    );
    let (lead, single_lead) = (audio_lead(&out.join("a.mp4")), audio_lead(&single_mp4));
    assert!(
        (lead - single_lead).abs() < 2e-3,
        "audio {lead} s after the video, single run {single_lead}"
    );
}
