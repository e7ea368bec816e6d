//! lcsa
