//! conv3d
