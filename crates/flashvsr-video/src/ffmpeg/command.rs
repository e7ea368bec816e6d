//! Starting ffmpeg and ffprobe: the one place that builds their command line, spawns them with
//! the pipes we use, collects the tail of their stderr and stops them.
//!
//! Signals: every child runs in a process group of its own (`process_group(0)`). Ctrl-C in a
//! terminal sends SIGINT to the whole foreground process group, and a hang-up or a job-control
//! `kill %1` signals the group too; in our group, ffmpeg would stop at once and flashvsr would
//! report "ffmpeg failed: Broken pipe" instead of running its own interrupt path (stop, remove
//! the partial output, exit 130). Ignoring SIGINT in the child (`pre_exec` + `SIG_IGN`) does not
//! work: ffmpeg installs its own SIGINT/SIGTERM handlers at start-up, replacing an inherited
//! ignore. Outside the terminal's foreground group the children only hear from us: we kill them
//! when a source or sink is dropped or aborted. If flashvsr itself is killed outright (SIGKILL),
//! nobody signals them, but they still end on their own: a decoder on its broken stdout pipe, an
//! encoder at end of input on stdin. `-nostdin`, a null or piped stdin and a piped stderr keep
//! them off the terminal, so a background group never stops them with SIGTTIN/SIGTTOU.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::threaded::Canceller;
use crate::VideoError;

/// Lines of ffmpeg's stderr kept for error messages.
const STDERR_TAIL_LINES: usize = 12;

/// `program` as a child of ours: its own process group (see the module docs), stdin closed.
pub(crate) fn tool_command(program: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(program);
    command.stdin(Stdio::null());
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        command.process_group(0);
    }
    command
}

/// Runs a tool to completion (ffprobe, `ffmpeg -h`, `-version`), capturing stdout and stderr.
pub(crate) fn run_to_end<I, S>(
    program: OsString,
    args: I,
    path: &Path,
) -> Result<Output, VideoError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    tool_command(program)
        .args(args)
        .output()
        .map_err(|e| spawn_error(path, e))
}

/// A running ffmpeg: the process (shared with the canceller of the worker thread) and the thread
/// that keeps the tail of its stderr, so that the pipe never fills up.
pub(crate) struct FfmpegChild {
    child: Arc<Mutex<Child>>,
    stderr: Option<JoinHandle<Vec<String>>>,
}

impl FfmpegChild {
    /// ffmpeg encoding what we write to its stdin; its stdout is discarded.
    pub(crate) fn spawn_encoder<I, S>(
        args: I,
        path: &Path,
    ) -> Result<(Self, ChildStdin), VideoError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let (child, stdin, _) = Self::spawn(args, Stdio::piped(), Stdio::null(), path)?;
        match stdin {
            Some(stdin) => Ok((child, stdin)),
            None => Err(child.pipe_error(path)),
        }
    }

    /// ffmpeg decoding into its stdout, which we read; its stdin is closed.
    pub(crate) fn spawn_decoder<I, S>(
        args: I,
        path: &Path,
    ) -> Result<(Self, ChildStdout), VideoError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let (child, _, stdout) = Self::spawn(args, Stdio::null(), Stdio::piped(), path)?;
        match stdout {
            Some(stdout) => Ok((child, stdout)),
            None => Err(child.pipe_error(path)),
        }
    }

    fn spawn<I, S>(
        args: I,
        stdin: Stdio,
        stdout: Stdio,
        path: &Path,
    ) -> Result<(Self, Option<ChildStdin>, Option<ChildStdout>), VideoError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut child = tool_command(super::ffmpeg_program())
            .args(args)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| spawn_error(path, e))?;
        let (stdin, stdout, stderr) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let stderr = stderr.map(spawn_stderr_tail);
        let child = FfmpegChild {
            child: Arc::new(Mutex::new(child)),
            stderr,
        };
        if child.stderr.is_none() {
            return Err(child.pipe_error(path));
        }
        Ok((child, stdin, stdout))
    }

    fn pipe_error(mut self, path: &Path) -> VideoError {
        self.reap(true);
        VideoError::format(path, "could not open ffmpeg's pipes")
    }

    /// Kills the process; for the worker thread's canceller, which may run while the worker is
    /// blocked in a pipe.
    pub(crate) fn canceller(&self) -> Canceller {
        let child = self.child.clone();
        Box::new(move || {
            if let Ok(mut c) = child.lock() {
                let _ = c.kill();
            }
        })
    }

    /// Waits for ffmpeg (killing it first when `kill`) and collects its stderr tail.
    pub(crate) fn reap(&mut self, kill: bool) -> (Option<ExitStatus>, Vec<String>) {
        let status = match self.child.lock() {
            Ok(mut child) => {
                if kill {
                    let _ = child.kill();
                }
                child.wait().ok()
            }
            Err(_) => None,
        };
        let tail = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        (status, tail)
    }

    #[cfg(test)]
    pub(crate) fn id(&self) -> u32 {
        self.child.lock().map(|c| c.id()).unwrap_or(0)
    }
}

/// Collects the last lines of a child's stderr on a thread, so the pipe never fills up.
fn spawn_stderr_tail(stderr: impl Read + Send + 'static) -> JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut tail = VecDeque::with_capacity(STDERR_TAIL_LINES);
        let mut reader = BufReader::new(stderr);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).trim().to_string();
                    if line.is_empty() {
                        continue;
                    }
                    if tail.len() == STDERR_TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            }
        }
        tail.into()
    })
}

/// The last `n` non-empty lines of a finished tool's stderr.
pub(crate) fn last_lines(stderr: &[u8], n: usize) -> Vec<String> {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// `status` plus the stderr tail as one line.
pub(crate) fn failure_message(status: Option<ExitStatus>, tail: &[String]) -> String {
    let status = match status {
        Some(s) => s.to_string(),
        None => "unknown exit status".to_string(),
    };
    if tail.is_empty() {
        status
    } else {
        format!("{status}: {}", tail.join(" | "))
    }
}

/// Maps a spawn error: a missing program becomes [`VideoError::FfmpegNotFound`].
fn spawn_error(path: &Path, e: std::io::Error) -> VideoError {
    if e.kind() == std::io::ErrorKind::NotFound {
        VideoError::FfmpegNotFound
    } else {
        VideoError::io(path, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Field 5 of `/proc/PID/stat` (after the parenthesised name): the process group.
    #[cfg(target_os = "linux")]
    fn process_group_of(pid: u32) -> u32 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        after_name.split(' ').nth(2).unwrap().parse().unwrap()
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn children_are_outside_the_terminal_process_group() {
        if !super::super::ffmpeg_available() {
            return;
        }
        // A decoder that would run for minutes: it must sit in a group of its own, so that a
        // SIGINT to our group (Ctrl-C) does not reach it.
        let args = [
            "-nostdin",
            "-v",
            "error",
            "-re",
            "-f",
            "lavfi",
            "-i",
            "color=s=16x16:r=25",
            "-t",
            "600",
            "-f",
            "rawvideo",
            "pipe:1",
        ];
        let (mut child, _stdout) = FfmpegChild::spawn_decoder(args, Path::new("t")).unwrap();
        let pid = child.id();
        let ours = process_group_of(std::process::id());
        assert_eq!(process_group_of(pid), pid, "ffmpeg leads its own group");
        assert_ne!(process_group_of(pid), ours);
        let (status, _) = child.reap(true);
        assert!(!status.unwrap().success());
    }

    #[test]
    fn missing_program_is_ffmpeg_not_found() {
        let err = run_to_end(
            "flashvsr-no-such-ffprobe".into(),
            ["-version"],
            Path::new("x"),
        );
        assert!(matches!(err, Err(VideoError::FfmpegNotFound)));
        assert_eq!(
            last_lines(b"a\n\n b \nc\n", 2),
            vec!["b".to_string(), "c".to_string()]
        );
    }
}
