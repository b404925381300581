//! The protobuf codec every generated client and server uses: prost's, with small buffers.
//!
//! tonic allocates its codec buffer eagerly, once per RPC, and keeps it for the RPC's life
//! (8 KiB by default). The control plane holds one long-lived watch stream per proxy and kind, so
//! with 1,000 proxies that default alone pinned ~80 MB of mostly empty buffers. Control-plane
//! messages are small; a buffer that starts at 512 bytes grows (doubling) only for the large ones.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Initial size of each RPC's encode and decode buffer.
const BUFFER_SIZE: usize = 512;
/// How many bytes of ready messages a stream batches into one write (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// `tonic_prost::ProstCodec` with [`BUFFER_SIZE`] buffers.
#[derive(Debug, Clone, Copy)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}
