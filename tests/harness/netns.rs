//! A network namespace of the test's own, joined to this one by a veth
//! pair: a host on a network other than loopback, for addresses that
//! Airlock treats differently from loopback, with no traffic leaving the
//! machine. Removed (with its veth pair) when dropped, even on panic.

use std::{
    os::fd::AsRawFd as _,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU16, Ordering},
};

use super::servers::TagServer;

static NEXT: AtomicU16 = AtomicU16::new(0);

pub struct NetNs {
    name: String,
    /// This side's address on the pair, and the namespace's.
    pub host_ip: String,
    pub ns_ip: String,
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
        ip(&["link", "set", &host_if, "up"]);
        let ns_cidr = format!("{}/24", ns.ns_ip);
        for args in [
            ["addr", "add", ns_cidr.as_str(), "dev", ns_if.as_str()].as_slice(),
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
        let (path, bind, tag) = (self.path(), format!("{}:0", self.ns_ip), tag.to_owned());
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open the namespace");
            // SAFETY: setns moves only this thread, which exists to bind
            // the listener there; the file descriptor is valid for the call.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            TagServer::start(&bind, &tag)
        })
        .join()
        .expect("start a server in the namespace")
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
