//! `inspect`, `validate`, `convert`: thin wrappers over the loader.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use clap::Args;
use flashvsr_loader::convert::{self, ConvertOptions, OutputFormat, Quant};
use flashvsr_loader::{inspect as loader_inspect, layout};

use crate::{partials, FailureReport, VersionArg};

#[derive(Args, Debug, Clone)]
pub struct ConvertArgs {
    /// Input files or folders, then the output: a file (.gguf or .safetensors) for one
    /// component, or a folder (an existing one, or a path ending in `/`) to convert each input
    /// file on its own into FOLDER/<name>.gguf (upstream's weights folder, for one).
    #[arg(required = true, num_args = 2.., value_name = "IN... OUT")]
    pub paths: Vec<PathBuf>,
    /// Target type: f32, f16, bf16, q8_0, q6_k, q5_k, q4_k, q4_0 (only 2-D weights are
    /// quantized; norms, biases and embeddings stay in float) [default: keep each tensor's type].
    #[arg(long, value_parser = parse_quant)]
    pub quant: Option<Quant>,
    /// Model version recorded in the output's metadata (`flashvsr.version`).
    #[arg(long, value_enum)]
    pub model_version: Option<VersionArg>,
    /// Component recorded in the metadata (dit, lq_proj, tc_decoder, wan_vae, prompt).
    #[arg(long)]
    pub component: Option<String>,
    /// `general.architecture` of a GGUF output [default: wan for the DiT, which ComfyUI-GGUF
    /// loads; flashvsr for the other components].
    #[arg(long, value_name = "NAME")]
    pub arch: Option<String>,
    /// Replace the output if it exists.
    #[arg(short = 'y', long)]
    pub overwrite: bool,
    #[arg(long)]
    pub json: bool,
}

fn parse_quant(s: &str) -> Result<Quant, String> {
    s.parse()
}

pub fn inspect(paths: &[PathBuf], json: bool) -> Result<()> {
    let report = loader_inspect::inspect(paths).map_err(|e| anyhow!("cannot inspect: {e}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}

fn check_component(component: &str) -> Result<()> {
    if !layout::components().contains(&component) {
        bail!(
            "unknown component '{component}' (known: {})",
            layout::components().join(", ")
        );
    }
    Ok(())
}

/// Exit status 1 when the files do not match (the report says why; with `--json` it is the
/// `report` of the failure object).
pub fn validate(paths: &[PathBuf], against: &str, structure: bool, json: bool) -> Result<()> {
    check_component(against)?;
    let mode = if structure {
        layout::CheckMode::Structure
    } else {
        layout::CheckMode::Exact
    };
    let report =
        layout::validate_with(paths, against, mode).map_err(|e| anyhow!("cannot validate: {e}"))?;
    if !report.is_ok() {
        if json {
            return Err(anyhow::Error::new(FailureReport {
                message: format!("the files do not match the {against} layout (see the report)"),
                report: serde_json::to_value(&report)?,
            }));
        }
        print!("{report}");
        bail!("the files do not match the {against} layout (details above)");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}

pub fn convert(args: &ConvertArgs, quiet: bool) -> Result<()> {
    let (output, inputs) = args
        .paths
        .split_last()
        .ok_or_else(|| anyhow!("convert needs inputs and an output"))?;
    let opts = ConvertOptions {
        quant: args.quant,
        flashvsr_version: args
            .model_version
            .map(|v| v.as_str().trim_start_matches('v').to_string()),
        component: args.component.clone(),
        architecture: args.arch.clone(),
        ..ConvertOptions::default()
    };
    if let Some(c) = &args.component {
        check_component(c)?;
    }
    if output.is_dir() || output.as_os_str().to_string_lossy().ends_with('/') {
        // Temporary files of killed conversions into this folder go first.
        partials::clean_in(output, quiet);
        return convert_each(inputs, output, &opts, args, quiet);
    }
    partials::clean_next_to(output, quiet);
    if output.exists() && !args.overwrite {
        bail!(
            "output {} already exists; pass -y/--overwrite to replace it",
            output.display()
        );
    }
    let report =
        convert::convert(inputs, output, &opts).map_err(|e| anyhow!("cannot convert: {e}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if !quiet {
        print!("{report}");
    }
    Ok(())
}

/// `convert IN... FOLDER/`: every input file on its own (components are one per file).
fn convert_each(
    inputs: &[PathBuf],
    dir: &Path,
    opts: &ConvertOptions,
    args: &ConvertArgs,
    quiet: bool,
) -> Result<()> {
    let cannot = |e| anyhow!("cannot convert: {e}");
    let pairs = convert::outputs_in(inputs, dir, OutputFormat::Gguf).map_err(cannot)?;
    if args.component.is_some() && pairs.len() > 1 {
        bail!(
            "--component names one component, and {} files were given; convert them one at a time to record it",
            pairs.len()
        );
    }
    if !args.overwrite {
        if let Some((_, out)) = pairs.iter().find(|(_, out)| out.exists()) {
            bail!(
                "output {} already exists; pass -y/--overwrite to replace it",
                out.display()
            );
        }
    }
    let reports = convert::convert_each(inputs, dir, opts).map_err(cannot)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else if !quiet {
        for r in &reports {
            print!("{r}");
        }
    }
    Ok(())
}
