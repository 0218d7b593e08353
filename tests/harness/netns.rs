//! A network namespace of the test's own, joined to this one by a veth
//! pair: a host on a network other than loopback, for addresses that
//! Airlock treats differently from loopback, with no traffic leaving the
//! machine. Removed (with its veth pair) when dropped, even on panic.

use std::{
    os::fd::AsRawFd as _,
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU16, Ordering},
    },
};

use super::servers::TagServer;

static NEXT: AtomicU16 = AtomicU16::new(0);

pub struct NetNs {
    name: String,
    /// This side's address on the pair, and the namespace's.
    pub host_ip: String,
    pub ns_ip: String,
    /// The same, in IPv6 (documentation prefix 2001:db8:`subnet`::/64).
    pub host_ip6: String,
    pub ns_ip6: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetNs {
    /// A namespace at 198.18.`subnet`.2/24, this side at .1. The
    /// benchmarking range (RFC 2544) is no network this host can be on,
    /// so a test's route cannot shadow a real one. `subnet` must be
    /// unique among the tests that run at once.
    pub fn new(subnet: u8) -> NetNs {
        let id = format!(
            "{}{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let name = format!("airlock-e2e-{id}");
        let (host_if, ns_if) = (format!("alh{id}"), format!("aln{id}"));
        let ns = NetNs {
            name: name.clone(),
            host_ip: format!("198.18.{subnet}.1"),
            ns_ip: format!("198.18.{subnet}.2"),
            host_ip6: format!("2001:db8:{subnet}::1"),
            ns_ip6: format!("2001:db8:{subnet}::2"),
        };
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", &name,
        ]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", ns.host_ip),
            "dev",
            &host_if,
        ]);
        // No duplicate address detection: the addresses are usable at once.
        let host_cidr6 = format!("{}/64", ns.host_ip6);
        ip(&["addr", "add", &host_cidr6, "dev", &host_if, "nodad"]);
        ip(&["link", "set", &host_if, "up"]);
        let ns_cidr = format!("{}/24", ns.ns_ip);
        let ns_cidr6 = format!("{}/64", ns.ns_ip6);
        for args in [
            ["addr", "add", ns_cidr.as_str(), "dev", ns_if.as_str()].as_slice(),
            &[
                "addr",
                "add",
                ns_cidr6.as_str(),
                "dev",
                ns_if.as_str(),
                "nodad",
            ],
            &["link", "set", ns_if.as_str(), "up"],
            &["link", "set", "lo", "up"],
        ] {
            let mut full = vec!["-n", name.as_str()];
            full.extend_from_slice(args);
            ip(&full);
        }
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A `TagServer` listening inside the namespace on its address.
    pub fn tag_server(&self, tag: &str) -> TagServer {
        let (bind, tag) = (format!("{}:0", self.ns_ip), tag.to_owned());
        self.inside(move || TagServer::start(&bind, &tag))
    }

    /// Runs `work` on a thread inside the namespace, and returns its result.
    pub fn inside<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open the namespace");
            // SAFETY: setns moves only this thread, which exists to work
            // there; the file descriptor is valid for the call.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            work()
        })
        .join()
        .expect("work in the namespace")
    }

    /// Counts, inside the namespace, the frames that arrive on its end of
    /// the pair carrying `marker`, from when this returns (the sniffer is
    /// open) until `FrameCount::finish`. Counting until the sender is
    /// done, not for a fixed time, keeps a slow start from passing for
    /// "nothing arrived".
    pub fn count_frames_with(&self, marker: &'static [u8]) -> FrameCount {
        let path = self.path();
        let stop = Arc::new(AtomicBool::new(false));
        let (ready, sniffing) = std::sync::mpsc::channel();
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open the namespace");
            // SAFETY: as in `inside`.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let sniffer = socket2::Socket::new(
                socket2::Domain::PACKET,
                socket2::Type::RAW,
                Some(socket2::Protocol::from(i32::from(
                    (libc::ETH_P_ALL as u16).to_be(),
                ))),
            )
            .expect("a packet socket in the namespace");
            sniffer
                .set_read_timeout(Some(std::time::Duration::from_millis(100)))
                .expect("timeout");
            let _ = ready.send(());
            // A bound, should the handle never be finished nor dropped.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
            let mut seen = 0;
            let mut frame = [std::mem::MaybeUninit::<u8>::uninit(); 65536];
            while !stopped.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                if let Ok(n) = sniffer.recv(&mut frame) {
                    // SAFETY: recv initialised the first `n` bytes.
                    let bytes: Vec<u8> = frame[..n]
                        .iter()
                        .map(|b| unsafe { b.assume_init() })
                        .collect();
                    if bytes.windows(marker.len()).any(|w| w == marker) {
                        seen += 1;
                    }
                }
            }
            seen
        });
        sniffing
            .recv()
            .expect("the sniffer in the namespace did not start");
        FrameCount {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and with it
        // this end.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Frames being counted in a namespace; see `NetNs::count_frames_with`.
/// Dropped unfinished (a test failing early), it stops the count.
pub struct FrameCount {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl FrameCount {
    /// Call once the sender has exited: counts on for `grace`, for frames
    /// still between the sender's socket and the namespace, then stops.
    pub fn finish(mut self, grace: std::time::Duration) -> usize {
        std::thread::sleep(grace);
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("counted once")
            .join()
            .expect("count frames")
    }
}

impl Drop for FrameCount {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
