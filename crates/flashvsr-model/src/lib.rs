//! flashvsr-model
