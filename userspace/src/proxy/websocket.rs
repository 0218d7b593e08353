//! A WebSocket connection after its 101, spliced between agent and upstream.
//!
//! When the handshake carried a real secret, the upstream may echo it in a
//! message as it may in a body, so its frames are read and written anew
//! with secrets replaced (RFC 6455 §5). A placeholder is rarely as long as
//! its secret, and a secret may straddle two frames of one message, so each
//! message goes to the agent as fragments of the scrubbed bytes as they
//! become known, the last one marked final: clients put fragments together
//! before they hand the message over. Frames the scrubber cannot read
//! (compressed by an extension, or otherwise outside the base protocol)
//! end the connection. Without a secret in the handshake, bytes are copied
//! as they are.
//!
//! A secret may also begin in one message and end in the next, where
//! neither message holds it whole (`message_ends`). A message that may
//! end inside a secret closes the connection before its last frame goes.
//! One whose last one to three bytes begin a secret goes, and the next
//! waits, with those after it, until the stream has gone past where the
//! secret would end; if the secret is there whole, the connection is
//! closed before the rest is sent.

mod message_ends;

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::creds::{Across, Follow, ScrubStream, Scrubber};
use message_ends::MessageEnds;

const FIN: u8 = 0x80;
const RSV: u8 = 0x70;
const MASKED: u8 = 0x80;
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;
/// The largest payload a control frame may have.
const CONTROL_MAX: usize = 125;
/// One read from the upstream.
const READ_CHUNK: usize = 16 * 1024;
/// Messages held back at once, at most. A message that may end inside a
/// secret closes the connection, so one waits past its end only where a
/// longer form begins as a secret found whole at its end does (a key id
/// that begins the whole `id:secret` value).
const HELD_MESSAGES_MAX: usize = 64;

/// Splice the two sides of an upgraded connection. With a scrubber, the
/// upstream's frames are scrubbed on their way to the agent, for the
/// secrets known when it opened and those `Follow` learns of later. Returns why,
/// when the connection was closed on a frame that could not be scrubbed.
pub async fn splice(
    agent: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    scrubbing: Option<(Scrubber, Follow)>,
) -> Option<String> {
    let (Ok(agent), Ok(upstream)) = tokio::join!(agent, upstream) else {
        return None;
    };
    let mut agent = TokioIo::new(agent);
    let mut upstream = TokioIo::new(upstream);
    let Some((scrubber, follow)) = scrubbing else {
        let _ = tokio::io::copy_bidirectional(&mut agent, &mut upstream).await;
        return None;
    };
    let (mut agent_read, agent_write) = tokio::io::split(agent);
    let (upstream_read, mut upstream_write) = tokio::io::split(upstream);
    let outward = async {
        tokio::io::copy(&mut agent_read, &mut upstream_write).await?;
        upstream_write.shutdown().await
    };
    let reframer = Reframer::new(&scrubber).following(Some(follow));
    let inward = relay_frames(upstream_read, agent_write, reframer);
    // The first failure ends both directions: dropping the halves closes
    // both connections.
    // (TLS errors are InvalidData too: only the reframer's own are told.)
    let err = tokio::try_join!(outward, inward).err()?;
    let problem = err.get_ref()?.downcast_ref::<FrameError>()?;
    Some(problem.to_string())
}

async fn relay_frames<R, W>(mut from: R, mut to: W, mut reframer: Reframer) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut input = BytesMut::with_capacity(READ_CHUNK);
    let mut output = BytesMut::new();
    loop {
        input.reserve(READ_CHUNK);
        if from.read_buf(&mut input).await? == 0 {
            // What waited for the next message never goes (see `finish`).
            reframer
                .finish()
                .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidData, err))?;
            return to.shutdown().await;
        }
        let fed = reframer.feed(input.split().freeze(), &mut output);
        // The frames before one it cannot read are scrubbed: they go on.
        to.write_all(&output).await?;
        output.clear();
        fed.map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidData, err))?;
    }
}

/// Why a frame from the upstream could not be scrubbed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("a frame with reserved bits set (an extension such as compression)")]
    Extension,
    #[error("a masked frame from the server")]
    Masked,
    #[error("a frame with the reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    #[error("a fragmented or oversized control frame")]
    BadControl,
    #[error("a continuation frame outside a message")]
    StrayContinuation,
    #[error("a new message before the last one ended")]
    UnfinishedMessage,
    #[error("a frame length past 2^63")]
    Length,
    #[error("a credential split across two messages, which could be replaced in neither")]
    Split,
    #[error(
        "a message that may end inside a credential: its last bytes begin as one does and stop before its length"
    )]
    EndsInsideASecret,
    #[error("more than {HELD_MESSAGES_MAX} messages held back after a credential's first bytes")]
    HeldTooLong,
    #[error(
        "the connection ended while frames that may go on with a credential begun before them waited"
    )]
    EndedWhileHeld,
    #[error("a frame after the close frame")]
    AfterClose,
}

/// The frame whose payload is being read.
enum Payload {
    /// Part of a data message; `fin` ends the message.
    Data { remaining: u64, fin: bool },
    /// A control frame, read whole (it is small) and then scrubbed.
    Control {
        opcode: u8,
        len: usize,
        bytes: Vec<u8>,
    },
}

/// Re-frames the upstream's side of a WebSocket with secrets scrubbed.
pub struct Reframer {
    scrubber: Scrubber,
    stream: ScrubStream,
    /// Bytes of a frame header that arrived without the rest of it.
    partial: BytesMut,
    payload: Option<Payload>,
    /// The message being relayed: its opcode, and whether a fragment of
    /// it has gone to the agent (later ones are continuations).
    message: Option<(u8, bool)>,
    /// Secrets that came after the connection began.
    follow: Option<Follow>,
    /// The bytes around the last message ends.
    ends: MessageEnds,
    /// Frames held back, in order, while a secret may go on from one
    /// message into the next; and how many messages they end.
    held: Option<(BytesMut, usize)>,
    /// The upstream sent its close frame.
    closed: bool,
}

impl Reframer {
    pub fn new(scrubber: &Scrubber) -> Self {
        Reframer {
            scrubber: scrubber.clone(),
            stream: scrubber.stream(),
            partial: BytesMut::new(),
            payload: None,
            message: None,
            follow: None,
            ends: MessageEnds::default(),
            held: None,
            closed: false,
        }
    }

    /// At the end of the upstream's stream, or its close: frames held back
    /// never go. The agent can end the connection (close, or shut its
    /// side) while frames wait; were they sent then, a secret cut between
    /// them and what came before would reach the agent in part.
    pub fn finish(&mut self) -> Result<(), FrameError> {
        match self.held.take() {
            Some(_) => Err(FrameError::EndedWhileHeld),
            None => Ok(()),
        }
    }

    /// Frames scrubbed, from each read on, for the secrets `follow`'s
    /// source has come to know as well.
    pub fn following(mut self, follow: Option<Follow>) -> Self {
        self.follow = follow;
        self
    }

    /// Consume `input`, appending to `out` the frames that can go on.
    pub fn feed(&mut self, mut input: Bytes, out: &mut BytesMut) -> Result<(), FrameError> {
        if let Some(follow) = &mut self.follow
            && follow.catch_up(&mut self.scrubber)
        {
            self.stream.rescrub_with(self.scrubber.clone());
        }
        loop {
            if self.payload.is_none() {
                if !self.partial.is_empty() {
                    self.partial.extend_from_slice(&input);
                    input = self.partial.split().freeze();
                }
                match header(&input)? {
                    None => {
                        self.partial.extend_from_slice(&input);
                        return Ok(());
                    }
                    Some((head, used)) => {
                        input.advance(used);
                        self.start(head, out)?;
                    }
                }
            }
            if input.is_empty() && !self.payload_complete() {
                return Ok(());
            }
            self.take_payload(&mut input, out)?;
        }
    }

    fn payload_complete(&self) -> bool {
        match &self.payload {
            Some(Payload::Data { remaining, .. }) => *remaining == 0,
            Some(Payload::Control { len, bytes, .. }) => bytes.len() == *len,
            None => false,
        }
    }

    fn start(&mut self, head: Header, out: &mut BytesMut) -> Result<(), FrameError> {
        if self.closed {
            return Err(FrameError::AfterClose);
        }
        let Header { fin, opcode, len } = head;
        match opcode {
            CLOSE | PING | PONG => {
                let len = usize::try_from(len).map_err(|_| FrameError::BadControl)?;
                if !fin || len > CONTROL_MAX {
                    return Err(FrameError::BadControl);
                }
                self.payload = Some(Payload::Control {
                    opcode,
                    len,
                    bytes: Vec::with_capacity(len),
                });
            }
            TEXT | BINARY | CONTINUATION => {
                match (opcode, self.message) {
                    (CONTINUATION, None) => return Err(FrameError::StrayContinuation),
                    (CONTINUATION, Some(_)) => {}
                    (_, Some(_)) => return Err(FrameError::UnfinishedMessage),
                    (_, None) => self.message = Some((opcode, false)),
                }
                self.payload = Some(Payload::Data {
                    remaining: len,
                    fin,
                });
            }
            other => return Err(FrameError::ReservedOpcode(other)),
        }
        // An empty frame has no payload to wait for.
        if self.payload_complete() {
            self.take_payload(&mut Bytes::new(), out)?;
        }
        Ok(())
    }

    /// Take what `input` holds of the current payload; a complete frame
    /// is done with and the next header is awaited.
    fn take_payload(&mut self, input: &mut Bytes, out: &mut BytesMut) -> Result<(), FrameError> {
        match self.payload.as_mut() {
            None => {}
            Some(Payload::Data { remaining, fin }) => {
                let n = usize::try_from(*remaining).map_or(input.len(), |r| r.min(input.len()));
                *remaining -= n as u64;
                let (done, fin) = (*remaining == 0, *fin);
                let piece = input.split_to(n);
                // Decided on the bytes as sent, before any of them go.
                let mut said = self.ends.data(&self.scrubber, &piece);
                if said == Across::Split {
                    return Err(self.refuse(FrameError::Split));
                }
                let scrubbed = self.stream.push(piece);
                if done {
                    self.payload = None;
                }
                if done && fin {
                    said = self.ends.end(&self.scrubber);
                    match said {
                        Across::Split => return Err(self.refuse(FrameError::Split)),
                        Across::Cut => return Err(self.refuse(FrameError::EndsInsideASecret)),
                        Across::Wait | Across::Clear => {}
                    }
                    // A message that arrived whole goes on as one frame.
                    let rest = self.stream.finish();
                    let last = match (scrubbed.is_empty(), rest.is_empty()) {
                        (true, _) => rest,
                        (_, true) => scrubbed,
                        _ => [scrubbed, rest].concat().into(),
                    };
                    write_fragment(
                        &mut self.message,
                        last,
                        true,
                        sink(&mut self.held, said, out),
                    );
                    self.message = None;
                    if let Some((_, messages)) = &mut self.held {
                        *messages += 1;
                        if *messages > HELD_MESSAGES_MAX {
                            return Err(self.refuse(FrameError::HeldTooLong));
                        }
                    }
                } else if !scrubbed.is_empty() {
                    let to = sink(&mut self.held, said, out);
                    write_fragment(&mut self.message, scrubbed, false, to);
                } else {
                    sink(&mut self.held, said, out);
                }
            }
            Some(Payload::Control { opcode, len, bytes }) => {
                let n = (*len - bytes.len()).min(input.len());
                bytes.extend_from_slice(&input.split_to(n));
                if bytes.len() == *len {
                    let opcode = *opcode;
                    let bytes = std::mem::take(bytes);
                    self.payload = None;
                    if opcode == CLOSE {
                        self.closed = true;
                        self.finish()?;
                    }
                    let payload = self.scrub_control(opcode, bytes);
                    write_frame(out, FIN | opcode, &payload);
                }
            }
        }
        Ok(())
    }

    /// Frames held back never go once the connection is refused.
    fn refuse(&mut self, problem: FrameError) -> FrameError {
        self.held = None;
        problem
    }

    /// A control frame's payload with secrets replaced, cut to what a
    /// control frame may carry. A close frame's reason stays UTF-8, and is
    /// cut where it may end inside a secret: a server that quotes one in
    /// its reason must cut it to 123 bytes.
    fn scrub_control(&self, opcode: u8, bytes: Vec<u8>) -> Vec<u8> {
        // A close frame's code comes before its reason.
        let code = if opcode == CLOSE {
            bytes.len().min(2)
        } else {
            0
        };
        let Some(scrubbed) = self.scrubber.scrub_final(&bytes[code..]) else {
            return bytes;
        };
        let mut payload = bytes[..code].to_vec();
        payload.extend_from_slice(&scrubbed);
        payload.truncate(CONTROL_MAX);
        if opcode == CLOSE && payload.len() > 2 {
            let valid = match std::str::from_utf8(&payload[2..]) {
                Ok(_) => payload.len(),
                Err(err) => 2 + err.valid_up_to(),
            };
            payload.truncate(valid);
        }
        payload
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Header {
    fin: bool,
    opcode: u8,
    len: u64,
}

/// A frame header at the start of `input` and its length, or `None` if
/// `input` ends before the header does.
fn header(input: &[u8]) -> Result<Option<(Header, usize)>, FrameError> {
    let [first, second, rest @ ..] = input else {
        return Ok(None);
    };
    if first & RSV != 0 {
        return Err(FrameError::Extension);
    }
    if second & MASKED != 0 {
        return Err(FrameError::Masked);
    }
    let (len, used) = match second & 0x7f {
        126 => match rest {
            [a, b, ..] => (u64::from(u16::from_be_bytes([*a, *b])), 4),
            _ => return Ok(None),
        },
        127 => match rest.get(..8) {
            Some(bytes) => {
                let mut be = [0; 8];
                be.copy_from_slice(bytes);
                let len = u64::from_be_bytes(be);
                if len >> 63 != 0 {
                    return Err(FrameError::Length);
                }
                (len, 10)
            }
            None => return Ok(None),
        },
        short => (u64::from(short), 2),
    };
    Ok(Some((
        Header {
            fin: first & FIN != 0,
            opcode: first & 0x0f,
            len,
        },
        used,
    )))
}

/// Where frames go now (`said` is neither [`Across::Split`] nor
/// [`Across::Cut`]): after those
/// `held` back while it is [`Across::Wait`], to the agent once it is
/// [`Across::Clear`], the held ones first.
fn sink<'a>(
    held: &'a mut Option<(BytesMut, usize)>,
    said: Across,
    out: &'a mut BytesMut,
) -> &'a mut BytesMut {
    if said == Across::Wait {
        return &mut held.get_or_insert_with(|| (BytesMut::new(), 0)).0;
    }
    if let Some((frames, _)) = held.take() {
        out.extend_from_slice(&frames);
    }
    out
}

/// A fragment of `message` (its opcode, and whether a fragment of it has
/// gone: later ones are continuations).
fn write_fragment(message: &mut Option<(u8, bool)>, payload: Bytes, fin: bool, out: &mut BytesMut) {
    let Some((opcode, sent)) = message.as_mut() else {
        return;
    };
    let first = if *sent { CONTINUATION } else { *opcode };
    *sent = true;
    write_frame(out, if fin { FIN | first } else { first }, &payload);
}

/// An unmasked frame, as a server sends it.
fn write_frame(out: &mut BytesMut, first: u8, payload: &[u8]) {
    out.put_u8(first);
    match payload.len() {
        len @ 0..=125 => out.put_u8(len as u8),
        len @ 126..=0xffff => {
            out.put_u8(126);
            out.put_u16(len as u16);
        }
        len => {
            out.put_u8(127);
            out.put_u64(len as u64);
        }
    }
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    const SECRET: &str = "s3cret-value-0123456789";
    const PLACEHOLDER: &str = "ph-key";

    fn reframer() -> Reframer {
        let scrubber = Scrubber::new(vec![(
            Secret::new(SECRET.as_bytes().to_vec()),
            PLACEHOLDER.as_bytes().to_vec(),
        )]);
        Reframer::new(&scrubber)
    }

    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        write_frame(&mut out, first, payload);
        out.to_vec()
    }

    /// Reads frames back: `(fin, opcode, payload)`.
    fn frames(mut bytes: &[u8]) -> Vec<(bool, u8, Vec<u8>)> {
        let mut all = Vec::new();
        while !bytes.is_empty() {
            let (head, used) = header(bytes).expect("valid").expect("whole");
            let len = head.len as usize;
            all.push((head.fin, head.opcode, bytes[used..used + len].to_vec()));
            bytes = &bytes[used + len..];
        }
        all
    }

    /// The messages the agent puts together from `frames`, control frames
    /// apart, as `(opcode, payload)`.
    fn messages(frames: &[(bool, u8, Vec<u8>)]) -> Vec<(u8, Vec<u8>)> {
        let mut all = Vec::new();
        let mut current: Option<(u8, Vec<u8>)> = None;
        for (fin, opcode, payload) in frames {
            if *opcode >= CLOSE {
                all.push((*opcode, payload.clone()));
                continue;
            }
            let (_, bytes) = current.get_or_insert_with(|| (*opcode, Vec::new()));
            bytes.extend_from_slice(payload);
            if *fin {
                all.extend(current.take());
            }
        }
        assert!(current.is_none(), "a message was left open");
        all
    }

    fn run(input: &[u8], cut_every: usize) -> Vec<u8> {
        let mut r = reframer();
        let mut out = BytesMut::new();
        for piece in input.chunks(cut_every) {
            r.feed(Bytes::copy_from_slice(piece), &mut out)
                .expect("valid frames");
        }
        out.to_vec()
    }

    #[test]
    fn a_secret_in_a_message_is_replaced_whatever_the_reads() {
        let text = format!("{{\"you sent\":\"Bearer {SECRET}\"}}");
        let input = frame(FIN | TEXT, text.as_bytes());
        let want = text.replace(SECRET, PLACEHOLDER);
        for cut in [1, 2, 3, 7, input.len()] {
            let out = run(&input, cut);
            assert_eq!(
                messages(&frames(&out)),
                [(TEXT, want.as_bytes().to_vec())],
                "reads of {cut} bytes"
            );
        }
    }

    #[test]
    fn a_secret_split_over_fragments_with_a_ping_between_is_replaced() {
        let (a, b) = SECRET.split_at(7);
        let mut input = frame(TEXT, format!("token {a}").as_bytes());
        input.extend(frame(FIN | PING, b"are you there"));
        input.extend(frame(FIN | CONTINUATION, format!("{b} end").as_bytes()));
        input.extend(frame(FIN | BINARY, &[0, 1, 2]));
        for cut in [1, 5, input.len()] {
            let out = run(&input, cut);
            let got = messages(&frames(&out));
            assert_eq!(
                got,
                [
                    (PING, b"are you there".to_vec()),
                    (TEXT, format!("token {PLACEHOLDER} end").into_bytes()),
                    (BINARY, vec![0, 1, 2]),
                ],
                "reads of {cut} bytes"
            );
            assert!(!out.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()));
        }
    }

    #[test]
    fn a_message_read_whole_goes_on_as_one_frame() {
        for input in [
            frame(FIN | TEXT, b"hello"),
            frame(FIN | TEXT, format!("key {SECRET}").as_bytes()),
            frame(FIN | BINARY, b""),
        ] {
            let out = run(&input, input.len());
            assert_eq!(frames(&out).len(), 1, "{input:?}");
        }
        assert_eq!(
            run(&frame(FIN | TEXT, b"hello"), 64),
            frame(FIN | TEXT, b"hello")
        );
    }

    #[test]
    fn lengths_of_every_size_class_survive() {
        for len in [0, 125, 126, 65_535, 65_536, 200_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let out = run(&frame(FIN | BINARY, &payload), 16 * 1024);
            assert_eq!(messages(&frames(&out)), [(BINARY, payload)], "{len} bytes");
        }
    }

    #[test]
    fn a_close_reason_is_scrubbed_and_stays_a_valid_control_frame() {
        let mut payload = vec![0x03, 0xe8];
        payload.extend_from_slice(format!("bad key {SECRET}").as_bytes());
        let out = run(&frame(FIN | CLOSE, &payload), 4);
        let got = frames(&out);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, CLOSE);
        assert_eq!(&got[0].2[2..], format!("bad key {PLACEHOLDER}").as_bytes());

        // A reason the server cut inside the secret loses what may be it;
        // the code stays.
        let mut payload = vec![0x03, 0xe8];
        payload.extend_from_slice(format!("bad key {}", &SECRET[..12]).as_bytes());
        let out = run(&frame(FIN | CLOSE, &payload), 4);
        let got = frames(&out);
        assert_eq!(got[0].2, b"\x03\xe8bad key ");

        // A placeholder longer than its secret cannot push a close frame
        // past 125 bytes, nor cut its reason inside a character.
        let scrubber = Scrubber::new(vec![(
            Secret::new(b"k".to_vec()),
            "é".repeat(100).into_bytes(),
        )]);
        let mut r = Reframer::new(&scrubber);
        let mut out = BytesMut::new();
        r.feed(Bytes::from(frame(FIN | CLOSE, b"\x03\xe8k")), &mut out)
            .expect("valid");
        let got = frames(&out);
        assert!(got[0].2.len() <= CONTROL_MAX);
        assert!(std::str::from_utf8(&got[0].2[2..]).is_ok());
    }

    #[tokio::test]
    async fn the_relay_scrubs_and_stops_at_a_frame_it_cannot_read() {
        let mut input = frame(FIN | TEXT, format!("key {SECRET}").as_bytes());
        input.extend(frame(FIN | 0x40 | TEXT, b"compressed"));
        input.extend(frame(FIN | TEXT, b"never relayed"));
        let mut agent = Vec::new();
        let err = relay_frames(&input[..], &mut agent, reframer())
            .await
            .expect_err("refused");
        // The error is the reframer's own, which is what gets logged.
        let problem = err.get_ref().and_then(|e| e.downcast_ref::<FrameError>());
        assert_eq!(problem, Some(&FrameError::Extension));
        assert_eq!(
            messages(&frames(&agent)),
            [(TEXT, format!("key {PLACEHOLDER}").into_bytes())]
        );
    }

    #[test]
    fn frames_it_cannot_read_end_the_connection() {
        let cases: [(Vec<u8>, FrameError); 6] = [
            // permessage-deflate sets RSV1 on compressed messages.
            (frame(FIN | 0x40 | TEXT, b"x"), FrameError::Extension),
            (
                vec![FIN | TEXT, MASKED | 1, 1, 2, 3, 4, b'x'],
                FrameError::Masked,
            ),
            (frame(FIN | 0x3, b""), FrameError::ReservedOpcode(3)),
            (frame(PING, b""), FrameError::BadControl),
            (
                frame(FIN | CONTINUATION, b"x"),
                FrameError::StrayContinuation,
            ),
            (
                [frame(TEXT, b"a"), frame(FIN | TEXT, b"b")].concat(),
                FrameError::UnfinishedMessage,
            ),
        ];
        for (input, want) in cases {
            let mut r = reframer();
            let err = r
                .feed(Bytes::from(input), &mut BytesMut::new())
                .expect_err("refused");
            assert_eq!(err, want);
        }
        let mut oversized = vec![FIN | PING, 126, 0, 200];
        oversized.extend([0; 200]);
        assert_eq!(
            reframer().feed(Bytes::from(oversized), &mut BytesMut::new()),
            Err(FrameError::BadControl)
        );
    }

    /// The payloads of the data frames in `out`, joined: what an agent
    /// that reads frames as they come sees, whole messages or not.
    fn data_sent(out: &[u8]) -> Vec<u8> {
        frames(out)
            .into_iter()
            .filter(|(_, opcode, _)| *opcode < CLOSE)
            .flat_map(|(_, _, payload)| payload)
            .collect()
    }

    /// Feeds `input` in reads of `read` bytes until the first error.
    fn feed_all(r: &mut Reframer, input: &[u8], read: usize) -> (BytesMut, Option<FrameError>) {
        let mut out = BytesMut::new();
        for piece in input.chunks(read) {
            if let Err(err) = r.feed(Bytes::copy_from_slice(piece), &mut out) {
                return (out, Some(err));
            }
        }
        (out, None)
    }

    #[test]
    fn a_secret_split_across_two_messages_ends_the_connection_before_either_half_goes() {
        for cut in 1..SECRET.len() {
            let (a, b) = SECRET.split_at(cut);
            let mut input = frame(FIN | TEXT, format!("you sent: Bearer {a}").as_bytes());
            input.extend(frame(FIN | TEXT, format!("{b} and more").as_bytes()));
            // A first message that ends in four bytes of the secret or
            // more may end inside it; one that ends in fewer goes, and
            // the second is the split.
            let want = match cut {
                1..=3 => FrameError::Split,
                _ => FrameError::EndsInsideASecret,
            };
            for read in [1, 3, 16, input.len()] {
                let (out, err) = feed_all(&mut reframer(), &input, read);
                assert_eq!(err.as_ref(), Some(&want), "cut at {cut}, reads of {read}");
                // At most the secret's first three bytes went, as for gRPC.
                let sent = data_sent(&out);
                assert!(
                    !sent
                        .windows(4)
                        .any(|w| SECRET.as_bytes().windows(4).any(|s| s == w)),
                    "cut at {cut}, reads of {read}: {:?}",
                    String::from_utf8_lossy(&sent)
                );
            }
        }
        // Long messages on both sides of the end, read as the relay reads.
        let long = "y".repeat(100_000);
        for (cut, want) in [(9, FrameError::EndsInsideASecret), (3, FrameError::Split)] {
            let (a, b) = SECRET.split_at(cut);
            let mut input = frame(FIN | BINARY, format!("{long}{a}").as_bytes());
            input.extend(frame(FIN | BINARY, format!("{b}{long}").as_bytes()));
            let (out, err) = feed_all(&mut reframer(), &input, READ_CHUNK);
            assert_eq!(err, Some(want));
            assert!(
                data_sent(&out).len() <= 100_003,
                "the second message waited"
            );
        }
        // Three first bytes, then what does not go on as the secret: both go.
        let (a, b) = SECRET.split_at(3);
        let mut input = frame(FIN | BINARY, format!("{long}{a}").as_bytes());
        input.extend(frame(FIN | BINARY, format!("#{b}{long}").as_bytes()));
        let (out, err) = feed_all(&mut reframer(), &input, READ_CHUNK);
        assert_eq!(err, None);
        assert_eq!(
            messages(&frames(&out)),
            [
                (BINARY, format!("{long}{a}").into_bytes()),
                (BINARY, format!("#{b}{long}").into_bytes())
            ]
        );
        // Over three messages, the middle one inside the secret.
        let mut input = frame(FIN | TEXT, format!("key {}", &SECRET[..2]).as_bytes());
        input.extend(frame(FIN | TEXT, &SECRET.as_bytes()[2..9]));
        input.extend(frame(FIN | TEXT, &SECRET.as_bytes()[9..]));
        let (out, err) = feed_all(&mut reframer(), &input, input.len());
        assert_eq!(err, Some(FrameError::EndsInsideASecret));
        assert_eq!(data_sent(&out), format!("key {}", &SECRET[..2]).as_bytes());
    }

    /// Whether a message ends the connection must not tell an agent that
    /// writes its end whether a guess goes on as a secret does: a message
    /// ending in the secret's first four bytes, then bytes keys are made
    /// of, ends it whatever those bytes are.
    #[test]
    fn whether_a_message_ends_the_connection_does_not_tell_what_follows_a_secrets_first_bytes() {
        for len in 5..SECRET.len() {
            let guessed = &SECRET[..len];
            let missed = format!("{}Q", &SECRET[..len - 1]);
            for end in [guessed, missed.as_str()] {
                let mut r = reframer();
                let mut out = BytesMut::new();
                let first = format!("log {end}");
                let fed = r.feed(Bytes::from(frame(FIN | TEXT, first.as_bytes())), &mut out);
                assert_eq!(fed, Err(FrameError::EndsInsideASecret), "{end:?}");
                assert!(out.is_empty(), "{end:?}");
            }
        }
        // Followed by a byte no key is made of, or three bytes only: it goes.
        for plain in [
            format!("log {}\"", &SECRET[..9]),
            format!("log {}", &SECRET[..3]),
        ] {
            let mut r = reframer();
            let mut out = BytesMut::new();
            r.feed(Bytes::from(frame(FIN | TEXT, plain.as_bytes())), &mut out)
                .expect("read");
            assert_eq!(messages(&frames(&out)), [(TEXT, plain.into_bytes())]);
        }
    }

    /// A message whose first frames may go on with a secret begun in the
    /// message before waits: a ping goes meanwhile, and a close, or the
    /// end of the stream, ends the connection without it. The agent can
    /// bring either about while frames wait, and the secret's rest would
    /// then never come to show a split.
    #[test]
    fn frames_that_may_go_on_with_a_secret_wait_and_never_go_if_the_connection_ends() {
        for close in [true, false] {
            let mut r = reframer();
            let mut out = BytesMut::new();
            let first = format!("key {}", &SECRET[..3]);
            r.feed(Bytes::from(frame(FIN | TEXT, first.as_bytes())), &mut out)
                .expect("read");
            assert_eq!(messages(&frames(&out)), [(TEXT, first.into_bytes())]);
            out.clear();
            r.feed(Bytes::from(frame(TEXT, &SECRET.as_bytes()[3..8])), &mut out)
                .expect("read");
            r.feed(Bytes::from(frame(FIN | PING, b"hi")), &mut out)
                .expect("read");
            assert_eq!(messages(&frames(&out)), [(PING, b"hi".to_vec())]);
            out.clear();
            let ended = if close {
                r.feed(Bytes::from(frame(FIN | CLOSE, b"\x03\xe8")), &mut out)
            } else {
                r.finish()
            };
            assert_eq!(ended, Err(FrameError::EndedWhileHeld), "close {close}");
            assert!(out.is_empty(), "close {close}");
        }

        // What waits goes once the stream is past where the secret would
        // end, and it is not there.
        let mut r = reframer();
        let mut out = BytesMut::new();
        let first = format!("key {}", &SECRET[..3]);
        r.feed(Bytes::from(frame(FIN | TEXT, first.as_bytes())), &mut out)
            .expect("read");
        out.clear();
        r.feed(Bytes::from(frame(TEXT, b"r3t")), &mut out)
            .expect("read");
        assert!(out.is_empty(), "waits");
        let rest = "z".repeat(SECRET.len());
        r.feed(
            Bytes::from(frame(FIN | CONTINUATION, rest.as_bytes())),
            &mut out,
        )
        .expect("read");
        assert_eq!(
            messages(&frames(&out)),
            [(TEXT, format!("r3t{rest}").into_bytes())]
        );

        // With nothing waiting, the close goes, and nothing after it.
        let mut r = reframer();
        let mut out = BytesMut::new();
        let mut input = frame(FIN | TEXT, b"bye");
        input.extend(frame(FIN | CLOSE, b"\x03\xe8"));
        r.feed(Bytes::from(input), &mut out).expect("read");
        assert_eq!(
            messages(&frames(&out)),
            [(TEXT, b"bye".to_vec()), (CLOSE, b"\x03\xe8".to_vec())]
        );
        assert_eq!(r.finish(), Ok(()));
        assert_eq!(
            r.feed(Bytes::from(frame(FIN | TEXT, b"late")), &mut out),
            Err(FrameError::AfterClose)
        );
    }

    #[tokio::test]
    async fn the_relay_ends_with_an_error_when_the_upstream_ends_while_frames_wait() {
        let first = frame(FIN | TEXT, format!("key {}", &SECRET[..3]).as_bytes());
        let mut input = first.clone();
        input.extend(frame(TEXT, &SECRET.as_bytes()[3..8]));
        let mut agent = Vec::new();
        let err = relay_frames(&input[..], &mut agent, reframer())
            .await
            .expect_err("refused");
        let problem = err.get_ref().and_then(|e| e.downcast_ref::<FrameError>());
        assert_eq!(problem, Some(&FrameError::EndedWhileHeld));
        assert_eq!(agent, first, "only the first message went");
    }

    /// A message that ends in a secret found whole, where a longer form
    /// begins the same way (a key id begins the whole `id:secret` value),
    /// waits past its end; messages that keep it waiting end the
    /// connection at the limit.
    #[test]
    fn messages_that_keep_a_secrets_start_waiting_end_the_connection_at_the_limit() {
        let scrubber = Scrubber::new(vec![
            (Secret::new(b"tok-1234".to_vec()), b"PH-SHORT".to_vec()),
            (
                Secret::new(b"tok-1234:long-secret-value".to_vec()),
                b"PH-LONG".to_vec(),
            ),
        ]);
        let mut input = frame(FIN | TEXT, b"key tok-1234");
        for _ in 0..HELD_MESSAGES_MAX {
            input.extend(frame(FIN | TEXT, b""));
        }
        let (out, err) = feed_all(&mut Reframer::new(&scrubber), &input, input.len());
        assert_eq!(err, Some(FrameError::HeldTooLong));
        assert!(out.is_empty());
        // What does not go on as the longer form lets all go.
        let mut input = frame(FIN | TEXT, b"key tok-1234");
        input.extend(frame(FIN | TEXT, b" and more"));
        let (out, err) = feed_all(&mut Reframer::new(&scrubber), &input, input.len());
        assert_eq!(err, None);
        assert_eq!(
            messages(&frames(&out)),
            [
                (TEXT, b"key PH-SHORT".to_vec()),
                (TEXT, b" and more".to_vec())
            ]
        );
    }

    /// Secrets that gain a token while the connection is open.
    struct Later {
        generation: std::sync::atomic::AtomicU64,
    }

    const TOKEN: &str = "token-fetched-after-the-upgrade-42";

    impl crate::creds::SecretsSource for Later {
        fn generation(&self) -> u64 {
            self.generation.load(std::sync::atomic::Ordering::SeqCst)
        }
        fn scrubber(&self) -> Scrubber {
            Scrubber::new(vec![(
                Secret::new(TOKEN.as_bytes().to_vec()),
                b"airlock-ph-token".to_vec(),
            )])
        }
    }

    #[test]
    fn a_secret_that_came_after_the_upgrade_is_scrubbed_from_later_frames() {
        let later = std::sync::Arc::new(Later {
            generation: 0.into(),
        });
        let follow = crate::creds::Follow::new(later.clone(), 0);
        let mut r = reframer().following(Some(follow));
        let message = format!("{TOKEN} {SECRET}");
        let mut out = BytesMut::new();
        r.feed(Bytes::from(frame(FIN | TEXT, message.as_bytes())), &mut out)
            .expect("read");
        assert_eq!(
            frames(&out)[0].2,
            format!("{TOKEN} {PLACEHOLDER}").as_bytes(),
            "not yet known"
        );
        later
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut out = BytesMut::new();
        // Split across two frames of one message.
        let (a, b) = message.as_bytes().split_at(10);
        r.feed(Bytes::from(frame(TEXT, a)), &mut out).expect("read");
        r.feed(Bytes::from(frame(FIN | CONTINUATION, b)), &mut out)
            .expect("read");
        let payload: Vec<u8> = frames(&out).into_iter().flat_map(|f| f.2).collect();
        assert_eq!(
            String::from_utf8_lossy(&payload),
            format!("airlock-ph-token {PLACEHOLDER}"),
            "the new token and the secret known before"
        );
    }
}
