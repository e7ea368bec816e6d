#!/usr/bin/env python3
"""Upscale one long video, or a folder of videos, across the GPUs of a Ray cluster.

    python3 scripts/ray_upscale.py INPUT OUTPUT [options] [-- upscale options]

INPUT is a video file (OUTPUT: a file) or a folder of video files (OUTPUT: a folder; each file
keeps its name). Every clip is split by the engine (`flashvsr plan-segments --json`) into
segments with warm-up frames; each segment is one Ray task (`num_gpus=1` by default) running
`flashvsr upscale CLIP SEGMENT --frames A:B --warmup W` with the same encoder settings, and the
segments of a clip are joined losslessly at the end: video containers by ffmpeg's concat
demuxer (`-c copy`, the source's audio copied once), `.y4m` outputs by appending their frames
(no ffmpeg needed). A folder is the same job with one segment list per file: all segments
share the cluster.

Resuming: a segment is written under a temporary name and renamed when complete, so a segment
file that exists is whole. Run the same command again after a crash and only the missing
segments run (the plan and settings are checked against the job file first).

Clusters: with `--address` (or RAY_ADDRESS) the driver joins an existing cluster; otherwise it
starts a local one. Every node must see the inputs, the work folder and the `flashvsr` binary at
the same paths (a shared filesystem); ffmpeg must be installed where the driver runs (for
container outputs) and on every node (for container inputs and outputs).
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import ray

VIDEO_EXTENSIONS = {".mp4", ".mkv", ".mov", ".m4v", ".avi", ".webm", ".ts", ".mts", ".flv", ".wmv", ".y4m"}

# Test hook: the first attempt of the segment with this index kills its own worker process while
# its flashvsr runs (a crashed task, as a lost node or an OOM kill would make it), so that the
# retry and the end of the orphaned flashvsr can be tested. The marker file gets flashvsr's pid.
KILL_FIRST_ATTEMPT_ENV = "FLASHVSR_RAY_TEST_KILL_SEGMENT"


def parse_args(argv):
    if "--" in argv:
        i = argv.index("--")
        argv, upscale_args = argv[:i], argv[i + 1 :]
    else:
        upscale_args = []
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Options after `--` go to every `flashvsr upscale` run (weights, --scale, --codec, --crf, ...).",
    )
    p.add_argument("input", type=Path, help="video file, or folder of video files")
    p.add_argument("output", type=Path, help="output file, or folder for a folder input")
    p.add_argument("--flashvsr", default=shutil.which("flashvsr") or "flashvsr", help="the flashvsr binary (same path on every node)")
    p.add_argument("--segment-frames", type=int, default=480, help="frames per segment, at least (default 480)")
    p.add_argument("--warmup", type=int, default=21, help="warm-up frames before each segment, at least (default 21)")
    p.add_argument("--cuts", default=None, help="scene cuts for a single input, comma-separated frame numbers")
    p.add_argument("--gpus-per-task", type=float, default=1.0, help="GPUs per segment task (0: run on CPUs)")
    p.add_argument("--cpus-per-task", type=float, default=1.0, help="CPUs per segment task")
    p.add_argument("--max-retries", type=int, default=3, help="retries of a failed or lost segment task")
    p.add_argument("--work-dir", type=Path, default=None, help="where the segment files go (default: OUTPUT.segments)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local cluster)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local cluster")
    p.add_argument("--num-gpus", type=int, default=None, help="GPUs of a local cluster")
    p.add_argument("--keep-segments", action="store_true", help="keep the segment files after the join")
    p.add_argument("-y", "--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout at the end")
    args = p.parse_args(argv)
    args.upscale_args = upscale_args
    return args


def log(msg):
    print(f"[ray_upscale] {msg}", file=sys.stderr, flush=True)


def clips_of(args):
    """(input clip, output file) pairs: one for a file, one per video file of a folder."""
    if args.input.is_dir():
        files = sorted(f for f in args.input.iterdir() if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS)
        if not files:
            sys.exit(f"error: {args.input} holds no video files ({', '.join(sorted(VIDEO_EXTENSIONS))})")
        if args.output.exists() and not args.output.is_dir():
            sys.exit(f"error: the input is a folder, so the output {args.output} must be a folder")
        args.output.mkdir(parents=True, exist_ok=True)
        pairs = [(f, args.output / f.name) for f in files]
    else:
        if not args.input.exists():
            sys.exit(f"error: input {args.input} does not exist")
        pairs = [(args.input, args.output)]
    for _, out in pairs:
        if out.suffix == "":
            sys.exit(f"error: {out}: the driver writes video files (.mp4, .mkv, .y4m, ...), not frame folders")
    return pairs


def is_y4m(path):
    return path.suffix.lower() == ".y4m"


def plan(binary, clip, args):
    """The engine's segment list for one clip (never computed here)."""
    cmd = [binary, "plan-segments", str(clip.resolve()), "--segment-frames", str(args.segment_frames), "--warmup", str(args.warmup), "--json"]
    if args.cuts:
        cmd += ["--cuts", args.cuts]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed: {r.stderr.strip()}")
    return json.loads(r.stdout)


def segment_path(work, index, suffix):
    return work / f"segment_{index:05d}{suffix}"


@ray.remote
def run_segment(binary, clip, seg, warmup, final, upscale_args, kill_marker):
    """One segment: upscale to a temporary name, rename when complete (so a file that exists is
    whole, whichever attempt or node wrote it)."""
    final = Path(final)
    if final.exists():
        return {"index": seg["index"], "frames": seg["end"] - seg["start"], "seconds": 0.0, "reused": True}
    # Same extension, so that the encoder and container are the final file's.
    tmp = final.with_name(f".{final.stem}.{os.getpid()}.partial{final.suffix}")
    cmd = [binary, "-q", "upscale", str(clip), str(tmp), "--frames", seg["frames_arg"], "--warmup", str(warmup), "-y", "--json", *upscale_args]
    started = time.time()
    # A worker that dies takes this child with it (Ray ends a dead worker's children), so a
    # lost attempt leaves no flashvsr on the GPU beside its retry; the CI test checks that.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if kill_marker is not None and not os.path.exists(kill_marker):
        Path(kill_marker).write_text(f"{proc.pid}\n")
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)
    try:
        stdout, stderr = proc.communicate()
    except BaseException:  # a cancelled task: no flashvsr left behind
        proc.kill()
        proc.wait()
        raise
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"segment {seg['index']} ({seg['frames_arg']}): flashvsr exited with {proc.returncode}: {stderr.strip()[-2000:]}")
    # `--json`: the summary is the last stdout line.
    summary = json.loads(stdout.strip().splitlines()[-1])
    expected = seg["end"] - seg["start"]
    if summary["output_frames"] != expected and not seg["frames_arg"].endswith(":"):
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"segment {seg['index']}: {summary['output_frames']} frames written, {expected} expected")
    os.replace(tmp, final)
    return {"index": seg["index"], "frames": summary["output_frames"], "seconds": time.time() - started, "reused": False}


def ffmpeg(cmd, what):
    r = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *cmd], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"error: {what} failed: {r.stderr.strip()}")


def join_y4m(segments, output):
    """Lossless join of y4m segments: the first file's header, then every file's frames (each
    segment was written by the same binary with the same settings, so the headers agree)."""
    tmp = output.with_name(f".{output.stem}.partial{output.suffix}")
    header = None
    try:
        with open(tmp, "wb") as out:
            for s in segments:
                with open(s, "rb") as f:
                    h = f.readline()
                    if not h.startswith(b"YUV4MPEG2 "):
                        sys.exit(f"error: {s} is not a y4m file")
                    if header is None:
                        header = h
                        out.write(h)
                    elif h != header:
                        sys.exit(f"error: {s} has another y4m header than the first segment ({h!r} vs {header!r})")
                    shutil.copyfileobj(f, out, 1 << 24)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)


def frame_rate(video):
    """The frame rate a video file was written at, exactly."""
    r = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=r_frame_rate", "-of", "csv=p=0", str(video)],
        capture_output=True,
        text=True,
    )
    try:
        rate = Fraction(r.stdout.strip().split(",")[0])
    except (ValueError, ZeroDivisionError):
        rate = Fraction(0)
    if r.returncode != 0 or rate <= 0:
        sys.exit(f"error: cannot read the frame rate of {video}: {r.stderr.strip() or r.stdout.strip()}")
    return rate


def join(clip, segments, output, work, overwrite):
    """Lossless join of a clip's segment files (`(segment, path)` pairs), with the source's
    audio copied once.

    Done here with ffmpeg's concat demuxer rather than by a `flashvsr join` command: the join is
    a file operation over the job's own files (segment list, work folder, resume state), which
    only the driver knows; it involves no model code, and every segment was encoded with the same
    settings by the same binary, so `-c copy` joins them without re-encoding.

    Each segment's video stream is first copied out alone: a segment file also holds the
    source's audio for its frame range, which starts earlier than its video (pre-roll kept by
    the stream copy). The concat demuxer starts each file where the one before ended, by the
    `duration` given (its frame count over the frame rate): the files' own durations are off by
    the encoder's delay or the container's rounding, which would open a gap at every join. The
    segments' audio is dropped: the source's is copied whole, so the audio has no seams.
    """
    if output.exists() and not overwrite:
        sys.exit(f"error: output {output} already exists; pass -y to replace it")
    if is_y4m(output):
        return join_y4m([path for _, path in segments], output)
    rate = frame_rate(segments[0][1])
    videos = []
    for _, s in segments:
        v = s.with_name(f"{s.stem}.video{s.suffix}")
        ffmpeg(["-i", str(s), "-map", "0:v:0", "-c", "copy", str(v)], f"reading {s}")
        videos.append(v)
    listing = work / "concat.txt"
    with open(listing, "w") as f:
        for i, ((seg, _), v) in enumerate(zip(segments, videos)):
            path = str(v.resolve()).replace("'", "'\\''")
            f.write(f"file '{path}'\n")
            if i + 1 < len(segments):  # the last one's length is its own (open-ended)
                f.write(f"duration {float(Fraction(seg['end'] - seg['start']) / rate):.6f}\n")
    tmp = output.with_name(f".{output.stem}.partial{output.suffix}")
    cmd = ["-f", "concat", "-safe", "0", "-i", str(listing)]
    # Video from the segments; audio (and, for Matroska, subtitles) once from the source.
    cmd += ["-i", str(clip), "-map", "0:v:0", "-map", "1:a?"]
    if output.suffix.lower() == ".mkv":
        cmd += ["-map", "1:s?"]
    cmd += ["-map_metadata", "1", "-map_chapters", "1", "-c", "copy", str(tmp)]
    try:
        ffmpeg(cmd, f"joining {len(segments)} segments into {output}")
        os.replace(tmp, output)
    finally:
        for v in videos:
            v.unlink(missing_ok=True)
        listing.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)


def job_settings(args, binary):
    return {
        "segment_frames": args.segment_frames,
        "warmup": args.warmup,
        "cuts": args.cuts,
        "upscale_args": args.upscale_args,
        "flashvsr": str(binary),
    }


def main(argv):
    args = parse_args(argv)
    # stdout carries only the JSON summary: Ray's own messages go to stderr with the progress.
    summary_out = os.fdopen(os.dup(1), "w") if args.json else None
    os.dup2(2, 1)
    binary = args.flashvsr
    if shutil.which(binary) is None and not Path(binary).is_file():
        sys.exit(f"error: flashvsr binary {binary} not found (pass --flashvsr PATH)")
    upscale_args = list(args.upscale_args)
    if args.gpus_per_task == 0 and "--device" not in upscale_args:
        upscale_args += ["--device", "cpu"]
    clips = clips_of(args)
    if shutil.which("ffmpeg") is None and not all(is_y4m(out) for _, out in clips):
        sys.exit("error: ffmpeg is needed to join video containers; install it (or write .y4m)")
    if args.cuts and len(clips) > 1:
        sys.exit("error: --cuts is for a single input file")
    work_root = args.work_dir or args.output.with_name(args.output.name.rstrip("/") + ".segments")
    settings = job_settings(args, binary)

    jobs = []
    for clip, output in clips:
        if output.exists() and not args.overwrite:
            sys.exit(f"error: output {output} already exists; pass -y to replace it")
        work = work_root / output.name if len(clips) > 1 else work_root
        work.mkdir(parents=True, exist_ok=True)
        p = plan(binary, clip, args)
        job_file = work / "job.json"
        job = {"input": str(clip.resolve()), "output": str(output.resolve()), "settings": settings, "plan": p}
        if job_file.exists():
            old = json.loads(job_file.read_text())
            if old != job:
                sys.exit(
                    f"error: {work} holds segments of another job (different input, plan or settings); "
                    "remove it or choose another --work-dir"
                )
        else:
            job_file.write_text(json.dumps(job, indent=2))
        suffix = output.suffix
        segs = [(s, segment_path(work, s["index"], suffix)) for s in p["segments"]]
        jobs.append({"clip": clip, "output": output, "work": work, "plan": p, "segments": segs})

    if args.address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=args.address, log_to_driver=False)
    else:
        ray.init(num_cpus=args.num_cpus, num_gpus=args.num_gpus, include_dashboard=False, log_to_driver=False)

    task = run_segment.options(
        num_gpus=args.gpus_per_task,
        num_cpus=args.cpus_per_task,
        max_retries=args.max_retries,
        retry_exceptions=True,
    )
    kill_index = os.environ.get(KILL_FIRST_ATTEMPT_ENV)
    total_frames = sum(j["plan"]["total_frames"] for j in jobs)
    total_segments = sum(len(j["segments"]) for j in jobs)
    done_frames = 0
    reused = 0
    pending = {}
    for ji, j in enumerate(jobs):
        for s, path in j["segments"]:
            if path.exists():
                reused += 1
                done_frames += s["end"] - s["start"]
                continue
            marker = None
            if kill_index is not None and int(kill_index) == s["index"]:
                marker = str(j["work"] / f".killed_segment_{s['index']}")
            ref = task.remote(binary, str(j["clip"]), s, args.warmup, str(path), upscale_args, marker)
            pending[ref] = (ji, s)
    log(
        f"{len(jobs)} clip(s), {total_frames} frames in {total_segments} segments; "
        f"{reused} already on disk, {len(pending)} to run"
    )

    started = time.time()
    ran_frames = 0
    done = reused
    results = []
    failed = None
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        ref = ready[0]
        ji, s = pending.pop(ref)
        try:
            r = ray.get(ref)
        except Exception as e:  # retries exhausted
            failed = f"{jobs[ji]['clip']} segment {s['index']}: {e}"
            break
        results.append(r)
        done += 1
        done_frames += s["end"] - s["start"]
        ran_frames += s["end"] - s["start"]
        elapsed = time.time() - started
        fps = ran_frames / elapsed if elapsed > 0 else 0.0
        left = total_frames - done_frames
        eta = f", ~{left / fps:.0f} s left" if fps > 0 and left > 0 else ""
        log(
            f"{done}/{total_segments} segments, {done_frames}/{total_frames} frames "
            f"({100.0 * done_frames / max(total_frames, 1):.0f}%), {fps:.2f} frames/s{eta}"
        )
    if failed:
        for ref in pending:
            ray.cancel(ref)
        ray.shutdown()
        sys.exit(f"error: {failed}\nthe finished segments stay in {work_root}; run the same command again to resume")
    ray.shutdown()
    run_s = time.time() - started

    for j in jobs:
        join(j["clip"], j["segments"], j["output"], j["work"], args.overwrite)
        log(f"wrote {j['output']}")
        if not args.keep_segments:
            shutil.rmtree(j["work"], ignore_errors=True)
    if not args.keep_segments and work_root.exists() and not any(work_root.iterdir()):
        work_root.rmdir()
    wall_s = time.time() - started
    summary = {
        "clips": len(jobs),
        "frames": total_frames,
        "segments": total_segments,
        "segments_reused": reused,
        "segments_run": len(results),
        "wall_s": wall_s,
        # Frames upscaled per second of the whole job (segments run now; the join excluded).
        "fps": ran_frames / run_s if run_s > 0 else 0.0,
        "outputs": [str(j["output"]) for j in jobs],
    }
    if summary_out is not None:
        summary_out.write(json.dumps(summary) + "\n")
        summary_out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
