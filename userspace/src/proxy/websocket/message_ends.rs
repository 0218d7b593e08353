//! Where the upstream's WebSocket messages ended, and the bytes around
//! those ends: a secret that begins in one message and ends in the next
//! is in neither message whole, so scrubbing each message on its own
//! would let both halves through. The bytes are kept as the upstream sent
//! them, only as many as a secret's longest form could reach across an
//! end, and wiped when dropped. A message that may end inside a secret
//! ([`Scrubber::ends_inside_a_secret`]) is refused at its end: whether
//! the next goes on with the rest (a split) or not (a secret cut short),
//! no part of it may go.

use zeroize::Zeroizing;

use crate::creds::{Across, Scrubber};

/// Frames wait once this many first bytes of a secret that began before
/// a message end are there; fewer go on (three are little of a secret,
/// and one would hold back a message in a hundred).
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
    /// short). Past its end, a message waits only where a longer form
    /// begins as a secret found whole at its end does.
    pub fn end(&mut self, scrubber: &Scrubber) -> Across {
        if scrubber.ends_inside_a_secret(&self.window) {
            return Across::Cut;
        }
        // An empty message ends where the one before did.
        if self.ends.last() != Some(&self.window.len()) {
            self.ends.push(self.window.len());
        }
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
