//! Finding, downloading and opening the weight files.

pub mod components;
pub mod discover;
pub mod download;
pub mod manifest;
pub mod quantized;

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a weight file holds, as far as the pipeline is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Dit,
    LqProj,
    TcDecoder,
    Vae,
    Prompt,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Dit,
        Role::LqProj,
        Role::TcDecoder,
        Role::Vae,
        Role::Prompt,
    ];

    /// The upstream file name of this part (what a folder is recognised by).
    pub fn upstream_file(self) -> &'static str {
        match self {
            Role::Dit => "diffusion_pytorch_model_streaming_dmd.safetensors",
            Role::LqProj => "LQ_proj_in.ckpt",
            Role::TcDecoder => "TCDecoder.ckpt",
            Role::Vae => "Wan2.1_VAE.pth",
            Role::Prompt => "posi_prompt.pth",
        }
    }

    /// Whether a mode needs this part (tiny modes use the TCDecoder, full mode the VAE).
    pub fn needed_for(self, full_mode: bool) -> bool {
        match self {
            Role::TcDecoder => !full_mode,
            Role::Vae => full_mode,
            _ => true,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Dit => "DiT",
            Role::LqProj => "LQ projection",
            Role::TcDecoder => "TCDecoder",
            Role::Vae => "Wan VAE",
            Role::Prompt => "prompt tensor",
        })
    }
}
