//! Where the upstream's WebSocket messages ended, and the bytes around
//! those ends: a secret that begins in one message and ends in the next
//! is in neither message whole, so scrubbing each message on its own
//! would let both halves through. The bytes are kept as the upstream sent
//! them, only as many as a secret's longest form could reach across an
//! end, and wiped when dropped.

use zeroize::Zeroizing;

use crate::creds::{Across, Scrubber};

/// A message in whose last bytes this many first bytes of a secret begin
/// waits; fewer go on (three are little of a secret, and one would hold
/// back a message in a hundred). As for gRPC's messages.
const HOLD_PIECE: usize = 4;

#[derive(Default)]
pub struct MessageEnds {
    window: Zeroizing<Vec<u8>>,
    /// Offsets in `window` where messages ended and bytes still to come
    /// may tell whether a secret crosses there.
    ends: Vec<usize>,
}

impl MessageEnds {
    /// Takes a piece of a message's payload, as the upstream sent it, and
    /// says what the ends before it now show.
    pub fn data(&mut self, scrubber: &Scrubber, piece: &[u8]) -> Across {
        let carry = scrubber.carry();
        // Past the last end by `carry` bytes, every secret that could
        // cross it is whole in the window: the rest of a long piece only
        // matters for its last bytes.
        let need = self
            .ends
            .last()
            .map_or(0, |&end| (end + carry).saturating_sub(self.window.len()));
        let (head, rest) = piece.split_at(need.min(piece.len()));
        self.window.extend_from_slice(head);
        let said = scrubber.across(&self.window, &self.ends, HOLD_PIECE);
        if !rest.is_empty() {
            self.ends.clear();
            if rest.len() >= carry {
                self.window.clear();
            }
            self.window
                .extend_from_slice(&rest[rest.len().saturating_sub(carry)..]);
        }
        self.trim(carry);
        said
    }

    /// The message ended after the bytes taken so far. One that may end
    /// inside a secret is [`Across::Cut`], whatever comes next: the next
    /// message goes on with the rest (a split) or not (a secret cut
    /// short). A message therefore never waits past its end, since a
    /// wait there would be a cut: only the frames of one in progress do.
    pub fn end(&mut self, scrubber: &Scrubber) -> Across {
        if scrubber.ends_inside_a_secret(&self.window) {
            return Across::Cut;
        }
        self.ends.push(self.window.len());
        let said = scrubber.across(&self.window, &self.ends, HOLD_PIECE);
        self.trim(scrubber.carry());
        said
    }

    /// Forgets ends no byte to come can tell more about, and the bytes
    /// no end needs.
    fn trim(&mut self, carry: usize) {
        let len = self.window.len();
        self.ends.retain(|&end| len < end + carry);
        let keep_from = self
            .ends
            .first()
            .copied()
            .unwrap_or(len)
            .saturating_sub(carry);
        if keep_from > 0 {
            // The bytes drain leaves past the new length are wiped with
            // the whole capacity when the window is dropped.
            self.window.drain(..keep_from);
            for end in &mut self.ends {
                *end -= keep_from;
            }
        }
    }
}
