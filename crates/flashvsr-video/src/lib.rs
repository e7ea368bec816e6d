//! flashvsr-video
