//! `inspect`, `validate`, `convert`: thin wrappers over the loader.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct ConvertArgs {
    /// Input files, then the output file.
    #[arg(required = true, num_args = 2.., value_name = "IN... OUT")]
    pub paths: Vec<PathBuf>,
    #[arg(long, default_value = "none")]
    pub quant: String,
    #[arg(short = 'y', long)]
    pub overwrite: bool,
}

pub fn inspect(_paths: &[PathBuf], _json: bool) -> Result<()> {
    bail!("inspect is not available yet in this build")
}

pub fn validate(_paths: &[PathBuf], _against: &str, _json: bool) -> Result<()> {
    bail!("validate is not available yet in this build")
}

pub fn convert(_args: &ConvertArgs, _quiet: bool) -> Result<()> {
    let _ = Path::new("");
    bail!("convert is not available yet in this build")
}
