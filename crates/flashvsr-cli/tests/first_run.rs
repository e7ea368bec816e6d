//! What a new user meets on a first run: progress that moves from the first frame with a total
//! even for containers that state only a duration, video never dumped on a terminal, a JSON
//! failure object with `--json`, checks that need the frame count done before the weights load,
//! `HF_HUB_OFFLINE` honoured everywhere, singular counts, readable frame rates, the CPU bench
//! saying what it costs, and synthetic weights readable by everyone.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;

use support::hub::{Fault, HubEmulator};
use support::{
    assert_error, ffmpeg, flashvsr, isolated, ok, stderr, stdout, tiny, upscale, y4m_bytes,
};

fn y4m_clip(dir: &Path, n: usize) -> std::path::PathBuf {
    let p = dir.join("in.y4m");
    std::fs::write(&p, y4m_bytes(16, 16, n)).unwrap();
    p
}

#[test]
fn progress_counts_frames_read_and_estimates_the_total_from_the_duration() {
    let tmp = tempfile::tempdir().unwrap();
    // Matroska states no frame count, only the duration: 24 frames at 24 fps.
    let input = tmp.path().join("in.mkv");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=16x16:rate=24:duration=1",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv444p",
        input.to_str().unwrap(),
    ]);
    let o = upscale(tmp.path(), &input, &tmp.path().join("out.y4m"), &[]);
    ok(&o);
    let err = stderr(&o);
    // Plain progress (stderr is not a terminal): the first line comes at the first frame read,
    // before the model has returned anything.
    let first = err
        .lines()
        .find(|l| l.starts_with("upscaling: "))
        .unwrap_or_else(|| panic!("no progress line: {err}"));
    assert!(
        first.starts_with("upscaling: 1/~24 in, 0 out, "),
        "first progress line: {first}"
    );
    let last = err.lines().rfind(|l| l.starts_with("upscaling: ")).unwrap();
    assert!(last.starts_with("upscaling: 24/~24 in, 24 out, "), "{last}");
    // Rates are rounded to what matters (no 4-decimal rates).
    for line in err.lines().filter(|l| l.contains(" fps")) {
        let rate = line
            .split(" fps")
            .next()
            .unwrap()
            .rsplit([' ', '('])
            .next()
            .unwrap();
        let decimals = rate.split('.').nth(1).map_or(0, str::len);
        assert!(decimals <= 2, "rate {rate} in {line}");
    }
}

#[test]
fn video_is_not_written_to_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let input = y4m_clip(tmp.path(), 1);
    // `script` runs the command on a pseudo-terminal (stdin, stdout and stderr).
    let cmd = format!(
        "{} upscale {} - --weights {} --head-dim 32 --device cpu",
        env!("CARGO_BIN_EXE_flashvsr"),
        input.display(),
        tiny().display()
    );
    let o = isolated("script", tmp.path())
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("`script` (util-linux) is installed");
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        text.contains("error: refusing to write y4m video to a terminal"),
        "{text}"
    );
    assert!(!text.contains("YUV4MPEG2"), "video reached the terminal");
}

#[test]
fn json_failures_print_a_failure_object() {
    let tmp = tempfile::tempdir().unwrap();
    let o = flashvsr(tmp.path())
        .args(["upscale", "missing.mp4", "out.mp4", "--json"])
        .output()
        .unwrap();
    assert_error(&o, &["missing.mp4", "does not exist"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o))
        .unwrap_or_else(|e| panic!("{e}: stdout {:?}", stdout(&o)));
    assert_eq!(v["command"], "upscale");
    assert_eq!(v["ok"], false);
    assert_eq!(v["exit_code"], 1);
    assert_eq!(v["interrupted"], false);
    assert!(
        v["error"].as_str().unwrap().contains("does not exist"),
        "{v}"
    );
    // With the video on stdout the object goes to stderr, like the summary.
    let o = flashvsr(tmp.path())
        .args(["upscale", "missing.y4m", "-", "--json"])
        .output()
        .unwrap();
    assert!(o.stdout.is_empty());
    let err = stderr(&o);
    let v: serde_json::Value = serde_json::from_str(err.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: stderr {err:?}"));
    assert_eq!(v["ok"], false, "{err}");
    // bench too.
    let o = flashvsr(tmp.path())
        .args(["bench", "--device", "cuda:7", "--json"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        (v["command"].as_str(), v["ok"].as_bool()),
        (Some("bench"), Some(false))
    );
}

#[test]
fn upstream_compat_with_too_few_frames_is_refused_before_the_weights_load() {
    let tmp = tempfile::tempdir().unwrap();
    // 32x32: upscaled x4 it is one 128-px tile, so upstream's crop rule (checked with the output
    // before the weights load) accepts the size and only the frame count can stop the run.
    let clip = |n: usize| {
        let p = tmp.path().join("in.y4m");
        std::fs::write(&p, y4m_bytes(32, 32, n)).unwrap();
        p
    };
    let input = clip(20);
    // No weights anywhere: the frame rule must be what stops the run.
    let o = flashvsr(tmp.path())
        .arg("upscale")
        .arg(&input)
        .args(["out.y4m", "--upstream-compat"])
        .output()
        .unwrap();
    assert_error(&o, &["--upstream-compat", "20 input frames", "at least 21"]);
    // A frame range is counted too.
    let input = clip(30);
    let o = flashvsr(tmp.path())
        .arg("upscale")
        .arg(&input)
        .args(["out.y4m", "--upstream-compat", "--frames", "10:"])
        .output()
        .unwrap();
    assert_error(&o, &["--upstream-compat", "20 input frames"]);
    // 21 frames pass the check (and stop at the missing weights).
    let o = flashvsr(tmp.path())
        .arg("upscale")
        .arg(&input)
        .args(["out.y4m", "--upstream-compat", "--frames", "9:"])
        .output()
        .unwrap();
    assert_error(&o, &["no FlashVSR weights found"]);
}

/// A Hub imitation with the fixture's files, and a manifest for them.
fn hub_with_fixture(dir: &Path) -> (HubEmulator, std::path::PathBuf) {
    let hub = HubEmulator::start();
    let repo = "Test/FlashVSR-v1.1";
    let mut files = Vec::new();
    for (name, role) in [
        ("diffusion_pytorch_model_streaming_dmd.safetensors", "dit"),
        ("LQ_proj_in.ckpt", "lq_proj"),
        ("TCDecoder.ckpt", "tc_decoder"),
    ] {
        let bytes = std::fs::read(tiny().join(name)).unwrap();
        let sha = hub.add_hub_file(repo, name, bytes.clone(), Fault::default());
        files.push(
            serde_json::json!({"path": name, "role": role, "bytes": bytes.len(), "sha256": sha}),
        );
    }
    let prompt = std::fs::read(tiny().join("posi_prompt.pth")).unwrap();
    let sha = hub.add_raw_file("posi_prompt.pth", prompt.clone(), Fault::default());
    files.push(serde_json::json!({
        "path": "posi_prompt.pth", "role": "prompt", "bytes": prompt.len(), "sha256": sha,
        "url": hub.raw_url("posi_prompt.pth")
    }));
    let manifest = dir.join("m.json");
    std::fs::write(
        &manifest,
        serde_json::to_vec(&serde_json::json!({
            "name": "t", "model_version": "v1.1", "hf_repo": repo, "revision": "main", "files": files
        }))
        .unwrap(),
    )
    .unwrap();
    (hub, manifest)
}

#[test]
fn hf_hub_offline_is_honoured_by_download_and_by_the_weights_search() {
    let tmp = tempfile::tempdir().unwrap();
    let (hub, manifest) = hub_with_fixture(tmp.path());
    let offline = |args: &[&str]| {
        flashvsr(tmp.path())
            .args(args)
            .env("HF_ENDPOINT", &hub.base)
            .env("FLASHVSR_MANIFEST", &manifest)
            .output()
            .unwrap()
    };
    let o = offline(&["download"]);
    assert_error(&o, &["not in the Hugging Face cache", "HF_HUB_OFFLINE"]);
    // A folder with everything but the prompt (common for ComfyUI folders) would fetch the
    // prompt: offline it says so instead.
    let partial = tmp.path().join("models");
    std::fs::create_dir(&partial).unwrap();
    for f in [
        "diffusion_pytorch_model_streaming_dmd.safetensors",
        "LQ_proj_in.ckpt",
        "TCDecoder.ckpt",
    ] {
        std::fs::copy(tiny().join(f), partial.join(f)).unwrap();
    }
    let input = y4m_clip(tmp.path(), 1);
    let o = flashvsr(tmp.path())
        .arg("upscale")
        .arg(&input)
        .args(["out.y4m", "--head-dim", "32", "--device", "cpu"])
        .env("FLASHVSR_MODELS", &partial)
        .env("HF_ENDPOINT", &hub.base)
        .env("FLASHVSR_MANIFEST", &manifest)
        .output()
        .unwrap();
    assert_error(&o, &["HF_HUB_OFFLINE"]);
    assert!(
        hub.log().is_empty(),
        "offline runs reached the network: {:?}",
        hub.log()
    );

    // Online, `download` fills the cache; offline it then finds it there.
    let o = flashvsr(tmp.path())
        .arg("download")
        .env_remove("HF_HUB_OFFLINE")
        .env("HF_ENDPOINT", &hub.base)
        .env("FLASHVSR_MANIFEST", &manifest)
        .output()
        .unwrap();
    ok(&o);
    hub.clear_log();
    let o = offline(&["download"]);
    let dir = ok(&o);
    assert!(
        Path::new(dir.trim()).join("TCDecoder.ckpt").exists(),
        "{dir}"
    );
    assert!(hub.log().is_empty(), "{:?}", hub.log());
}

#[test]
fn one_frame_is_one_frame() {
    let tmp = tempfile::tempdir().unwrap();
    let input = y4m_clip(tmp.path(), 1);
    let o = upscale(tmp.path(), &input, &tmp.path().join("out.y4m"), &[]);
    ok(&o);
    let err = stderr(&o);
    assert!(err.contains(": 1 frame 16x16 → 64x64 in "), "{err}");
    assert!(!err.contains("1 frames"), "{err}");
}

#[test]
fn variable_frame_rate_note_shows_a_readable_rate() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("vfr.mp4");
    // 10 frames 50 ms apart, then 10 frames 25 ms apart: r_frame_rate 40, average 800/33.
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=16x16:rate=20:duration=1",
        "-vf",
        "settb=1/1000,setpts='if(lt(N,10),N*50,500+(N-10)*25)'",
        "-fps_mode",
        "vfr",
        "-enc_time_base",
        "1:1000",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv444p",
        input.to_str().unwrap(),
    ]);
    let o = upscale(tmp.path(), &input, &tmp.path().join("out.y4m"), &[]);
    ok(&o);
    let err = stderr(&o);
    let note = err
        .lines()
        .find(|l| l.contains("variable frame rate"))
        .unwrap_or_else(|| panic!("no VFR note: {err}"));
    assert!(note.ends_with("average rate 24.24 fps"), "{note}");
}

#[test]
fn bench_on_the_cpu_says_what_real_dims_cost() {
    let tmp = tempfile::tempdir().unwrap();
    // Without --dims the CPU gets the small model, and says so.
    let o = flashvsr(tmp.path())
        .args([
            "bench", "--device", "cpu", "--size", "32x32", "--frames", "1", "--json",
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(v["dims"], "small");
    assert!(stderr(&o).contains("take minutes here"), "{}", stderr(&o));
    // --dims real on the CPU: said before the work starts (the run is stopped right there).
    let mut child = flashvsr(tmp.path())
        .args([
            "bench", "--device", "cpu", "--dims", "real", "--frames", "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(line.contains("real dims on the CPU take minutes"), "{line}");
}

#[cfg(unix)]
#[test]
fn synthetic_weights_are_readable_by_everyone() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("w");
    // Even under a private umask: weights are data to share.
    ok(&isolated("sh", tmp.path())
        .arg("-c")
        .arg("umask 077; exec \"$0\" synth-weights \"$1\"")
        .arg(env!("CARGO_BIN_EXE_flashvsr"))
        .arg(&dir)
        .output()
        .unwrap());
    for e in std::fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        let mode = e.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "{:?} has mode {mode:o}", e.file_name());
    }
}
