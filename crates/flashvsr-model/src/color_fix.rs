//! color_fix
