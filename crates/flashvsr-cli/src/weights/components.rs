//! From found files to the model's parts: classify files by tensor names, pick the model
//! version, open the weight stores and build the `ModelComponents` the pipeline loads.

use anyhow::Result;

use super::download::{ensure_bundle, HubConfig};
use super::manifest::Manifest;
use super::Role;
use crate::DownloadArgs;

/// `flashvsr download`.
pub fn download_command(args: &DownloadArgs, quiet: bool) -> Result<()> {
    let manifest = Manifest::load(args.model_version.as_str(), args.manifest.as_deref())?;
    let roles: Vec<Role> = match args.parts.as_str() {
        "full" => Role::ALL.into_iter().filter(|r| r.needed_for(true)).collect(),
        "all" => Role::ALL.to_vec(),
        _ => Role::ALL.into_iter().filter(|r| r.needed_for(false)).collect(),
    };
    let mut cfg = HubConfig::from_env(quiet);
    cfg.offline = false;
    let dir = ensure_bundle(&manifest, &roles, &cfg)?;
    println!("{}", dir.display());
    Ok(())
}
