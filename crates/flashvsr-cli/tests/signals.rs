//! Signals: SIGINT (Ctrl-C, also to the whole process group with ffmpeg children), SIGTERM and
//! SIGHUP stop a run cleanly (exit 130, "interrupted", no output and no partial file); what a
//! SIGKILL leaves behind, the next run into the same folder removes.

#![cfg(unix)]

mod support;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::{ffmpeg, flashvsr, names_in, ok, tiny, upscale, y4m_bytes};

/// Frames in the long clip: enough that a run is still busy when the signal comes.
const LONG_CLIP: usize = 400;

/// `upscale IN OUT` on the fixture weights, started in its own process group, with its stderr
/// lines sent to the returned channel.
fn spawn_upscale(home: &Path, input: &Path, output: &str) -> (Child, mpsc::Receiver<String>) {
    let mut child = flashvsr(home)
        .arg("upscale")
        .arg(input)
        .arg(output)
        .arg("--weights")
        .arg(tiny())
        .args(["--head-dim", "32", "--device", "cpu"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Waits until the run reports its first frame read (the model loop has started).
fn wait_for_progress(rx: &mpsc::Receiver<String>, seen: &mut Vec<String>) {
    loop {
        match rx.recv_timeout(Duration::from_secs(300)) {
            Ok(line) => {
                let started = line.starts_with("upscaling: ");
                seen.push(line);
                if started {
                    return;
                }
            }
            Err(e) => panic!("no progress line ({e}); stderr so far: {seen:?}"),
        }
    }
}

fn kill(signal: &str, target: &str) {
    let o = Command::new("kill")
        .args(["-s", signal, "--", target])
        .output()
        .unwrap();
    assert!(o.status.success(), "kill -s {signal} {target}: {o:?}");
}

/// Waits for the run to end; returns its exit code and its whole stderr.
fn finish(mut child: Child, rx: mpsc::Receiver<String>, mut seen: Vec<String>) -> (i32, String) {
    let status = child.wait().unwrap();
    seen.extend(rx.iter());
    (status.code().unwrap_or(-1), seen.join("\n"))
}

fn long_y4m(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("in.y4m");
    std::fs::write(&p, y4m_bytes(16, 16, LONG_CLIP)).unwrap();
    p
}

#[test]
fn sigterm_sighup_and_sigint_stop_cleanly_with_130() {
    for signal in ["TERM", "HUP", "INT"] {
        let tmp = tempfile::tempdir().unwrap();
        let input = long_y4m(tmp.path());
        let (child, rx) = spawn_upscale(tmp.path(), &input, "out.mp4");
        let mut seen = Vec::new();
        wait_for_progress(&rx, &mut seen);
        kill(signal, &child.id().to_string());
        let (code, err) = finish(child, rx, seen);
        assert_eq!(code, 130, "SIG{signal}: {err}");
        assert!(
            err.contains("error: interrupted; no output was written"),
            "SIG{signal}: {err}"
        );
        assert_eq!(
            names_in(tmp.path()),
            ["in.y4m"],
            "SIG{signal} left files behind"
        );
    }
}

/// Ctrl-C in a terminal signals the whole process group: flashvsr and its ffmpeg decoder and
/// encoder. The run must still end as "interrupted" (130), not as an ffmpeg failure.
/// (Fully robust once the video crate's ffmpeg children ignore SIGINT, issue 15 item 4.)
#[test]
fn ctrl_c_to_the_process_group_with_ffmpeg_input_and_output_exits_130() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &format!("testsrc2=size=16x16:rate=25:duration={}", LONG_CLIP / 25),
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv444p",
        input.to_str().unwrap(),
    ]);
    let (child, rx) = spawn_upscale(tmp.path(), &input, "out.mp4");
    let mut seen = Vec::new();
    wait_for_progress(&rx, &mut seen);
    // The group id is the child's pid (process_group(0)).
    kill("INT", &format!("-{}", child.id()));
    let (code, err) = finish(child, rx, seen);
    assert_eq!(code, 130, "{err}");
    assert!(err.contains("error: interrupted"), "{err}");
    assert!(!err.contains("ffmpeg failed"), "{err}");
    assert_eq!(names_in(tmp.path()), ["in.mp4"], "files left behind");
}

#[test]
fn the_next_run_removes_what_a_killed_run_left() {
    let tmp = tempfile::tempdir().unwrap();
    let input = long_y4m(tmp.path());
    // The y4m writer creates its partial file when it opens (ffmpeg only at its first frame).
    let (child, rx) = spawn_upscale(tmp.path(), &input, "out.y4m");
    let pid = child.id();
    let mut seen = Vec::new();
    wait_for_progress(&rx, &mut seen);
    kill("KILL", &pid.to_string());
    let (code, _) = finish(child, rx, seen);
    assert_eq!(code, -1, "killed by the signal");
    let stale: Vec<String> = names_in(tmp.path())
        .into_iter()
        .filter(|n| n.contains(&format!(".partial-{pid}-")))
        .collect();
    assert_eq!(stale.len(), 1, "the killed run's partial output: {stale:?}");
    let small = tmp.path().join("small.y4m");
    std::fs::write(&small, y4m_bytes(16, 16, 1)).unwrap();
    let o = upscale(tmp.path(), &small, &tmp.path().join("out2.y4m"), &[]);
    ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("removed 1 partial output left by interrupted runs")
            && err.contains(&stale[0]),
        "{err}"
    );
    assert_eq!(names_in(tmp.path()), ["in.y4m", "out2.y4m", "small.y4m"]);
}
