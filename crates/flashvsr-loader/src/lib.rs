//! flashvsr-loader
