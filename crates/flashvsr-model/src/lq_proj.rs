//! lq_proj
