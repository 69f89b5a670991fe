//! gRPC framing of the ADS streams, by hand.
//!
//! tonic's codec gives every stream an encode buffer that keeps the capacity of the largest
//! message it ever sent (the initial sync: tens of kilobytes), plus a decode buffer, for as
//! long as the stream lives; with thousands of Envoys connected for days, that was most of
//! the control plane's memory. Here each response is encoded into a buffer of exactly its
//! size that is freed once written to the connection, and a request buffer lives only while
//! a request is incomplete. Everything else (HTTP/2, TLS, keepalive, routing) stays tonic's
//! and hyper's.

use std::convert::Infallible;
use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use prost::Message;
use tonic::body::Body;
use tonic::Status;

/// A gRPC message's prefix: one compression flag byte and a big-endian length.
const PREFIX: usize = 5;
/// Largest request accepted (tonic's default limit too). Envoy's biggest is the first one
/// after a reconnect, with every resource it has.
const MAX_REQUEST: usize = 4 << 20;

/// What a stream sends: a framed message, or the status that ends the stream (boxed: a
/// `Status` is large, and every slot of a stream's queue is as large as this type).
pub(crate) type Outgoing = Result<Bytes, Box<Status>>;

/// `message` framed for a gRPC stream, in a buffer of exactly its size.
pub fn frame(message: &impl Message) -> Bytes {
    let len = message.encoded_len();
    let mut framed = Vec::with_capacity(PREFIX + len);
    framed.put_u8(0);
    framed.put_u32(u32::try_from(len).expect("an xDS response under 4 GiB"));
    message
        .encode(&mut framed)
        .expect("the buffer was sized by encoded_len");
    Bytes::from(framed)
}

/// Splits a byte stream into gRPC messages. Holds only the bytes of an incomplete message.
#[derive(Debug, Default)]
pub(crate) struct Deframer {
    pending: BytesMut,
}

impl Deframer {
    pub fn push(&mut self, chunk: &[u8]) {
        self.pending.extend_from_slice(chunk);
    }

    /// The next complete message, if one has arrived.
    pub(crate) fn next_message<M: Message + Default>(&mut self) -> Result<Option<M>, Status> {
        if self.pending.len() < PREFIX {
            return Ok(None);
        }
        let compressed = self.pending[0];
        let len = u32::from_be_bytes(self.pending[1..PREFIX].try_into().expect("4 bytes")) as usize;
        if compressed != 0 {
            return Err(Status::unimplemented(
                "compressed messages are not supported (send grpc-encoding identity)",
            ));
        }
        if len > MAX_REQUEST {
            return Err(Status::resource_exhausted(format!(
                "request of {len} bytes is over the {MAX_REQUEST} byte limit"
            )));
        }
        if self.pending.len() < PREFIX + len {
            return Ok(None);
        }
        self.pending.advance(PREFIX);
        let message = self.pending.split_to(len);
        if self.pending.is_empty() {
            // Give the allocation back: between requests a stream holds nothing.
            self.pending = BytesMut::new();
        }
        M::decode(message.freeze())
            .map(Some)
            .map_err(|err| Status::invalid_argument(format!("malformed request: {err}")))
    }

    fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// The requests of one stream, decoded from the HTTP/2 request body.
pub struct Requests<M> {
    body: Body,
    deframer: Deframer,
    message: PhantomData<fn() -> M>,
}

impl<M: Message + Default> Requests<M> {
    pub fn new(body: Body) -> Self {
        Requests {
            body,
            deframer: Deframer::default(),
            message: PhantomData,
        }
    }

    /// The next request, `None` when the client half-closed the stream. Cancel-safe: bytes
    /// are taken from the body only in the poll that returns them.
    pub async fn message(&mut self) -> Result<Option<M>, Status> {
        loop {
            if let Some(message) = self.deframer.next_message()? {
                return Ok(Some(message));
            }
            match self.body.frame().await {
                None if self.deframer.is_empty() => return Ok(None),
                None => return Err(Status::internal("the stream ended inside a message")),
                Some(Err(status)) => return Err(status),
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        self.deframer.push(data);
                    }
                }
            }
        }
    }
}

/// A gRPC response: the framed messages of `responses`, then, in the trailers, the status
/// that ended it (`grpc-status: 0` when `responses` simply ends).
pub fn response(responses: impl Stream<Item = Outgoing> + Send + 'static) -> http::Response<Body> {
    let frames = futures::stream::unfold(Some(Box::pin(responses)), |responses| async move {
        let mut responses = responses?;
        Some(match responses.next().await {
            Some(Ok(message)) => (Frame::data(message), Some(responses)),
            Some(Err(status)) => (Frame::trailers(status_headers(&status)), None),
            None => (Frame::trailers(status_headers(&Status::ok(""))), None),
        })
    })
    .map(Ok::<_, Infallible>);
    grpc_response(Body::new(StreamBody::new(frames)))
}

/// A response that carries only a status (gRPC's "Trailers-Only"), e.g. for an unknown
/// method.
pub(crate) fn status_only(status: &Status) -> http::Response<Body> {
    let mut response = grpc_response(Body::empty());
    response.headers_mut().extend(status_headers(status));
    response
}

/// `grpc-status` and `grpc-message`.
fn status_headers(status: &Status) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    // Only fails on a message that cannot be a header value even percent-encoded; the
    // status code alone still goes out.
    if status.add_header(&mut headers).is_err() {
        headers.insert("grpc-status", http::HeaderValue::from(status.code() as i32));
    }
    headers
}

fn grpc_response(body: Body) -> http::Response<Body> {
    let mut response = http::Response::new(body);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;

    fn request(nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            response_nonce: nonce.into(),
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_frame_is_the_prefix_and_the_message_in_a_buffer_of_its_size() {
        let message = request("7");
        let framed = frame(&message);
        assert_eq!(framed.len(), PREFIX + message.encoded_len());
        assert_eq!(framed[0], 0, "not compressed");
        assert_eq!(
            u32::from_be_bytes(framed[1..5].try_into().unwrap()) as usize,
            message.encoded_len()
        );
        assert_eq!(&framed[PREFIX..], message.encode_to_vec().as_slice());
    }

    #[test]
    fn messages_split_and_joined_across_chunks_come_out_whole_and_in_order() {
        let stream: Vec<u8> = ["1", "2", "3"]
            .iter()
            .flat_map(|nonce| frame(&request(nonce)).to_vec())
            .collect();
        for chunk_size in [1, 2, 5, 7, stream.len()] {
            let mut deframer = Deframer::default();
            let mut nonces = Vec::new();
            for chunk in stream.chunks(chunk_size) {
                deframer.push(chunk);
                while let Some(message) = deframer.next_message::<DiscoveryRequest>().unwrap() {
                    nonces.push(message.response_nonce);
                }
            }
            assert_eq!(nonces, ["1", "2", "3"], "chunks of {chunk_size}");
            assert!(deframer.is_empty());
            assert_eq!(
                deframer.pending.capacity(),
                0,
                "nothing held between requests"
            );
        }
    }

    #[test]
    fn compressed_oversized_and_malformed_requests_are_refused_with_a_reason() {
        let mut compressed = frame(&request("1")).to_vec();
        compressed[0] = 1;
        let mut deframer = Deframer::default();
        deframer.push(&compressed);
        let err = deframer.next_message::<DiscoveryRequest>().unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unimplemented);

        let mut deframer = Deframer::default();
        deframer.push(&[0, 0xff, 0xff, 0xff, 0xff]);
        let err = deframer.next_message::<DiscoveryRequest>().unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(
            err.message().contains("4294967295 bytes"),
            "{}",
            err.message()
        );

        let mut deframer = Deframer::default();
        deframer.push(&[0, 0, 0, 0, 2, 0xff, 0xff]);
        let err = deframer.next_message::<DiscoveryRequest>().unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().starts_with("malformed request"));
    }

    #[tokio::test]
    async fn a_response_body_is_the_frames_then_an_ok_status() {
        let frames = vec![frame(&request("a")), frame(&request("b"))];
        let body = response(futures::stream::iter(frames.clone()).map(Ok)).into_body();
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned().expect("trailers");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(
            collected.to_bytes(),
            [&frames[0][..], &frames[1][..]].concat()
        );
    }

    #[tokio::test]
    async fn a_failed_stream_ends_with_its_status_and_nothing_after_it() {
        let outgoing: Vec<Outgoing> = vec![
            Ok(frame(&request("a"))),
            Err(Box::new(Status::invalid_argument("malformed request: x"))),
            Ok(frame(&request("never sent"))),
        ];
        let collected = response(futures::stream::iter(outgoing))
            .into_body()
            .collect()
            .await
            .unwrap();
        let trailers = collected.trailers().cloned().expect("trailers");
        assert_eq!(trailers["grpc-status"], "3");
        assert_eq!(trailers["grpc-message"], "malformed%20request:%20x");
        assert_eq!(collected.to_bytes(), frame(&request("a")));
    }

    #[test]
    fn a_status_only_response_carries_the_status_in_its_headers() {
        let response = status_only(&Status::unimplemented("no such method"));
        assert_eq!(response.headers()["content-type"], "application/grpc");
        assert_eq!(response.headers()["grpc-status"], "12");
        assert_eq!(response.headers()["grpc-message"], "no%20such%20method");
    }
}
