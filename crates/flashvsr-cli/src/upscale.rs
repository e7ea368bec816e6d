//! `flashvsr upscale`: source → model session → sink. Decoding and encoding run on the video
//! crate's threads behind small queues, the model on this one, so memory stays flat for any
//! length. Everything that can fail cheaply (paths, overwrite, ffmpeg, input header, weights)
//! is checked before the model is loaded; the output only appears when everything succeeded.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use candle_core::{DType, Device, Tensor};
use flashvsr_model::schedule::{FramePlan, FrameRule};
use flashvsr_video::{
    ffmpeg_available, open_sink, open_source, EncodeOptions, FrameSink, InputSpec, OutputSpec,
    Rational, RgbFrame, SourceOptions, VideoError, VideoInfo,
};

use crate::args::{checked_output_size, crf_range, FrameRange};
use crate::progress::{Progress, Total};
use crate::summary::{self, Settings, StageTimes, Summary};
use crate::weights::components::{self, Resolved};
use crate::{devices, interrupt, memory, partials, segments, UpscaleArgs};

pub fn run(args: &UpscaleArgs, quiet: bool) -> Result<()> {
    let started = Instant::now();
    let input = InputSpec::detect(&args.input);
    let output = OutputSpec::detect(&args.output);
    preflight(&input, &output, args)?;

    let device = devices::open(args.device)?;
    let dtype = args
        .dtype
        .map(Into::into)
        .unwrap_or_else(|| devices::default_dtype(&device));

    // A segment of a longer clip (`--warmup`) decodes its warm-up and look-ahead frames too.
    let segment = segments::segment(args)?;
    let decoded = segments::decode_range(args, segment.as_ref());

    // The input header next: a corrupt file fails here, before gigabytes of weights are read.
    let src_opts = SourceOptions {
        start_frame: decoded.map_or(0, |r| r.start),
        end_frame: decoded.and_then(|r| r.end),
        ..SourceOptions::default()
    };
    let mut source = open_source(&input, &src_opts).map_err(video_err)?;
    let info = source.info().clone();
    // What the header tells is checked before anything heavy: the output size...
    checked_output_size(info.width, info.height, args.scale)?;
    // ...and upstream's frame rule, when the frame count is known.
    if let (true, Some(n)) = (args.upstream_compat, info.frame_count) {
        if n > 0 {
            FramePlan::new(n as usize, FrameRule::Upstream).map_err(|e| {
                anyhow!(
                    "{}: --upstream-compat cannot run: {e}; drop --upstream-compat to upscale every frame",
                    input.display_path().display()
                )
            })?;
        }
    }
    // Decode the first frame now too: corrupt frame data also fails before the weights load.
    let first = source.next_frame().map_err(video_err)?;
    if first.is_none() {
        bail!(
            "{}: no frames to upscale (empty input or frame range)",
            input.display_path().display()
        );
    }
    let mut pending = first;
    if info.variable_frame_rate && !quiet {
        eprintln!(
            "note: {} has a variable frame rate; frames are kept one for one and played at the average rate {}",
            input.display_path().display(),
            format_fps(info.fps)
        );
    }

    // Leftovers of killed runs into the same folder go first.
    if let Some(target) = output_path(&output) {
        partials::clean_next_to(&without_trailing_slash(target), quiet);
    }

    // The output next, with a one-frame test encode: a wrong name, container, codec, preset or
    // pixel format fails now, not after the model ran.
    let enc = encode_options(args, &output, info.fps);
    let (plan_w, plan_h) = planned_output_size(info.width, info.height, args)?;
    let output_plan = flashvsr_video::check_output(
        &output,
        plan_w,
        plan_h,
        info.fps,
        Some((&input, &info)),
        &enc,
    )
    .map_err(video_err)?;
    if !quiet {
        for note in &output_plan.notes {
            eprintln!("note: {}: {note}", output.display_path().display());
        }
    }

    // The memory plan, from the weights' headers: a job that cannot fit is refused here.
    let weights = components::resolve(&args.weights, args.mode.is_full(), quiet)?;
    let dims = memory::dims_from_weights(&weights, args.mode.into(), args.head_dim)?;
    let job = memory::Job {
        dtype,
        mode: args.mode.into(),
        input_size: (info.width, info.height),
        scale: args.scale,
        upstream_crop: args.upstream_compat,
        kv_ratio: args.kv_ratio,
        kv_storage: args.memory.kv_cache.into(),
        tile: args.tile.map(|t| (t, args.tile_overlap)),
        tile_overlap: args.tile_overlap,
        budget: memory::budget(args.memory.max_vram, &device),
        decoder_latents: args.memory.decoder_latents.map(|n| n as usize),
        cuda: device.is_cuda(),
    };
    let plan = memory::plan(dims, &job)?;
    if args.memory.plan {
        return memory::print_plan(&plan, args.json);
    }
    if !quiet && (plan.tiles > 1 || args.memory.max_vram.is_some()) {
        eprintln!("note: {}", memory::note(&plan));
    }

    let noise = match &args.noise {
        Some(p) => Some(read_noise(p, &device)?),
        None => None,
    };

    let load_started = Instant::now();
    let model = engine::Model::load(&weights, args, &device, dtype)?;
    let load_s = load_started.elapsed().as_secs_f64();

    let mut session = model.session(
        info.width,
        info.height,
        args,
        &plan,
        noise,
        segment.as_ref(),
    )?;
    let (out_w, out_h) = session.output_size();

    let fps = info.fps;
    let mut sink = open_sink(&output, out_w, out_h, fps, Some(&input), &enc).map_err(video_err)?;

    let mut progress = Progress::frames_in_out("upscaling", expected_frames(&info, decoded), quiet);
    let mut frames_in: u64 = 0;
    let mut frames_out: u64 = 0;
    let mut peak_vram = devices::device_memory_used(&device);
    let model_started = Instant::now();
    let result: Result<()> = (|| {
        loop {
            if interrupt::requested() {
                bail!(interrupt::Interrupted);
            }
            if session.is_complete() {
                break;
            }
            let next = match pending.take() {
                Some(f) => Some(f),
                None => source.next_frame().map_err(video_err)?,
            };
            let Some(frame) = next else { break };
            frames_in += 1;
            progress.set_frames(frames_in, frames_out);
            let ready = session
                .push_frame(&frame)
                .map_err(|e| ModelFailure::new(e, frames_in - 1))?;
            write_frames(&mut sink, ready, &mut frames_out)?;
            progress.set_frames(frames_in, frames_out);
            peak_vram = max_opt(peak_vram, devices::device_memory_used(&device));
        }
        // A signal may also end the input early (a decoder that died of it): never finish a
        // clip that was cut short.
        if interrupt::requested() {
            bail!(interrupt::Interrupted);
        }
        if frames_in == 0 {
            bail!(
                "{}: no frames to upscale (empty input or frame range)",
                input.display_path().display()
            );
        }
        let ready = session
            .finish()
            .map_err(|e| ModelFailure::new(e, frames_in))?;
        write_frames(&mut sink, ready, &mut frames_out)?;
        progress.set_frames(frames_in, frames_out);
        if interrupt::requested() {
            bail!(interrupt::Interrupted);
        }
        Ok(())
    })();
    progress.finish();
    if let Err(e) = result {
        let Some(failure) = e.downcast_ref::<ModelFailure>() else {
            sink.abort();
            return Err(e);
        };
        return Err(failed_mid_run(
            failure, sink, &output, &plan, frames_out, args,
        ));
    }
    let truncation = info.truncation(frames_in);
    if let Some(t) = truncation {
        let input_name = input.display_path().display().to_string();
        if args.strict {
            sink.abort();
            bail!("{input_name}: {t}; nothing was written (--strict)");
        }
        eprintln!("warning: {input_name}: {t}; the output has the {frames_in} decoded frames (--strict makes this an error)");
    }
    if !args.upstream_compat && frames_out != session.expected_outputs(frames_in) {
        sink.abort();
        bail!("internal error: the model returned {frames_out} frames for {frames_in} input frames; nothing was written");
    }
    sink.finish().map_err(video_err)?;
    let model_s = model_started.elapsed().as_secs_f64();

    let stages = session.stage_times(load_s);
    let processing_fps = if model_s > 0.0 {
        frames_out as f64 / model_s
    } else {
        0.0
    };
    let summary = Summary {
        command: "upscale",
        input: input.display_path().display().to_string(),
        output: output.display_path().display().to_string(),
        input_frames: frames_in,
        output_frames: frames_out,
        input_size: [info.width, info.height],
        output_size: [out_w, out_h],
        frame_rate: info.fps.to_string(),
        variable_frame_rate: info.variable_frame_rate,
        frames_expected: info.declared_frames.map(|d| d.count()),
        input_truncated: truncation.is_some(),
        audio_copied: output_plan.audio_copied,
        audio_reencoded: output_plan.audio_reencoded,
        output_pix_fmt: output_plan.pix_fmt.clone(),
        notes: output_plan.notes.clone(),
        wall_s: started.elapsed().as_secs_f64(),
        processing_fps,
        fps: processing_fps,
        stages_s: stages,
        tiles: session.tiles(),
        peak_ram_bytes: summary::peak_rss_bytes(),
        peak_vram_bytes: peak_vram,
        device: devices::describe(&device),
        dtype: summary::dtype_name(dtype),
        settings: Settings::from_args(args, &weights),
        weights: weights.files(),
        memory_plan: plan.clone(),
        stage_peak_vram_bytes: session.stage_peaks(),
        pool_reserved_high_bytes: flashvsr_model::device_memory::pool_reserved_high(&device),
    };
    summary.emit(args.json, quiet, matches!(output, OutputSpec::Stdout));
    Ok(())
}

/// A model error mid-run, with where the input was.
#[derive(Debug)]
struct ModelFailure {
    message: String,
    /// Index of the input frame being processed (the input frame count while flushing).
    at_frame: u64,
}

impl ModelFailure {
    fn new(e: anyhow::Error, at_frame: u64) -> anyhow::Error {
        // One line: a CUDA error may carry a backtrace or driver detail on later lines.
        let message = format!("{e:#}");
        let message = message
            .split("\nstack backtrace")
            .next()
            .unwrap_or_default()
            .replace('\n', "; ");
        anyhow!(Self { message, at_frame })
    }

    fn out_of_memory(&self) -> bool {
        let m = self.message.to_ascii_lowercase();
        m.contains("out of memory") || m.contains("out_of_memory")
    }
}

impl std::fmt::Display for ModelFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ModelFailure {}

/// A model failure mid-run: one line naming the stage (from the session's error), the size and
/// the plan. Frames already written are kept where the output is still valid when cut short (a
/// PNG folder, a y4m file); anything else is removed. Either way it says how to go on.
fn failed_mid_run(
    failure: &ModelFailure,
    sink: Box<dyn FrameSink>,
    output: &OutputSpec,
    plan: &flashvsr_model::memory_plan::MemoryPlan,
    frames_out: u64,
    args: &UpscaleArgs,
) -> anyhow::Error {
    let start = args.frames.map_or(0, |r| r.start);
    let kind = if failure.out_of_memory() {
        "out of device memory"
    } else {
        "the model failed"
    };
    let cut_short_ok = matches!(output, OutputSpec::PngDir(_)) || output.is_y4m();
    let kept = cut_short_ok
        && frames_out > 0
        && !matches!(output, OutputSpec::Stdout)
        && sink.finish().is_ok();
    let next = start + frames_out;
    let resume = if kept {
        format!(
            "{} keeps the {frames_out} frames written (input frames {start}..{next}); continue with --frames {next}: into another output",
            output.display_path().display()
        )
    } else {
        format!(
            "nothing was written; {} input frames were done, continue with --frames {next}: (or restart)",
            frames_out
        )
    };
    let hint = if failure.out_of_memory() {
        "; pass a smaller --max-vram or --tile"
    } else {
        ""
    };
    anyhow!(
        "{kind} at input frame {}: {}; memory plan: {}; {resume}{hint}",
        start + failure.at_frame,
        failure.message,
        plan.summary()
    )
}

/// A video frame rate for people: `25 fps`, `29.97 fps`, `22.22 fps`.
fn format_fps(r: Rational) -> String {
    let text = format!("{:.2}", r.as_f64());
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text} fps")
}

/// The frames the run will read: the count the input states, else one estimated from its
/// duration (containers such as mkv and webm often state only that).
fn expected_frames(info: &VideoInfo, range: Option<FrameRange>) -> Total {
    if let Some(n) = info.frame_count {
        return Total::Exact(n);
    }
    let ranged = range.is_some_and(|r| r.start > 0 || r.end.is_some());
    let whole = info
        .duration_s
        .filter(|d| d.is_finite() && *d > 0.0 && info.fps.is_valid())
        .map(|d| (d * info.fps.as_f64()).round() as u64);
    match (whole, range) {
        (Some(n), Some(r)) if ranged => Total::Estimated(r.selected(n)),
        (Some(n), _) => Total::Estimated(n),
        (
            None,
            Some(FrameRange {
                start,
                end: Some(end),
            }),
        ) => Total::Estimated(end - start),
        (None, _) => Total::Unknown,
    }
}

/// `out/` → `out` (the partial of a folder output lies next to the folder).
fn without_trailing_slash(p: &Path) -> PathBuf {
    let text = p.to_string_lossy();
    let trimmed = text.trim_end_matches(['/', std::path::MAIN_SEPARATOR]);
    if trimmed.is_empty() {
        p.to_path_buf()
    } else {
        PathBuf::from(trimmed)
    }
}

fn max_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

fn write_frames(
    sink: &mut Box<dyn FrameSink>,
    frames: Vec<RgbFrame>,
    count: &mut u64,
) -> Result<()> {
    for frame in frames {
        // By value: the sink queues it for its writer thread without copying the pixels.
        sink.write_frame_owned(frame).map_err(video_err)?;
        *count += 1;
    }
    Ok(())
}

fn video_err(e: VideoError) -> anyhow::Error {
    anyhow!(e)
}

/// The checks that need no decoding and no weights.
fn preflight(input: &InputSpec, output: &OutputSpec, args: &UpscaleArgs) -> Result<()> {
    match input {
        InputSpec::Stdin => {}
        InputSpec::File(p) | InputSpec::Y4m(p) | InputSpec::ImageDir(p) => {
            if !p.exists() {
                bail!("input {} does not exist", p.display());
            }
        }
    }
    if let (Some(i), Some(o)) = (input_path(input), output_path(output)) {
        if same_file(i, o) {
            bail!(
                "input and output are the same path ({}); choose another output",
                o.display()
            );
        }
    }
    let needs_ffmpeg =
        matches!(input, InputSpec::File(_)) || matches!(output, OutputSpec::Container(_));
    if needs_ffmpeg && !ffmpeg_available() {
        return Err(anyhow!(VideoError::FfmpegNotFound));
    }
    if let (Some(o), false) = (output_path(output), args.memory.plan) {
        check_output(o, matches!(output, OutputSpec::PngDir(_)), args.overwrite)?;
    }
    if matches!(output, OutputSpec::Stdout) && std::io::stdout().is_terminal() {
        bail!("refusing to write y4m video to a terminal; redirect standard output (> out.y4m) or pipe it (| ffplay -)");
    }
    if let (Some(crf), OutputSpec::Container(path)) = (args.crf, output) {
        let (lo, hi) = crf_range(args.codec.as_deref(), path);
        if !(lo..=hi).contains(&crf) {
            let codec = args.codec.as_deref().unwrap_or("the default encoder");
            bail!("--crf {crf} is out of range for {codec}: use {lo} to {hi}");
        }
    }
    if args
        .tile
        .is_some_and(|t| t <= args.tile_overlap.saturating_mul(2))
    {
        bail!(
            "--tile must be more than twice --tile-overlap ({} px)",
            args.tile_overlap
        );
    }
    Ok(())
}

fn input_path(i: &InputSpec) -> Option<&Path> {
    match i {
        InputSpec::File(p) | InputSpec::Y4m(p) | InputSpec::ImageDir(p) => Some(p),
        InputSpec::Stdin => None,
    }
}

fn output_path(o: &OutputSpec) -> Option<&Path> {
    o.path()
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Refuses to replace an existing output without `-y`, and makes sure the folder can be written
/// (a probe file, removed at once) so that a long run does not fail at the very end.
fn check_output(path: &Path, png_dir: bool, overwrite: bool) -> Result<()> {
    let exists = if png_dir {
        std::fs::read_dir(path)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    } else {
        path.exists()
    };
    if exists && !overwrite {
        bail!(
            "output {} already exists; pass -y/--overwrite to replace it",
            path.display()
        );
    }
    let dir: PathBuf = if png_dir && path.is_dir() {
        path.to_path_buf()
    } else {
        match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    };
    if !dir.is_dir() {
        bail!(
            "cannot write {}: folder {} does not exist",
            path.display(),
            dir.display()
        );
    }
    tempfile::Builder::new()
        .prefix(".flashvsr-probe")
        .tempfile_in(&dir)
        .map(drop)
        .map_err(|e| {
            anyhow!(
                "cannot write {}: folder {} is not writable ({e})",
                path.display(),
                dir.display()
            )
        })
}

/// The encoder settings from the arguments; y4m gets 4:2:0 limited range (what players expect)
/// unless `--pix-fmt` says otherwise.
fn encode_options(args: &UpscaleArgs, output: &OutputSpec, fps: Rational) -> EncodeOptions {
    let y4m_default = output
        .is_y4m()
        .then(|| flashvsr_video::y4m::PLAYER_PIX_FMT.to_string());
    EncodeOptions {
        codec: args.codec.clone(),
        crf: args.crf,
        preset: args.preset.clone(),
        pix_fmt: args.pix_fmt.clone().or(y4m_default),
        overwrite: args.overwrite,
        source_start_s: args
            .frames
            .filter(|r| r.start > 0 || r.end.is_some())
            .map(|r| r.start as f64 / fps.as_f64()),
        source_duration_s: args
            .frames
            .and_then(|r| r.end.map(|e| (e - r.start) as f64 / fps.as_f64())),
        queue_frames: 0,
    }
}

/// The output frame size the session will have, known before the weights load (the model's
/// own geometry rule; tiling keeps the scaled size).
fn planned_output_size(w: usize, h: usize, args: &UpscaleArgs) -> Result<(usize, usize)> {
    use flashvsr_model::preprocess::{FrameGeometry, SizeRule};
    let rule = if args.upstream_compat {
        SizeRule::UpstreamCrop
    } else {
        SizeRule::PadToGrid
    };
    let g = FrameGeometry::new(w, h, args.scale, rule)
        .map_err(|e| anyhow!("cannot upscale a {w}x{h} video with these settings: {e}"))?;
    Ok((g.out_w, g.out_h))
}

fn read_noise(path: &Path, device: &Device) -> Result<Tensor> {
    let t = Tensor::read_npy(path)
        .map_err(|e| anyhow!("cannot read noise file {}: {e}", path.display()))?;
    if t.rank() != 5 || t.dim(1).ok() != Some(16) {
        bail!(
            "noise file {} has shape {:?}, expected [1, 16, T, H/8, W/8]",
            path.display(),
            t.dims()
        );
    }
    Ok(t.to_dtype(DType::F32)?.to_device(device)?)
}

/// The model pipeline as this command uses it.
mod engine {
    use super::*;
    use flashvsr_model::pipeline::{self as p, FlashVsr, ModelComponents, UpscaleOptions};
    use flashvsr_model::segments::Segment;

    use crate::weights::Role;

    pub struct Model {
        inner: FlashVsr,
    }

    /// A whole clip, or one segment of a longer one (`--warmup`).
    pub enum Session<'a> {
        Clip(p::Session<'a>),
        Segment(p::SegmentSession<'a>),
    }

    /// The pipeline's components from the resolved weight parts.
    pub fn components(
        w: &Resolved,
        device: &Device,
        dtype: DType,
        head_dim: Option<usize>,
        quantize_dit: Option<crate::weights::quantized::DitQuant>,
    ) -> Result<ModelComponents> {
        let vb = |role: Role| w.part(role).map(|p| p.var_builder(dtype, device));
        let dit_quantized = match w.part(Role::Dit) {
            Some(part) => Some(crate::weights::quantized::shared(
                crate::weights::quantized::QuantizedDit::from_part(part, quantize_dit)?,
            )),
            None => None,
        };
        Ok(ModelComponents {
            dit: vb(Role::Dit).ok_or_else(|| anyhow!("no DiT weights"))?,
            lq_proj: vb(Role::LqProj).ok_or_else(|| anyhow!("no LQ projection weights"))?,
            tc_decoder: vb(Role::TcDecoder),
            vae: vb(Role::Vae),
            prompt: w.prompt(dtype, device)?,
            head_dim,
            dit_quantized,
        })
    }

    pub fn options(
        args: &UpscaleArgs,
        plan: &flashvsr_model::memory_plan::MemoryPlan,
        noise: Option<Tensor>,
    ) -> UpscaleOptions {
        UpscaleOptions {
            scale: args.scale,
            mode: args.mode.into(),
            sparse_ratio: args.sparse_ratio,
            kv_ratio: args.kv_ratio,
            kv_storage: args.memory.kv_cache.into(),
            local_range: args.local_range.into(),
            color_fix: args.color_fix.into(),
            upstream_compat: args.upstream_compat,
            seed: args.seed,
            noise,
            tile: plan.choices.tile.map(Into::into),
            park_kv: plan.choices.park_kv,
            decoder_latents_per_call: Some(plan.choices.decoder_latents_per_call),
            decoder_stripe_rows: plan.choices.decoder_stripe_rows,
            // A segment's own session sets its first frame.
            first_frame: 0,
        }
    }

    impl Model {
        pub fn load(
            w: &Resolved,
            args: &UpscaleArgs,
            device: &Device,
            dtype: DType,
        ) -> Result<Model> {
            let c = components(w, device, dtype, args.head_dim, args.quantize_dit)?;
            let inner = FlashVsr::load(c, w.version.into(), device, dtype)
                .map_err(|e| anyhow!("cannot load the model from {}: {e}", w.origin))?;
            Ok(Model { inner })
        }

        pub fn session(
            &self,
            w: usize,
            h: usize,
            args: &UpscaleArgs,
            plan: &flashvsr_model::memory_plan::MemoryPlan,
            noise: Option<Tensor>,
            segment: Option<&Segment>,
        ) -> Result<Session<'_>> {
            let opts = options(args, plan, noise);
            match segment {
                None => self.inner.session(w, h, &opts).map(Session::Clip),
                Some(s) => self
                    .inner
                    .segment_session(w, h, &opts, s)
                    .map(Session::Segment),
            }
            .map_err(|e| anyhow!("cannot upscale a {w}x{h} video with these settings: {e}"))
        }
    }

    impl Session<'_> {
        pub fn output_size(&self) -> (usize, usize) {
            match self {
                Session::Clip(s) => s.output_size(),
                Session::Segment(s) => s.output_size(),
            }
        }

        pub fn tiles(&self) -> usize {
            match self {
                Session::Clip(s) => s.tiles(),
                Session::Segment(s) => s.tiles(),
            }
        }

        /// A segment whose outputs are all out needs no more input.
        pub fn is_complete(&self) -> bool {
            matches!(self, Session::Segment(s) if s.is_complete())
        }

        /// Output frames due for `frames_in` input frames (every frame, or the segment's).
        pub fn expected_outputs(&self, frames_in: u64) -> u64 {
            match self {
                Session::Clip(_) => frames_in,
                Session::Segment(s) => s.expected_outputs(frames_in as usize) as u64,
            }
        }

        pub fn push_frame(&mut self, frame: &RgbFrame) -> Result<Vec<RgbFrame>> {
            Ok(match self {
                Session::Clip(s) => s.push_frame(frame)?,
                Session::Segment(s) => s.push_frame(frame)?,
            })
        }

        pub fn finish(&mut self) -> Result<Vec<RgbFrame>> {
            Ok(match self {
                Session::Clip(s) => s.finish()?,
                Session::Segment(s) => s.finish()?,
            })
        }

        pub fn stage_peaks(&self) -> std::collections::BTreeMap<&'static str, u64> {
            match self {
                Session::Clip(s) => s.stats().stage_peak_bytes,
                Session::Segment(s) => s.stats().stage_peak_bytes,
            }
        }

        pub fn stage_times(&self, load_s: f64) -> StageTimes {
            let s = match self {
                Session::Clip(s) => s.stats(),
                Session::Segment(s) => s.stats(),
            };
            StageTimes {
                load_weights: load_s,
                preprocess: s.preprocess_s,
                lq_proj: s.lq_proj_s,
                dit: s.dit_s,
                decode: s.decode_s,
                color_fix: s.color_fix_s,
            }
        }
    }
}
