//! `flashvsr upscale`: source → model session → sink, concurrently.

use anyhow::{bail, Result};

use crate::UpscaleArgs;

pub fn run(_args: &UpscaleArgs, _quiet: bool) -> Result<()> {
    bail!("model pipeline not yet available")
}
