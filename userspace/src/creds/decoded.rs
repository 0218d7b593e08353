//! A host that holds secrets is asked for no compression, and most comply.
//! Some compress all the same (a server that keeps its files compressed, a
//! CDN that caches one form). Such an answer in gzip, deflate, br or zstd is
//! decoded here so that the scrubber reads what the agent's client would
//! unpack, and it reaches the agent uncompressed, which every client reads.
//! A coding Airlock does not decode is still refused
//! ([`super::unreadable_coding`]).
//!
//! The decoder gives at most 64 KiB per frame, however much a small input
//! unpacks to, so a compression bomb holds no more of the daemon's memory
//! than any other answer; what it costs is the agent's download. What a
//! decoder keeps between frames is its window: 32 KiB for gzip and deflate,
//! at most 16 MiB for br, and at most 8 MiB for zstd, the limit RFC 9659 sets
//! for HTTP (a frame that asks for more is an error, not an allocation).

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use async_compression::tokio::bufread::{BrotliDecoder, GzipDecoder, ZlibDecoder, ZstdDecoder};
use bytes::Bytes;
use futures_util::{Stream as _, TryStreamExt as _};
use http::{HeaderMap, HeaderValue, header};
use http_body::{Body, Frame};
use http_body_util::BodyExt as _;
use tokio::io::AsyncRead;
use tokio_util::io::{ReaderStream, StreamReader};

/// The read size of the decoder, as of every other body the daemon moves.
const FRAME_MAX: usize = 64 * 1024;

/// A content coding that Airlock decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    /// HTTP's `deflate` is the zlib format (RFC 9110 §8.4.1.2).
    Deflate,
    Brotli,
    Zstd,
}

/// The answer's one content coding, when Airlock can decode it: a single
/// `Content-Encoding` of `gzip` (or `x-gzip`), `deflate`, `br` or `zstd`, and no
/// transfer coding but `chunked`, which hyper has already removed. Layered
/// codings (`gzip, br`) are not decoded.
pub fn decodable_coding(headers: &HeaderMap) -> Option<Coding> {
    let mut values = headers.get_all(header::CONTENT_ENCODING).iter();
    let value = values.next()?.to_str().ok()?.trim();
    if values.next().is_some() {
        return None;
    }
    let coding = if value.eq_ignore_ascii_case("gzip") || value.eq_ignore_ascii_case("x-gzip") {
        Coding::Gzip
    } else if value.eq_ignore_ascii_case("deflate") {
        Coding::Deflate
    } else if value.eq_ignore_ascii_case("br") {
        Coding::Brotli
    } else if value.eq_ignore_ascii_case("zstd") {
        Coding::Zstd
    } else {
        return None;
    };
    let plain_transfer = headers.get_all(header::TRANSFER_ENCODING).iter().all(|v| {
        v.to_str().is_ok_and(|text| {
            text.split(',').map(str::trim).all(|t| {
                t.is_empty()
                    || t.eq_ignore_ascii_case("chunked")
                    || t.eq_ignore_ascii_case("identity")
            })
        })
    });
    plain_transfer.then_some(coding)
}

/// The head of an answer whose body is decoded: no coding, no length (the
/// compressed one), and a weak validator, since the bytes are no longer
/// the ones the upstream's strong `ETag` names (RFC 9110 §8.8.1).
pub fn mark_decoded(headers: &mut HeaderMap) {
    headers.remove(header::CONTENT_ENCODING);
    headers.remove(header::CONTENT_LENGTH);
    if let Some(etag) = headers.get(header::ETAG)
        && etag.as_bytes().first() == Some(&b'"')
    {
        let mut weak = b"W/".to_vec();
        weak.extend_from_slice(etag.as_bytes());
        match HeaderValue::from_bytes(&weak) {
            Ok(weak) => {
                headers.insert(header::ETAG, weak);
            }
            Err(_) => {
                headers.remove(header::ETAG);
            }
        }
    }
}

/// A compressed body, decoded as it streams. Trailers are dropped: a
/// decoder reads data only.
pub struct Decoded {
    frames: ReaderStream<Pin<Box<dyn AsyncRead + Send>>>,
}

impl Decoded {
    pub fn new<B>(body: B, coding: Coding) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let compressed = StreamReader::new(body.into_data_stream().map_err(io::Error::other));
        let reader: Pin<Box<dyn AsyncRead + Send>> = match coding {
            Coding::Gzip => {
                let mut decoder = GzipDecoder::new(compressed);
                // A gzip stream may be several members, one after another
                // (RFC 1952 §2.2), as `cat a.gz b.gz` makes.
                decoder.multiple_members(true);
                Box::pin(decoder)
            }
            Coding::Deflate => Box::pin(ZlibDecoder::new(compressed)),
            Coding::Brotli => Box::pin(BrotliDecoder::new(compressed)),
            Coding::Zstd => {
                let mut decoder = ZstdDecoder::new_for_http(compressed);
                // One or more frames (RFC 8878 §3).
                decoder.multiple_members(true);
                Box::pin(decoder)
            }
        };
        Decoded {
            frames: ReaderStream::with_capacity(reader, FRAME_MAX),
        }
    }
}

impl Body for Decoded {
    type Data = Bytes;
    /// A body that does not decode ends in an error: the agent's client
    /// sees the answer cut short, never the undecoded rest.
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        Pin::new(&mut self.frames)
            .poll_next(cx)
            .map(|next| next.map(|chunk| chunk.map(Frame::data)))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use http_body_util::{BodyExt as _, StreamBody};

    use super::*;
    use crate::proxy::header_map as headers;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).expect("gzip");
        e.finish().expect("gzip")
    }

    fn zlib(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).expect("zlib");
        e.finish().expect("zlib")
    }

    fn brotli(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut e = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        e.write_all(bytes).expect("brotli");
        drop(e);
        out
    }

    /// Two zstd frames, one after another, of `bytes`' two halves.
    fn zstd_frames(bytes: &[u8]) -> Vec<u8> {
        let (first, second) = bytes.split_at(bytes.len() / 2);
        let mut out = zstd::encode_all(first, 3).expect("zstd");
        out.extend(zstd::encode_all(second, 3).expect("zstd"));
        out
    }

    /// A body that arrives in pieces of `piece` bytes, as a network gives it.
    fn arriving(bytes: Vec<u8>, piece: usize) -> impl Body<Data = Bytes, Error = io::Error> + Send {
        let frames: Vec<Result<Frame<Bytes>, io::Error>> = bytes
            .chunks(piece)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    async fn frames_of(mut body: Decoded) -> Result<Vec<Bytes>, io::Error> {
        let mut frames = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                frames.push(data);
            }
        }
        Ok(frames)
    }

    fn run<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn the_codings_airlock_decodes_are_recognised_and_no_others() {
        type Case<'a> = (&'a [(&'a str, &'a str)], Option<Coding>);
        let cases: [Case; 12] = [
            (&[("content-encoding", "gzip")], Some(Coding::Gzip)),
            (&[("content-encoding", "X-GZIP")], Some(Coding::Gzip)),
            (&[("content-encoding", " deflate ")], Some(Coding::Deflate)),
            (&[("content-encoding", "br")], Some(Coding::Brotli)),
            (
                &[
                    ("content-encoding", "gzip"),
                    ("transfer-encoding", "chunked"),
                ],
                Some(Coding::Gzip),
            ),
            (&[], None),
            (&[("content-encoding", "ZStd")], Some(Coding::Zstd)),
            (&[("content-encoding", "compress")], None),
            (&[("content-encoding", "gzip, br")], None),
            (
                &[("content-encoding", "gzip"), ("content-encoding", "gzip")],
                None,
            ),
            (
                &[
                    ("content-encoding", "gzip"),
                    ("transfer-encoding", "gzip, chunked"),
                ],
                None,
            ),
            (&[("content-encoding", "identity")], None),
        ];
        for (pairs, expected) in cases {
            assert_eq!(decodable_coding(&headers(pairs)), expected, "{pairs:?}");
        }
    }

    #[test]
    fn a_decoded_head_has_no_coding_no_length_and_a_weak_etag() {
        let mut h = headers(&[
            ("content-encoding", "gzip"),
            ("content-length", "120"),
            ("etag", "\"abc\""),
            ("content-type", "application/json"),
        ]);
        mark_decoded(&mut h);
        assert_eq!(
            h.get(header::ETAG).map(|v| v.as_bytes()),
            Some(&b"W/\"abc\""[..])
        );
        assert!(!h.contains_key(header::CONTENT_ENCODING));
        assert!(!h.contains_key(header::CONTENT_LENGTH));
        assert!(h.contains_key(header::CONTENT_TYPE));

        let mut h = headers(&[("etag", "W/\"abc\"")]);
        mark_decoded(&mut h);
        assert_eq!(
            h.get(header::ETAG).map(|v| v.as_bytes()),
            Some(&b"W/\"abc\""[..])
        );
    }

    #[test]
    fn each_coding_decodes_to_the_original_bytes_in_any_pieces() {
        let original: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let cases = [
            (Coding::Gzip, gzip(&original)),
            (Coding::Deflate, zlib(&original)),
            (Coding::Brotli, brotli(&original)),
            (Coding::Zstd, zstd_frames(&original)),
        ];
        for (coding, compressed) in cases {
            for piece in [1, 7, 4096, usize::MAX] {
                let piece = piece.min(compressed.len());
                let frames = run(frames_of(Decoded::new(
                    arriving(compressed.clone(), piece),
                    coding,
                )))
                .expect("decodes");
                assert_eq!(frames.concat(), original, "{coding:?} in pieces of {piece}");
            }
        }
    }

    #[test]
    fn gzip_members_one_after_another_decode_as_one_body() {
        let mut two = gzip(b"first member, ");
        two.extend(gzip(b"second member"));
        let frames = run(frames_of(Decoded::new(arriving(two, 5), Coding::Gzip))).expect("decodes");
        assert_eq!(frames.concat(), b"first member, second member");
    }

    /// 64 MiB of zeros compress to about 64 KiB: the decoder hands them on
    /// in frames no larger than it reads, never the whole at once.
    #[test]
    fn a_compression_bomb_comes_out_in_bounded_frames() {
        let zeros = vec![0u8; 64 << 20];
        let compressed = gzip(&zeros);
        drop(zeros);
        assert!(compressed.len() < 1 << 20, "{}", compressed.len());
        let frames = run(frames_of(Decoded::new(
            arriving(compressed, 16 * 1024),
            Coding::Gzip,
        )))
        .expect("decodes");
        assert_eq!(frames.iter().map(Bytes::len).sum::<usize>(), 64 << 20);
        assert!(frames.iter().all(|f| f.len() <= FRAME_MAX));
    }

    #[test]
    fn a_body_that_does_not_decode_ends_in_an_error() {
        let mut broken = gzip(b"a body whose end is lost on the way");
        broken.truncate(broken.len() - 6);
        assert!(run(frames_of(Decoded::new(arriving(broken, 8), Coding::Gzip))).is_err());
        let garbage = b"not compressed at all, though the header says so".to_vec();
        for coding in [Coding::Gzip, Coding::Deflate, Coding::Brotli, Coding::Zstd] {
            assert!(
                run(frames_of(Decoded::new(
                    arriving(garbage.clone(), 8),
                    coding
                )))
                .is_err(),
                "{coding:?}"
            );
        }
    }

    /// A zstd frame may ask for a window of up to 3.75 TiB. The decoder
    /// would allocate it; HTTP's zstd allows 8 MiB (RFC 9659 §3).
    #[test]
    fn a_zstd_frame_that_asks_for_a_window_past_8_mib_is_refused() {
        let within = vec![7u8; 1 << 20];
        let encode = |window_log: u32| {
            // Streamed with no size given, so the frame header declares
            // the window rather than the content's size.
            let mut e = zstd::Encoder::new(Vec::new(), 3).expect("zstd");
            e.window_log(window_log).expect("window");
            e.write_all(&within).expect("zstd");
            e.finish().expect("zstd")
        };
        let frames = run(frames_of(Decoded::new(
            arriving(encode(23), 4096),
            Coding::Zstd,
        )))
        .expect("an 8 MiB window decodes");
        assert_eq!(frames.concat(), within);
        assert!(
            run(frames_of(Decoded::new(
                arriving(encode(24), 4096),
                Coding::Zstd
            )))
            .is_err(),
            "a 16 MiB window must be refused"
        );
    }
}
