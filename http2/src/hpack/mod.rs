//! HPACK (RFC 7541): header blocks to header lists and back.

mod decoder;
mod encoder;
pub mod huffman;
mod table;

pub use decoder::{DecodeError, Decoder};
pub use encoder::{Encoder, Field};
pub use table::{Header, Pseudo};
