//! `flashvsr`: FlashVSR video super-resolution from the command line.
//!
//! This file holds the dispatch and the exit path; the arguments live in `args`, each command
//! in its own module.

mod args;
mod bench;
mod devices;
mod interrupt;
mod memory;
mod partials;
mod progress;
mod segments;
mod summary;
mod synth;
mod tools;
mod upscale;
mod weights;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

pub use args::{
    BenchArgs, Cli, ColorFixArg, Command, DTypeArg, DimsArg, DownloadArgs, JsonTo, ModeArg,
    SynthArgs, UpscaleArgs, VersionArg, WeightArgs,
};

fn run(cli: Cli) -> anyhow::Result<()> {
    let quiet = cli.quiet;
    match cli.command {
        Command::Upscale(args) => upscale::run(&args, quiet),
        Command::Download(args) => weights::components::download_command(&args, quiet),
        Command::Devices { json } => {
            let list = devices::list();
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for d in list {
                    let state = if d.usable { "usable" } else { "unavailable" };
                    let note = if d.note.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", d.note)
                    };
                    println!("{:<8} {state}{note}", d.name);
                }
            }
            Ok(())
        }
        Command::SynthWeights(args) => synth::run(&args, quiet),
        Command::Bench(args) => bench::run(&args, quiet),
        Command::Inspect { paths, json } => tools::inspect(&paths, json),
        Command::Validate {
            paths,
            against,
            structure,
            json,
        } => tools::validate(&paths, &against, structure, json),
        Command::Convert(args) => tools::convert(&args, quiet),
        Command::PlanSegments(args) => segments::plan_command(&args),
    }
}

/// An error with a report that belongs in the `--json` failure object (`validate`'s mismatches),
/// so that the command prints one JSON object either way.
#[derive(Debug)]
pub struct FailureReport {
    pub message: String,
    pub report: serde_json::Value,
}

impl std::fmt::Display for FailureReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for FailureReport {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    interrupt::install();
    let command = cli.command.name();
    let json = cli.command.json_output();
    let Err(e) = run(cli) else {
        return ExitCode::SUCCESS;
    };
    // After a signal, whatever error ended the run (a pipe to an ffmpeg that got the same
    // Ctrl-C) is the interruption.
    let interrupted = interrupt::is_interrupt(&e) || interrupt::requested_or_pending();
    let (message, code) = if interrupted {
        (
            "interrupted; no output was written".to_string(),
            interrupt::EXIT_CODE,
        )
    } else {
        // One line: the context chain joined, internal newlines folded.
        (format!("{e:#}").replace('\n', "; "), 1)
    };
    // Writing may fail (the terminal is gone after SIGHUP): never panic on the way out.
    let _ = writeln!(std::io::stderr(), "error: {message}");
    if let Some(to) = json {
        let mut failure = serde_json::json!({
            "command": command,
            "ok": false,
            "error": message,
            "interrupted": interrupted,
            "exit_code": code,
        });
        if let Some(r) = e.downcast_ref::<FailureReport>() {
            failure["report"] = r.report.clone();
        }
        // One line, the last one: runners take the last JSON line as the outcome.
        let text = serde_json::to_string(&failure).unwrap_or_default();
        let _ = match to {
            JsonTo::Stdout => writeln!(std::io::stdout(), "{text}"),
            JsonTo::Stderr => writeln!(std::io::stderr(), "{text}"),
        };
    }
    ExitCode::from(code as u8)
}
