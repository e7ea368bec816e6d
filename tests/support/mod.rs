#![allow(dead_code)]
pub mod hub;
