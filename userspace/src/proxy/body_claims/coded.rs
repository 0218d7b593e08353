//! A body sent in a content coding is read for claims as a server that
//! undoes the coding reads it (Apache's `SetInputFilter DEFLATE`, a
//! middleware that inflates request bodies): a gzipped `_method=DELETE` is
//! a DELETE to Laravel behind such a server. The scanner reads what the
//! decoder gives, piece by piece, as it reads a plain body; the upstream
//! still gets the bytes the agent sent.
//!
//! What cannot be read is claimed as [`UNREADABLE`], which no rule names:
//! a coding Airlock does not decode, codings layered on each other, bytes
//! that do not decode, and a body that unpacks to more than
//! [`MAX_DECODED`], which bounds the work a small compressed body can ask
//! of the daemon. What a decoder keeps between pieces is its window: 32 KiB
//! for gzip and deflate, at most 16 MiB for br, and 8 MiB for zstd, as for
//! answers ([`crate::creds::Coding`]).

use std::io::{self, Write};

use http::{HeaderMap, header};

use super::{Scanner, UNREADABLE};
use crate::creds::Coding;

/// Most bytes a coded body is read to once decoded: as many as the daemon
/// reads of an upload nobody wants (`agent_body`). Past it, the body is
/// claimed as unreadable.
pub const MAX_DECODED: u64 = 64 * 1024 * 1024;

/// The largest zstd window decoded: 8 MiB, the limit RFC 9659 sets for HTTP.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;
/// The brotli decoder's output buffer.
const BROTLI_BUFFER: usize = 16 * 1024;

/// How a request's body is coded, as its `Content-Encoding` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyCoding {
    /// No coding, or only `identity`.
    Plain,
    Decodes(Coding),
    /// A coding Airlock does not decode, or several layered.
    Unreadable,
}

impl BodyCoding {
    pub fn of(headers: &HeaderMap) -> BodyCoding {
        let mut found = None;
        for value in headers.get_all(header::CONTENT_ENCODING) {
            let Ok(text) = value.to_str() else {
                return BodyCoding::Unreadable;
            };
            for name in text.split(',').map(str::trim) {
                if name.is_empty() || name.eq_ignore_ascii_case("identity") {
                    continue;
                }
                let Some(coding) = coding_named(name) else {
                    return BodyCoding::Unreadable;
                };
                if found.replace(coding).is_some() {
                    return BodyCoding::Unreadable;
                }
            }
        }
        found.map_or(BodyCoding::Plain, BodyCoding::Decodes)
    }
}

fn coding_named(name: &str) -> Option<Coding> {
    let is = |known: &str| name.eq_ignore_ascii_case(known);
    if is("gzip") || is("x-gzip") {
        Some(Coding::Gzip)
    } else if is("deflate") {
        Some(Coding::Deflate)
    } else if is("br") {
        Some(Coding::Brotli)
    } else if is("zstd") {
        Some(Coding::Zstd)
    } else {
        None
    }
}

/// A coded body's decoder, writing into the scanner of what it decodes to.
pub struct Decoding {
    decoder: Decoder,
    /// The decoder failed, or the body unpacked past [`MAX_DECODED`].
    broken: bool,
    /// No byte came: an empty body is no coded stream, and claims nothing.
    fed: bool,
}

enum Decoder {
    // Every member of a gzip body: servers that inflate read them all.
    Gzip(flate2::write::MultiGzDecoder<Sink>),
    Deflate(flate2::write::ZlibDecoder<Sink>),
    Brotli(Box<brotli_decompressor::DecompressorWriter<Sink>>),
    Zstd(zstd::stream::write::Decoder<'static, Sink>),
    /// No decoder could be made.
    None,
}

/// Where decoded bytes go: the scanner, as long as there are few enough.
struct Sink {
    scanner: Option<Scanner>,
    decoded: u64,
}

impl Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.decoded += bytes.len() as u64;
        if self.decoded > MAX_DECODED {
            return Err(io::Error::other("the body unpacks to too much"));
        }
        if let Some(scanner) = self.scanner.as_mut() {
            scanner.feed(bytes);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Decoding {
    pub fn new(coding: Coding, scanner: Scanner) -> Decoding {
        let sink = Sink {
            scanner: Some(scanner),
            decoded: 0,
        };
        let mut broken = false;
        let decoder = match coding {
            Coding::Gzip => Decoder::Gzip(flate2::write::MultiGzDecoder::new(sink)),
            Coding::Deflate => Decoder::Deflate(flate2::write::ZlibDecoder::new(sink)),
            Coding::Brotli => Decoder::Brotli(Box::new(
                brotli_decompressor::DecompressorWriter::new(sink, BROTLI_BUFFER),
            )),
            Coding::Zstd => {
                let raw = zstd::stream::raw::Decoder::new().and_then(|mut raw| {
                    use zstd::stream::raw::DParameter;
                    raw.set_parameter(DParameter::WindowLogMax(ZSTD_WINDOW_LOG_MAX))?;
                    Ok(raw)
                });
                match raw {
                    Ok(raw) => Decoder::Zstd(zstd::stream::write::Decoder::with_decoder(sink, raw)),
                    // No context to be had (out of memory): nothing is
                    // decoded, and the body is claimed as unreadable.
                    Err(_) => {
                        broken = true;
                        Decoder::None
                    }
                }
            }
        };
        Decoding {
            decoder,
            broken,
            fed: false,
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        if self.broken || bytes.is_empty() {
            return;
        }
        self.fed = true;
        let written = match &mut self.decoder {
            Decoder::Gzip(d) => d.write_all(bytes),
            Decoder::Deflate(d) => d.write_all(bytes),
            Decoder::Brotli(d) => d.write_all(bytes),
            Decoder::Zstd(d) => d.write_all(bytes),
            Decoder::None => Err(io::ErrorKind::Unsupported.into()),
        };
        self.broken = written.is_err();
    }

    /// What the decoded body claims; a body that did not decode whole
    /// claims [`UNREADABLE`] besides.
    pub fn finish(mut self) -> Vec<String> {
        if self.fed && !self.broken {
            let ended = match &mut self.decoder {
                Decoder::Gzip(d) => d.try_finish(),
                Decoder::Deflate(d) => d.try_finish(),
                Decoder::Brotli(d) => d.close(),
                Decoder::Zstd(d) => d.do_finish(),
                Decoder::None => Err(io::ErrorKind::Unsupported.into()),
            };
            self.broken = ended.is_err();
        }
        let sink = match &mut self.decoder {
            Decoder::Gzip(d) => Some(d.get_mut()),
            Decoder::Deflate(d) => Some(d.get_mut()),
            Decoder::Brotli(d) => Some(d.get_mut()),
            Decoder::Zstd(d) => Some(d.get_mut()),
            Decoder::None => None,
        };
        let mut claims = sink
            .and_then(|sink| sink.scanner.take())
            .map(Scanner::finish)
            .unwrap_or_default();
        if self.broken {
            claims.push(UNREADABLE.to_owned());
        }
        claims
    }
}
