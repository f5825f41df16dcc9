//! The codec of Tessera's gRPC servers: tonic's `ProstCodec`, except that a request body that is
//! not a valid protobuf message is the caller's error — `INVALID_ARGUMENT` with the OAuth code
//! `invalid_request` in its `ErrorInfo`, like every other bad input — where tonic answers
//! `INTERNAL` without details. Clients keep `ProstCodec` (see build.rs).

use crate::to_status;
use std::marker::PhantomData;
use tessera_core::OAuthError;
use tonic::codec::{Codec, DecodeBuf, Decoder, ProstCodec};
use tonic::Status;

/// What the caller is told; the decoder's own message (which field, which wire type) stays out.
pub const UNDECODABLE: &str = "the request body is not a valid protobuf message";

/// `ProstCodec` with a [`StrictDecoder`]. The generated servers create it with `default()`.
#[derive(Debug)]
pub struct StrictCodec<T, U> {
    inner: ProstCodec<T, U>,
}

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        Self { inner: ProstCodec::default() }
    }
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.inner.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder(PhantomData)
    }
}

/// Decodes one request message; a `prost::DecodeError` becomes `invalid_request`.
#[derive(Debug)]
pub struct StrictDecoder<U>(PhantomData<U>);

impl<U: prost::Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e: prost::DecodeError| {
            tracing::debug!(error = %e, "an undecodable request body");
            to_status(&OAuthError::invalid_request(UNDECODABLE))
        })
    }
}
