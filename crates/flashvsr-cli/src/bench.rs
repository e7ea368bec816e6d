//! `flashvsr bench`: the pipeline on synthetic weights and a synthetic clip.

use anyhow::{bail, Result};
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Output size WxH.
    #[arg(long, default_value = "512x512")]
    pub size: String,
    #[arg(long, default_value = "25")]
    pub frames: usize,
    #[arg(long)]
    pub json: bool,
}

pub fn run(_args: &BenchArgs, _quiet: bool) -> Result<()> {
    bail!("bench is not available yet in this build")
}
