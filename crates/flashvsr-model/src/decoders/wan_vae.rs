//! wan_vae
