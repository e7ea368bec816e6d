//! `flashvsr synth-weights`: random weights with the upstream file names, formats and shapes.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use crate::VersionArg;

#[derive(Args, Debug, Clone)]
pub struct SynthArgs {
    /// Folder to write the files into (created if missing).
    pub dir: PathBuf,
    #[arg(long, value_enum, default_value = "v1.1")]
    pub model_version: VersionArg,
    /// real: the shipped shapes (~7 GB); small: reduced widths for quick tests.
    #[arg(long, default_value = "small", value_parser = ["real", "small"])]
    pub dims: String,
    #[arg(long, default_value = "0")]
    pub seed: u64,
    /// Replace existing files.
    #[arg(short = 'y', long)]
    pub overwrite: bool,
}

pub fn run(_args: &SynthArgs, _quiet: bool) -> Result<()> {
    bail!("synth-weights is not available yet in this build")
}
