//! Answers that outlive the secrets they began with. A request takes the
//! scrubber as it stands when it starts, and a streamed answer (an event
//! stream, a long download, a gRPC stream, a WebSocket) may run for hours
//! after. A token fetched in that time, or a value `airlock secret
//! rotate` installs, may be sent to the same host by a later request and
//! echoed on the stream that began before it: an agent could open the
//! stream first to read the token that way. So such an answer asks,
//! before each piece, whether the secrets have changed; if they have, it
//! scrubs from then on for every secret it knew and every one known now.

use std::sync::Arc;

use super::Scrubber;

/// Where the secrets to scrub stand now (the daemon's credentials).
pub trait SecretsSource: Send + Sync {
    /// A count that moves whenever the secrets to scrub change.
    fn generation(&self) -> u64;
    /// The scrubber for the secrets as they are now.
    fn scrubber(&self) -> Scrubber;
}

/// An answer's link to its [`SecretsSource`].
pub struct Follow {
    source: Arc<dyn SecretsSource>,
    /// The generation the answer's scrubber knows.
    seen: u64,
}

impl Follow {
    /// `seen` is the source's generation read before the request took its
    /// scrubber: a change after that read is caught up with.
    pub fn new(source: Arc<dyn SecretsSource>, seen: u64) -> Follow {
        Follow { source, seen }
    }

    /// Grows `scrubber` by the secrets that came since it was last asked;
    /// true when it did. Costs an atomic read when nothing changed.
    pub fn catch_up(&mut self, scrubber: &mut Scrubber) -> bool {
        let now = self.source.generation();
        if now == self.seen {
            return false;
        }
        self.seen = now;
        *scrubber = self.source.scrubber().joined(scrubber);
        true
    }
}

#[cfg(test)]
mod tests {
    use std::{
        pin::Pin,
        sync::{
            Arc, Mutex,
            atomic::{AtomicU64, Ordering},
        },
        task::{Context, Poll, Waker},
    };

    use bytes::Bytes;
    use http_body::Body;

    use super::{Follow, SecretsSource};
    use crate::{creds::Scrubber, secret::Secret, test_bodies::fed};

    /// Secrets a test changes while an answer streams.
    #[derive(Default)]
    struct Source {
        generation: AtomicU64,
        pairs: Mutex<Vec<(&'static str, &'static str)>>,
    }

    impl Source {
        fn add(&self, secret: &'static str, placeholder: &'static str) {
            self.pairs
                .lock()
                .expect("pairs")
                .push((secret, placeholder));
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl SecretsSource for Source {
        fn generation(&self) -> u64 {
            self.generation.load(Ordering::SeqCst)
        }
        fn scrubber(&self) -> Scrubber {
            scrubber(&self.pairs.lock().expect("pairs"))
        }
    }

    fn scrubber(pairs: &[(&str, &str)]) -> Scrubber {
        Scrubber::new(
            pairs
                .iter()
                .map(|(s, p)| (Secret::new(s.as_bytes().to_vec()), p.as_bytes().to_vec()))
                .collect(),
        )
    }

    /// Every data byte the body gives before it would wait.
    fn ready<B: Body<Data = Bytes> + Unpin>(body: &mut B) -> String
    where
        B::Error: std::fmt::Debug,
    {
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = Vec::new();
        while let Poll::Ready(Some(frame)) = Pin::new(&mut *body).poll_frame(&mut cx) {
            if let Ok(data) = frame.expect("no error").into_data() {
                out.extend_from_slice(&data);
            }
        }
        String::from_utf8(out).expect("text")
    }

    const OLD: &str = "old-secret-value-0123456789";
    const NEW: &str = "new-token-fetched-later-9876543210";

    #[test]
    fn a_streamed_answer_scrubs_a_secret_that_came_after_it_began() {
        let source = Arc::new(Source::default());
        source.add(OLD, "airlock-ph-old");
        let seen = source.generation();
        let (body, tx) = fed(None);
        let mut body = source
            .scrubber()
            .wrap(body)
            .following(Some(Follow::new(source.clone(), seen)));
        tx.send(Bytes::from_static(b"event: 1\n\n")).expect("send");
        assert_eq!(ready(&mut body), "event: 1\n\n");
        // A token is fetched, sent upstream, and echoed on the stream,
        // split across two pieces.
        source.add(NEW, "airlock-ph-new");
        tx.send(Bytes::from(format!("got {}", &NEW[..10])))
            .expect("send");
        tx.send(Bytes::from(format!("{} and {OLD}\n", &NEW[10..])))
            .expect("send");
        drop(tx);
        assert_eq!(
            ready(&mut body),
            "got airlock-ph-new and airlock-ph-old\n",
            "the new secret, and the one known before"
        );
    }

    #[test]
    fn an_answer_that_began_under_older_secrets_keeps_scrubbing_them() {
        // A rotation drops the old value from the vault, but a host sent
        // it may still give it back.
        let source = Arc::new(Source::default());
        let before = scrubber(&[(OLD, "airlock-ph-old")]);
        source.add(NEW, "airlock-ph-new");
        let mut follow = Follow::new(source.clone(), 0);
        let mut current = before;
        assert!(follow.catch_up(&mut current));
        assert!(
            !follow.catch_up(&mut current),
            "nothing new the second time"
        );
        let scrubbed = current
            .scrub_bytes(format!("{OLD} {NEW}").as_bytes())
            .expect("both found");
        assert_eq!(&scrubbed[..], b"airlock-ph-old airlock-ph-new");
    }

    #[test]
    fn a_grpc_stream_scrubs_a_secret_that_came_after_it_began() {
        let source = Arc::new(Source::default());
        source.add(OLD, "airlock-ph-old");
        let (body, tx) = fed(None);
        let mut body = crate::creds::GrpcScrubBody::new(body, &source.scrubber(), |_| None)
            .following(Some(Follow::new(source.clone(), source.generation())));
        let message = |text: &str| {
            let mut framed = vec![0];
            framed.extend_from_slice(&u32::try_from(text.len()).expect("short").to_be_bytes());
            framed.extend_from_slice(text.as_bytes());
            Bytes::from(framed)
        };
        source.add(NEW, "airlock-ph-new");
        tx.send(message(&format!("token {NEW}"))).expect("send");
        drop(tx);
        let out = ready(&mut body);
        assert!(out.ends_with("token airlock-ph-new"), "{out:?}");
    }
}
