//! Kernel capture, end to end: real eBPF programs on a real cgroup, real
//! clients (Node, curl, Python) run as agents by `airlock run`, servers on
//! loopback. Needs root; fails loudly without it.

mod harness;

use std::{io::Write as _, net::TcpStream, time::Duration};

use harness::{Daemon, DaemonOptions, describe, servers::*, stdout};

const PY: &str = "/usr/bin/python3";

fn capture_policy(tcp: &[String]) -> String {
    let mut yaml =
        String::from("agent: capture-bot\nrules:\n  - host: allowed.test\n    methods: [GET]\n");
    if !tcp.is_empty() {
        yaml.push_str("tcp:\n");
        for t in tcp {
            yaml.push_str(&format!("  - \"{t}\"\n"));
        }
    }
    yaml
}

fn by_dst<'a>(records: &'a [serde_json::Value], dst: &str) -> Vec<&'a serde_json::Value> {
    records.iter().filter(|r| r["dst"] == dst).collect()
}

#[test]
fn node_curl_and_python_are_captured_whatever_http_proxy_says() {
    let d = Daemon::start(DaemonOptions::with_policy(
        "capture.yaml",
        &capture_policy(&[]),
    ));
    // Four targets nobody may reach; each client aims at its own.
    let https_get = TagServer::start("127.0.0.1:0", "https-get");
    let fetch = TagServer::start("127.0.0.1:0", "fetch");
    let curl = TagServer::start("127.0.0.1:0", "curl");
    let py = TagServer::start("127.0.0.1:0", "python");

    let node_get = format!(
        "require('https').get('https://127.0.0.1:{}/', r => console.log('status', r.statusCode)).on('error', e => console.log('error', e.code))",
        https_get.addr.port()
    );
    // Airlock terminates the TLS (the agent trusts its CA) and its policy
    // answers: no rule names 127.0.0.1.
    let out = d.run_agent("capture-bot", &["node", "-e", &node_get]);
    assert!(
        stdout(&out).contains("status 403"),
        "https.get was not answered by Airlock: {}",
        describe(&out)
    );

    // fetch with HTTP_PROXY pointing at a dead port: Node's fetch ignores it
    // anyway, and the kernel captures the direct connect.
    let node_fetch = format!(
        "process.env.HTTP_PROXY='http://127.0.0.1:1'; process.env.HTTPS_PROXY='http://127.0.0.1:1'; fetch('http://127.0.0.1:{}/').then(r => console.log('status', r.status), e => console.log('error', e.cause && e.cause.code))",
        fetch.addr.port()
    );
    let out = d.run_agent("capture-bot", &["node", "-e", &node_fetch]);
    assert!(
        stdout(&out).contains("status 403"),
        "fetch was not answered by Airlock: {}",
        describe(&out)
    );

    let url = format!("http://127.0.0.1:{}/", curl.addr.port());
    let out = d.run_agent(
        "capture-bot",
        &[
            "env",
            "HTTP_PROXY=http://127.0.0.1:1",
            "curl",
            "--noproxy",
            "*",
            "-sS",
            "--max-time",
            "5",
            "-w",
            " %{http_code}",
            &url,
        ],
    );
    let text = stdout(&out);
    assert!(
        text.contains("\"error\":\"denied\"") && text.ends_with(" 403"),
        "curl was not answered by Airlock: {}",
        describe(&out)
    );

    let py_src = format!(
        "import socket\ntry:\n    s = socket.create_connection(('127.0.0.1', {}), timeout=5)\n    s.sendall(b'hello\\n')\n    print('got', s.recv(100))\nexcept OSError as e:\n    print('error', e)\n",
        py.addr.port()
    );
    let out = d.run_agent("capture-bot", &[PY, "-c", &py_src]);
    assert!(
        !stdout(&out).contains("python"),
        "python reached the target: {}",
        describe(&out)
    );

    for server in [&https_get, &fetch, &curl, &py] {
        let dst = server.addr.to_string();
        let rec = d.wait_audit(&format!("for {dst}"), |r| r["dst"] == dst.as_str());
        assert_eq!(rec["agent"], "capture-bot", "{rec}");
        assert_eq!(rec["action"], "deny", "{rec}");
        let reason = rec["reason"].as_str().unwrap_or_default();
        assert!(reason == "no_rule" || reason == "no_rule_for_host", "{rec}");
        assert_eq!(rec["uid"], 65534, "the agent ran as nobody: {rec}");
        assert!(rec["pid"].as_u64().unwrap_or(0) > 1, "{rec}");
        assert!(rec["cgroup"].as_u64().unwrap_or(0) > 0, "{rec}");
        assert_eq!(server.accepted(), 0, "{dst} was reached directly");
    }
}

#[test]
fn tcp_rules_relay_ipv4_ipv6_and_v4_mapped_destinations() {
    let v4 = TagServer::start("127.0.0.1:0", "v4-server");
    let v6 = TagServer::start("[::1]:0", "v6-server");
    let policy = capture_policy(&[
        format!("127.0.0.1/32:{}", v4.addr.port()),
        format!("[::1/128]:{}", v6.addr.port()),
    ]);
    let d = Daemon::start(DaemonOptions::with_policy("capture.yaml", &policy));
    let src = format!(
        r#"
import socket
def talk(family, addr):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(addr)
    f = s.makefile('rb')
    tag = f.readline().strip().decode()
    s.sendall(b'ping\n')
    echo = f.readline().strip().decode()
    print(tag, echo)
talk(socket.AF_INET, ('127.0.0.1', {p4}))
talk(socket.AF_INET6, ('::1', {p6}))
talk(socket.AF_INET6, ('::ffff:127.0.0.1', {p4}))
"#,
        p4 = v4.addr.port(),
        p6 = v6.addr.port()
    );
    let out = d.run_agent("capture-bot", &[PY, "-c", &src]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        ["v4-server ping", "v6-server ping", "v4-server ping"],
        "{}",
        describe(&out)
    );
    // The daemon's own upstream connects were not redirected to itself:
    // the servers saw them.
    assert_eq!(v4.accepted(), 2);
    assert_eq!(v6.accepted(), 1);
    let v4_dst = v4.addr.to_string();
    let v6_dst = v6.addr.to_string();
    d.wait_audit("for the v6 relay", |r| {
        r["dst"] == v6_dst.as_str() && r["action"] == "allow"
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let records = d.audit_records();
        let v4_allowed = by_dst(&records, &v4_dst)
            .iter()
            .filter(|r| r["action"] == "allow")
            .count();
        if v4_allowed == 2 {
            let rec = by_dst(&records, &v4_dst)[0];
            assert_eq!(rec["agent"], "capture-bot");
            assert!(rec["rule"].as_str().is_some_and(|r| !r.is_empty()), "{rec}");
            assert!(rec["bytes_in"].as_u64().unwrap_or(0) > 0, "{rec}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "v4 relays not audited: {records:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn udp_other_than_dns_and_raw_sockets_are_refused() {
    let d = Daemon::start(DaemonOptions::with_policy(
        "capture.yaml",
        &capture_policy(&[]),
    ));
    let sink = UdpSink::start("127.0.0.1:0");
    let sink6 = UdpSink::start("[::1]:0");
    let src = format!(
        r#"
import socket
def attempt(name, fn):
    try:
        fn()
        print(name, 'sent')
    except PermissionError:
        print(name, 'EPERM')
    except OSError as e:
        print(name, 'error', e.errno)
def sendto():
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', {p}))
def connected():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(('127.0.0.1', {p})); s.send(b'x')
def sendto6():
    socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).sendto(b'x', ('::1', {p6}))
def mapped():
    socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).sendto(b'x', ('::ffff:127.0.0.1', {p}))
def raw():
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
def raw6():
    socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
def ping():
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
def mptcp():
    socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
def udplite():
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM, 136)
for name, fn in [('sendto', sendto), ('connected', connected), ('sendto6', sendto6), ('mapped', mapped), ('raw', raw), ('raw6', raw6), ('ping', ping), ('mptcp', mptcp), ('udplite', udplite)]:
    attempt(name, fn)
"#,
        p = sink.addr.port(),
        p6 = sink6.addr.port()
    );
    // As root, so that EPERM comes from Airlock and not from a missing
    // CAP_NET_RAW.
    // Control: outside the managed cgroup, as root, these work, so an EPERM
    // inside can only come from Airlock. (ICMP "ping" sockets also depend
    // on the host's net.ipv4.ping_group_range; they are checked where the
    // host allows them.)
    let required = [
        "sendto",
        "connected",
        "sendto6",
        "mapped",
        "raw",
        "raw6",
        "mptcp",
        "udplite",
    ];
    let outside = std::process::Command::new(PY)
        .args(["-c", &src])
        .output()
        .expect("python");
    let works_outside = |name: &str| {
        stdout(&outside)
            .lines()
            .any(|l| l == format!("{name} sent"))
    };
    for name in required {
        assert!(
            works_outside(name),
            "{name} does not work outside Airlock either, so this would prove nothing:\n{}",
            describe(&outside)
        );
    }
    let mut kinds = required.to_vec();
    if works_outside("ping") {
        kinds.push("ping");
    }
    let wait_for = |sink: &UdpSink, n: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sink.received.load(std::sync::atomic::Ordering::SeqCst) < n {
            assert!(
                std::time::Instant::now() < deadline,
                "control datagrams never arrived"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for(&sink, 3);
    wait_for(&sink6, 1);
    let before = sink.received.load(std::sync::atomic::Ordering::SeqCst);
    let before6 = sink6.received.load(std::sync::atomic::Ordering::SeqCst);

    // As root, so that EPERM comes from Airlock and not from a missing
    // CAP_NET_RAW.
    let out = d.run_agent_as("capture-bot", &["--allow-root"], &[PY, "-c", &src]);
    for name in kinds {
        assert!(
            stdout(&out).lines().any(|l| l == format!("{name} EPERM")),
            "{name} was not refused with EPERM:\n{}",
            describe(&out)
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        sink.received.load(std::sync::atomic::Ordering::SeqCst),
        before,
        "an agent datagram arrived"
    );
    assert_eq!(
        sink6.received.load(std::sync::atomic::Ordering::SeqCst),
        before6,
        "an agent datagram arrived"
    );
    // The kernel side says why: its log ring reaches the daemon's log
    // (raw IPv4: family 2, SOCK_RAW 3).
    d.wait_for_log(
        "airlock: refused socket family=2 type=3",
        "the kernel's refusal of a raw socket",
    );
}

/// The hooks of the internet families never see a socket of another
/// family. AF_VSOCK needs no privilege and reaches the hypervisor (in VMs
/// that carry their network over it, the internet); AF_PACKET and AF_XDP
/// put frames on the wire for an agent run as root. `airlock run` refuses
/// them, and io_uring, whose requests no system call filter sees. Unix and
/// netlink sockets stay on the host, and runtimes need them.
#[test]
fn sockets_of_families_that_leave_the_host_are_refused() {
    let d = Daemon::start(DaemonOptions::with_policy(
        "capture.yaml",
        &capture_policy(&[]),
    ));
    // Sockets are only made, never connected: nothing leaves this host.
    let src = r#"
import socket
def attempt(name, family, kind, proto=0):
    try:
        socket.socket(family, kind, proto).close()
        print(name, 'created')
    except PermissionError:
        print(name, 'EPERM')
    except OSError as e:
        print(name, 'error', e.errno)
attempt('vsock', 40, socket.SOCK_STREAM)
attempt('vsock-dgram', 40, socket.SOCK_DGRAM)
attempt('packet', 17, socket.SOCK_RAW, 0x0300)
attempt('xdp', 44, socket.SOCK_RAW)
attempt('unix', socket.AF_UNIX, socket.SOCK_STREAM)
attempt('netlink', socket.AF_NETLINK, socket.SOCK_RAW, 0)
attempt('tcp', socket.AF_INET6, socket.SOCK_STREAM)
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
params = ctypes.create_string_buffer(120)
fd = libc.syscall(425, 4, params)
print('io_uring', 'created' if fd >= 0 else 'EPERM' if ctypes.get_errno() == 1 else 'error %d' % ctypes.get_errno())
if fd >= 0:
    os.close(fd)
"#;
    let outside = std::process::Command::new(PY)
        .args(["-c", src])
        .output()
        .expect("python");
    let created = |out: &std::process::Output, name: &str| {
        stdout(out).lines().any(|l| l == format!("{name} created"))
    };
    // Control: as root outside the managed cgroup these are made, so an
    // EPERM inside comes from Airlock and not from a missing capability
    // or a kernel without the family.
    for name in ["vsock", "packet", "unix", "netlink", "tcp", "io_uring"] {
        assert!(
            created(&outside, name),
            "{name} sockets cannot be made outside Airlock either, so this would prove nothing:\n{}",
            describe(&outside)
        );
    }
    let mut refused = vec!["vsock", "packet", "io_uring"];
    for name in ["vsock-dgram", "xdp"] {
        if created(&outside, name) {
            refused.push(name);
        }
    }

    let as_root = d.run_agent_as("capture-bot", &["--allow-root"], &[PY, "-c", src]);
    let as_nobody = d.run_agent("capture-bot", &[PY, "-c", src]);
    for name in &refused {
        assert!(
            stdout(&as_root)
                .lines()
                .any(|l| l == format!("{name} EPERM")),
            "{name} was not refused to a root agent:\n{}",
            describe(&as_root)
        );
    }
    for name in ["vsock", "io_uring"] {
        assert!(
            stdout(&as_nobody)
                .lines()
                .any(|l| l == format!("{name} EPERM")),
            "an unprivileged agent was not refused {name}:\n{}",
            describe(&as_nobody)
        );
    }
    for out in [&as_root, &as_nobody] {
        for name in ["unix", "netlink", "tcp"] {
            assert!(
                created(out, name),
                "{name} sockets must still work for agents:\n{}",
                describe(out)
            );
        }
    }
}

/// The hooks rewrite where an agent's socket sends; the wire goes where the
/// IP header says. An IPv6 routing header (open to any user) sends a
/// datagram or a TCP Fast Open SYN with its data to the header's first
/// hop, and a listening socket's replies go to whoever connected from
/// outside. Nothing an agent sends may leave loopback.
#[test]
fn an_agent_neither_routes_around_the_proxy_nor_is_reached_from_off_the_host() {
    let d = Daemon::start(DaemonOptions::with_policy(
        "capture.yaml",
        &capture_policy(&[]),
    ));
    let ns = harness::netns::NetNs::new(72);
    const MARKER: &[u8] = b"AIRLOCK-ROUTED-PROBE";
    let routed = format!(
        r#"
import socket, struct
hop = socket.inet_pton(socket.AF_INET6, '{hop}')
# A segment routing header: the packet goes to `hop` first.
srh = struct.pack('!BBBBBBH', 0, 4, 4, 1, 1, 0, 0) + bytes(16) + hop
def attempt(name, fn):
    try:
        fn()
        print(name, 'sent')
    except OSError as e:
        print(name, 'error', e.errno)
def udp():
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RTHDR, srh)
    s.sendto(b'{marker} udp', ('2001:db8::1234', 53))
def tcp_fast_open():
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RTHDR, srh)
    s.setsockopt(socket.IPPROTO_TCP, 34, 1)  # TCP_FASTOPEN_NO_COOKIE
    s.setblocking(False)
    try:
        s.sendto(b'{marker} tcp', 0x20000000, ('2001:db8::1234', 443))  # MSG_FASTOPEN
    except BlockingIOError:
        pass
attempt('udp', udp)
attempt('tcp', tcp_fast_open)
"#,
        hop = ns.ns_ip6,
        marker = std::str::from_utf8(MARKER).expect("ascii")
    );
    // Frames are on the wire by the time the sender's `sendto` returns;
    // half a second covers their way through the pair.
    let grace = Duration::from_millis(500);
    // Control: outside Airlock the same sends reach the namespace, so the
    // route and the count work.
    let counting = ns.count_frames_with(MARKER);
    let outside = std::process::Command::new(PY)
        .args(["-c", &routed])
        .output()
        .expect("python");
    assert!(
        counting.finish(grace) >= 2,
        "the routed sends did not arrive even from outside Airlock, so this would prove nothing:\n{}",
        describe(&outside)
    );
    let counting = ns.count_frames_with(MARKER);
    let out = d.run_agent("capture-bot", &[PY, "-c", &routed]);
    assert_eq!(
        counting.finish(grace),
        0,
        "an agent's routed packet left the host:\n{}",
        describe(&out)
    );

    // A listener of the agent's, dialled from the namespace; beside it, one
    // of the test's own as the control.
    // Dual-stack, as the agent's below.
    let control = std::net::TcpListener::bind("[::]:0").expect("control listener");
    let control_port = control.local_addr().expect("addr").port();
    let agent_port = harness::free_port();
    let flag = d.dir.path().join("dialled");
    let listener = format!(
        r#"
import os, socket, time
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(('::', {agent_port}))
s.listen()
print('listening', flush=True)
s.settimeout(0.2)
got = 'nothing'
deadline = time.time() + 30
while time.time() < deadline and not os.path.exists('{flag}'):
    try:
        c, peer = s.accept()
        c.sendall(b'agent data\n')
        got = 'accepted'
    except socket.timeout:
        pass
print(got)
"#,
        flag = flag.display()
    );
    std::thread::scope(|scope| {
        let agent = scope.spawn(|| d.run_agent("capture-bot", &[PY, "-c", &listener]));
        // The agent's listener is bound once a connection from here gets
        // through: loopback stays open to it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", agent_port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the agent's listener never came up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let dial = |port: u16| {
            let targets = [
                format!("{}:{port}", ns.host_ip),
                format!("[{}]:{port}", ns.host_ip6),
            ];
            ns.inside(move || {
                targets
                    .iter()
                    .map(|t| {
                        let addr: std::net::SocketAddr = t.parse().expect("addr");
                        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                            .and_then(|mut s| {
                                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                                let mut buf = [0u8; 32];
                                std::io::Read::read(&mut s, &mut buf)
                            })
                            .map(|n| n > 0)
                            .unwrap_or(false)
                    })
                    .collect::<Vec<bool>>()
            })
        };
        let accepted_control = std::thread::spawn(move || {
            for _ in 0..2 {
                if let Ok((mut c, _)) = control.accept() {
                    let _ = std::io::Write::write_all(&mut c, b"control data\n");
                }
            }
        });
        assert_eq!(
            dial(control_port),
            [true, true],
            "the test's own listener is not reachable from the namespace, so this would prove nothing"
        );
        let _ = accepted_control.join();
        assert_eq!(
            dial(agent_port),
            [false, false],
            "the agent's listener answered a host off this one"
        );
        raise_flag(&flag);
        let out = agent.join().expect("agent");
        assert!(
            stdout(&out).starts_with("listening\n"),
            "{}",
            describe(&out)
        );
    });
    let status = d.status().expect("status");
    assert!(
        status["kernel_counters"]["off_host_denied"]
            .as_u64()
            .is_some_and(|n| n >= 2),
        "the kernel counted no packet addressed off the host: {status:#}"
    );
}

/// Sockets made outside the agent's cgroup are not captured: one inherited
/// from whoever ran `airlock run`, or taken from a process of the same user
/// outside (`pidfd_getfd`), would be a way around the proxy, as would a
/// process outside that listens on an abstract Unix socket, takes signals
/// from the agent, or has its memory written through `/proc/PID/mem`.
#[test]
fn an_agent_gets_no_socket_made_outside_its_cgroup() {
    let d = Daemon::start(DaemonOptions::with_policy(
        "capture.yaml",
        &capture_policy(&[]),
    ));
    let server = harness::servers::TagServer::start("127.0.0.1:0", "outside server");
    // A connected socket this process would hand down, were it not marked.
    let inherited = std::net::TcpStream::connect(server.addr).expect("connect");
    let fd = std::os::fd::AsRawFd::as_raw_fd(&inherited);
    // SAFETY: clears FD_CLOEXEC on a descriptor this test owns.
    assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, 0);
    // A listener on an abstract Unix socket, which no file permission
    // guards, outside the agent.
    let abstract_name = format!("airlock-e2e-{}", std::process::id());
    let abstract_listener = {
        use std::os::linux::net::SocketAddrExt as _;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
            .expect("abstract address");
        std::os::unix::net::UnixListener::bind_addr(&addr).expect("abstract listener")
    };
    // A process of the agent's user, outside its cgroup, holding a socket.
    let mut holder = as_nobody_outside(&[
        PY,
        "-c",
        "import socket, sys, time\ns = socket.socket()\nprint(s.fileno(), flush=True)\ntime.sleep(30)",
    ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the holder");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("the holder's socket");
    let src = format!(
        r#"
import ctypes, os
try:
    os.fstat({fd})
    print('inherited open')
except OSError:
    print('inherited closed')
libc = ctypes.CDLL(None, use_errno=True)
pidfd = libc.syscall(434, {pid}, 0)  # pidfd_open
taken = libc.syscall(438, pidfd, {their_fd}, 0)  # pidfd_getfd
print('taken' if taken >= 0 else 'getfd errno %d' % ctypes.get_errno())
import socket
try:
    socket.socket(socket.AF_UNIX).connect('\0{abstract}')
    print('abstract connected')
except OSError as e:
    print('abstract errno %d' % e.errno)
try:
    os.kill({pid}, 0)
    print('signal sent')
except OSError as e:
    print('signal errno %d' % e.errno)
try:
    open('/proc/{pid}/mem', 'r+b', buffering=0).close()
    print('memory opened')
except OSError as e:
    print('memory errno %d' % e.errno)
"#,
        pid = holder.id(),
        their_fd = line.trim(),
        abstract = abstract_name,
    );
    // Control: the same user outside Airlock takes the socket, so the
    // refusal below is Airlock's.
    let outside = as_nobody_outside(&[PY, "-c", &src])
        .output()
        .expect("python");
    let out = d.run_agent("capture-bot", &[PY, "-c", &src]);
    let _ = holder.kill();
    let _ = holder.wait();
    // `run` says that the user also runs processes outside Airlock, and
    // not that the agent can write their memory: Landlock keeps it out.
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("also runs processes outside this agent's cgroup")
            && !String::from_utf8_lossy(&out.stderr).contains("/proc/PID/mem"),
        "{}",
        describe(&out)
    );
    for reached in [
        "taken",
        "abstract connected",
        "signal sent",
        "memory opened",
    ] {
        assert!(
            stdout(&outside).contains(reached),
            "{reached}: not even outside Airlock, so this would prove nothing:\n{}",
            describe(&outside)
        );
    }
    assert_eq!(
        stdout(&out),
        format!(
            "inherited closed\ngetfd errno {e}\nabstract errno {e}\nsignal errno {e}\nmemory errno {mem}\n",
            e = libc::EPERM,
            mem = libc::EACCES
        ),
        "{}",
        describe(&out)
    );
    drop(inherited);
    drop(abstract_listener);
}

/// A service on a named Unix socket (systemd-resolved, nscd) acts for
/// the agent outside its cgroup. The sockets `agent_hidden_sockets` names
/// are out of the agent's reach; others, and the host's own view, are
/// not changed.
#[test]
fn the_host_service_sockets_the_config_names_are_hidden_from_the_agent() {
    let dir = tempfile::Builder::new()
        .prefix("airlock-e2e-sockets-")
        .tempdir()
        .expect("tempdir");
    harness::set_mode(dir.path(), 0o755);
    let hidden = dir.path().join("resolver.sock");
    let visible = dir.path().join("other.sock");
    let listeners: Vec<_> = [&hidden, &visible]
        .iter()
        .map(|path| {
            let l = std::os::unix::net::UnixListener::bind(path).expect("unix listener");
            harness::set_mode(path, 0o777);
            l
        })
        .collect();
    let d = Daemon::start(DaemonOptions {
        policies: vec![("capture.yaml".into(), capture_policy(&[]))],
        extra_config: format!("agent_hidden_sockets: [{}]\n", hidden.display()),
    });
    let src = format!(
        "import socket\nfor p in ['{}', '{}']:\n    s = socket.socket(socket.AF_UNIX)\n    try:\n        s.connect(p)\n        print('connected')\n    except OSError as e:\n        print('errno', e.errno)\n",
        hidden.display(),
        visible.display()
    );
    let out = d.run_agent("capture-bot", &[PY, "-c", &src]);
    assert_eq!(
        stdout(&out),
        format!("errno {}\nconnected\n", libc::ECONNREFUSED),
        "{}",
        describe(&out)
    );
    // The host's view is its own: the socket is reachable outside, and no
    // mount of the agent's leaked into this namespace.
    std::os::unix::net::UnixStream::connect(&hidden).expect("outside the agent, it answers");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(&hidden.display().to_string()),
        "the agent's mount reached the host: {mounts}"
    );
    drop(listeners);
}

/// inetd, a socket unit with `Accept=yes` or socat's `EXEC:…,nofork`
/// hand the agent a TCP connection as its standard output, made outside
/// its cgroup: no hook would see what it writes there. `run` refuses to start it; with a pipe
/// the same command runs.
#[test]
fn an_agent_is_not_started_with_a_network_socket_as_its_standard_output() {
    use std::io::Read as _;
    let d = Daemon::start(DaemonOptions::with_policy(
        "capture.yaml",
        &capture_policy(&[]),
    ));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let socket =
        std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (mut far_end, _) = listener.accept().expect("accept");
    let run = |stdout: std::process::Stdio| {
        std::process::Command::new(harness::AIRLOCK)
            .args(["run", "--config"])
            .arg(&d.config)
            .args(["--agent", "capture-bot", "--user", "nobody", "--"])
            .args(["sh", "-c", "echo written by the agent"])
            .stdin(std::process::Stdio::null())
            .stdout(stdout)
            .stderr(std::process::Stdio::piped())
            .output()
            .expect("airlock run")
    };
    let out = run(std::process::Stdio::from(std::os::fd::OwnedFd::from(
        socket,
    )));
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("standard output is a network socket"),
        "{}",
        describe(&out)
    );
    far_end
        .set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .expect("timeout");
    let mut got = Vec::new();
    // The test's own copy of the socket is closed: the read ends at once,
    // with whatever the agent wrote.
    let _ = far_end.read_to_end(&mut got);
    assert!(
        got.is_empty(),
        "the agent wrote {:?}",
        String::from_utf8_lossy(&got)
    );

    // Control: given a pipe, the same command runs.
    let out = run(std::process::Stdio::piped());
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(stdout(&out), "written by the agent\n");
}

/// While the daemon is down the pinned hooks still send every agent's
/// connections and DNS to Airlock's ports: an agent listening there would
/// receive the others'. Agents may bind any other port.
#[test]
fn an_agent_cannot_bind_airlocks_own_ports() {
    let d = Daemon::start(DaemonOptions::with_policy(
        "capture.yaml",
        &capture_policy(&[]),
    ));
    let status = d.status().expect("status");
    let port = |what: &str| {
        status["listening"][what][0]
            .as_str()
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .unwrap_or_else(|| panic!("no {what} port in {status}"))
    };
    let (proxy, dns) = (port("proxy"), port("dns"));
    let src = format!(
        r#"
import errno, socket
def attempt(name, family, kind, addr):
    s = socket.socket(family, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(addr)
        print(name, 'bound')
    except OSError as e:
        print(name, errno.errorcode.get(e.errno, e.errno))
attempt('proxy', socket.AF_INET, socket.SOCK_STREAM, ('127.0.0.1', {proxy}))
attempt('proxy-any6', socket.AF_INET6, socket.SOCK_STREAM, ('::', {proxy}))
attempt('dns', socket.AF_INET, socket.SOCK_DGRAM, ('127.0.0.1', {dns}))
attempt('dns6', socket.AF_INET6, socket.SOCK_DGRAM, ('::1', {dns}))
attempt('other', socket.AF_INET, socket.SOCK_STREAM, ('127.0.0.1', 0))
"#
    );
    // Control: outside Airlock the ports are only in use, so the EPERM
    // below is the hook's.
    let outside = as_nobody_outside(&[PY, "-c", &src])
        .output()
        .expect("python");
    assert!(
        stdout(&outside).contains("proxy EADDRINUSE"),
        "{}",
        describe(&outside)
    );
    let out = d.run_agent("capture-bot", &[PY, "-c", &src]);
    assert_eq!(
        stdout(&out),
        "proxy EPERM\nproxy-any6 EPERM\ndns EPERM\ndns6 EPERM\nother bound\n",
        "{}",
        describe(&out)
    );
    let status = d.status().expect("status");
    assert!(
        status["kernel_counters"]["bind_denied"]
            .as_u64()
            .is_some_and(|n| n >= 4),
        "{status:#}"
    );
}

/// `cmd` as user nobody (the agents' user in these tests), outside
/// Airlock: the control beside what an agent is refused.
fn as_nobody_outside(cmd: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(cmd);
    c
}

/// A user's systemd manager starts processes for them outside any
/// cgroup Airlock knows (`systemd-run --user`): `airlock run` refuses a
/// user that has one, and says what to do.
#[test]
fn airlock_run_refuses_a_user_whose_systemd_manager_runs() {
    let d = Daemon::start(DaemonOptions::with_policy(
        "capture.yaml",
        &capture_policy(&[]),
    ));
    // A user of the test's own, with what a running manager leaves.
    let uid = 65_000 + std::process::id() % 500;
    let runtime = std::path::PathBuf::from(format!("/run/user/{uid}"));
    assert!(!runtime.exists(), "{} is in use", runtime.display());
    let had_run_user = std::path::Path::new("/run/user").exists();
    std::fs::create_dir_all(&runtime).expect("runtime dir");
    std::fs::write(runtime.join("bus"), "").expect("bus");
    let uid_text = uid.to_string();
    let out = d.run_agent_as("capture-bot", &["--user", &uid_text], &["true"]);
    let _ = std::fs::remove_dir_all(&runtime);
    if !had_run_user {
        let _ = std::fs::remove_dir("/run/user");
    }
    assert!(!out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("systemd user manager running") && err.contains("disable-linger"),
        "{err}"
    );
    // Without it, the same user runs.
    let out = d.run_agent_as("capture-bot", &["--user", &uid_text], &["true"]);
    assert!(out.status.success(), "{}", describe(&out));
}

/// A process placed in an agent's cgroup without `airlock run` (a unit
/// that `systemd-run --slice` made) has no system call filter, and may
/// open sockets the hooks never see: `airlock status` names it, and the
/// metric `airlock_unconfined_processes` counts it.
#[test]
fn status_names_agent_processes_placed_without_airlock_run() {
    let d = Daemon::start(DaemonOptions::with_policy(
        "capture.yaml",
        &capture_policy(&[]),
    ));
    let unit = harness::cgroup2_mount()
        .expect("a cgroup v2 mount")
        .join(&d.cgroup_root)
        .join("capture-bot.service");
    std::fs::create_dir_all(&unit).expect("the unit's cgroup");
    let mut sleeper = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("sleep");
    std::fs::write(unit.join("cgroup.procs"), sleeper.id().to_string()).expect("place it");
    let status = d.status().expect("status");
    let human = std::process::Command::new(harness::AIRLOCK)
        .args(["status", "--config"])
        .arg(&d.config)
        .output()
        .expect("status");
    let metrics = d.metrics();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let _ = std::fs::remove_dir(&unit);
    let entry = status["agents"]
        .as_array()
        .and_then(|all| all.iter().find(|a| a["agent"] == "capture-bot"))
        .unwrap_or_else(|| panic!("no capture-bot in {status:#}"));
    assert_eq!(entry["unconfined_processes"], 1, "{status:#}");
    assert!(
        stdout(&human).contains("UNCONFINED: 1 process(es)"),
        "{}",
        describe(&human)
    );
    // And a metric, for an alert.
    assert!(
        metrics
            .lines()
            .any(|l| l == "airlock_unconfined_processes{agent=\"capture-bot\"} 1"),
        "{metrics}"
    );
    // A process run by `airlock run` has the filter: none of them counts.
    let out = d.run_agent(
        "capture-bot",
        &[
            PY,
            "-c",
            "print([l for l in open('/proc/self/status') if l.startswith('Seccomp:')][0].split()[1])",
        ],
    );
    assert_eq!(stdout(&out), "2\n", "{}", describe(&out));
}

fn raise_flag(flag: &std::path::Path) {
    std::fs::write(flag, "").expect("flag");
    harness::set_mode(flag, 0o644);
}

#[test]
fn dns_answers_only_the_names_the_policy_names() {
    let upstream = FakeDns::start(
        "127.0.0.1:0",
        &[
            ("allowed.test", [127, 0, 0, 7]),
            ("secret.exfil.test", [127, 0, 0, 8]),
        ],
    );
    let d = Daemon::start(DaemonOptions {
        policies: vec![("capture.yaml".into(), capture_policy(&[]))],
        extra_config: format!("dns_upstream: [\"{}\"]\n", upstream.addr),
    });
    let src = r#"
import socket, struct, random, sys
def query(name, qtype=1):
    qid = random.randrange(65536)
    q = struct.pack('>HHHHHH', qid, 0x0100, 1, 0, 0, 0)
    for label in name.split('.'):
        q += bytes([len(label)]) + label.encode()
    return qid, q + b'\x00' + struct.pack('>HH', qtype, 1)
def parse(qid, resp):
    rid, flags, qd, an = struct.unpack('>HHHH', resp[:8])
    assert rid == qid, 'id mismatch'
    ip = '.'.join(str(b) for b in resp[-4:]) if an else '-'
    return flags & 0xf, ip
def udp(name, server=('127.0.0.53', 53), family=socket.AF_INET, connect=False):
    s = socket.socket(family, socket.SOCK_DGRAM); s.settimeout(5)
    qid, q = query(name)
    if connect:
        s.connect(server); s.send(q); resp = s.recv(1500); src = server
    else:
        s.sendto(q, server); resp, src = s.recvfrom(1500)
    rcode, ip = parse(qid, resp)
    print('udp', name, rcode, ip, src[0], src[1])
def tcp(name):
    s = socket.create_connection(('127.0.0.53', 53), timeout=5)
    qid, q = query(name)
    s.sendall(struct.pack('>H', len(q)) + q)
    n = struct.unpack('>H', s.recv(2))[0]
    resp = b''
    while len(resp) < n:
        more = s.recv(n - len(resp))
        if not more:
            sys.exit('closed after ' + repr(resp))
        resp += more
    rcode, ip = parse(qid, resp)
    print('tcp', name, rcode, ip)
udp('allowed.test')
udp('secret.exfil.test')
udp('allowed.test', connect=True)
udp('allowed.test', server=('::1', 53), family=socket.AF_INET6)
tcp('allowed.test')
tcp('secret.exfil.test')
"#;
    let out = d.run_agent("capture-bot", &[PY, "-c", src]);
    assert!(out.status.success(), "{}", describe(&out));
    let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(
        lines,
        [
            // The reply appears to come from the server the agent asked
            // (glibc's resolver drops answers from anywhere else).
            "udp allowed.test 0 127.0.0.7 127.0.0.53 53",
            "udp secret.exfil.test 3 - 127.0.0.53 53",
            "udp allowed.test 0 127.0.0.7 127.0.0.53 53",
            "udp allowed.test 0 127.0.0.7 ::1 53",
            "tcp allowed.test 0 127.0.0.7",
            "tcp secret.exfil.test 3 -",
        ],
        "{}",
        describe(&out)
    );
    let seen = upstream.names_seen.lock().expect("names").clone();
    assert!(
        !seen.iter().any(|n| n.contains("exfil")),
        "a name outside the policy reached the upstream resolver: {seen:?}"
    );
    assert!(seen.iter().any(|n| n == "allowed.test"));
    let rec = d.wait_audit("for the NXDOMAIN", |r| r["host"] == "secret.exfil.test");
    assert_eq!(rec["agent"], "capture-bot");
    assert_eq!(rec["action"], "deny");
}

/// A `tcp:` entry that names a host matches an address Airlock's resolver
/// told the agent for it, even when the daemon's own lookup, a moment
/// later, gets another (a load-balanced name answers each query in turn):
/// the agent's connection is not refused for that. An address of the name
/// that the agent was never told, and the daemon does not resolve, is
/// still refused. The server is a host of the test's own, in a network
/// namespace behind a veth pair.
#[test]
fn a_tcp_rule_matches_the_address_the_agent_was_told_when_answers_rotate() {
    let ns = harness::netns::NetNs::new(71);
    let server = ns.tag_server("ssh-like server");
    let port = server.addr.port();
    let dns = FakeDns::start(
        "127.0.0.1:0",
        &[
            ("git.rotating.test", [198, 18, 71, 2]),
            ("git.rotating.test", [198, 18, 71, 3]),
        ],
    );
    let d = Daemon::start(DaemonOptions {
        policies: vec![(
            "capture.yaml".into(),
            capture_policy(&[format!("git.rotating.test:{port}")]),
        )],
        extra_config: format!("dns_upstream: [\"{}\"]\n", dns.addr),
    });
    let src = format!(
        r#"
import socket
told = socket.gethostbyname('git.rotating.test')
print('told', told)
for target in [told, '198.18.71.4']:
    try:
        s = socket.create_connection((target, {port}), timeout=5)
        s.settimeout(5)
        s.sendall(b'hello\n')
        line = (s.recv(100).decode().splitlines() or ['closed'])[0]
    except OSError as e:
        line = 'error ' + str(e)
    print(target, line)
"#
    );
    let out = d.run_agent_dns("capture-bot", &[PY, "-c", &src]);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&"told 198.18.71.2"),
        "{}",
        describe(&out)
    );
    assert_eq!(
        lines.get(1),
        Some(&"198.18.71.2 ssh-like server"),
        "the address the agent was told was refused:\n{}",
        describe(&out)
    );
    let never = lines.get(2).copied().unwrap_or_default();
    assert!(
        never == "198.18.71.4 closed" || never.contains("Connection reset"),
        "an address never told or resolved was let through:\n{}",
        describe(&out)
    );
    assert_eq!(server.accepted(), 1);
    // The daemon asked too, for the refused one, and got the next answer.
    assert!(dns.queries() >= 2, "{} queries", dns.queries());
    let rec = d.wait_audit("for the relayed connection", |r| {
        r["dst"] == format!("198.18.71.2:{port}") && r["action"] == "allow"
    });
    assert_eq!(rec["rule"], format!("tcp[0] git.rotating.test:{port}"));
    drop(ns);
}

/// An unprivileged agent can make a network namespace of its own (a user
/// namespace grants it), listen there on the daemon's ports, and let the
/// hooks redirect its connects to itself. That must not work: such a
/// connection would write a kernel record keyed by an address and port a
/// real agent connection in the daemon's namespace may use at the same
/// time, and hand the daemon a forged origin for it.
#[test]
fn an_agent_in_a_network_namespace_of_its_own_reaches_nothing() {
    let d = Daemon::start(DaemonOptions::with_policy(
        "capture.yaml",
        &capture_policy(&[]),
    ));
    let src = format!(
        r#"
import socket
P, D = {proxy}, {dns}
def attempt(name, fn):
    try:
        fn()
        print(name, 'reached')
    except PermissionError:
        print(name, 'EPERM')
    except OSError as e:
        print(name, 'error', e.errno)
# What an attacker would listen on: the daemon's ports, in its own
# namespace. The bind hook refuses them in any namespace; the connects
# below are refused whether or not something listens.
traps = []
def trap():
    srv = socket.socket(); srv.bind(('127.0.0.1', P)); srv.listen(8); traps.append(srv)
def trap6():
    srv6 = socket.socket(socket.AF_INET6); srv6.bind(('::1', P)); srv6.listen(8); traps.append(srv6)
def trap_dns():
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind(('127.0.0.1', D)); traps.append(udp)
for name, fn in [('trap', trap), ('trap6', trap6), ('trap-dns', trap_dns)]:
    attempt(name, fn)
print('namespace ready')
def tcp():
    socket.create_connection(('127.0.0.1', 9), timeout=2)
def tcp6():
    socket.create_connection(('::1', 9), timeout=2)
def mapped():
    s = socket.socket(socket.AF_INET6); s.settimeout(2); s.connect(('::ffff:127.0.0.1', 9))
def dns():
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', 53))
for name, fn in [('tcp', tcp), ('tcp6', tcp6), ('mapped', mapped), ('dns', dns)]:
    attempt(name, fn)
"#,
        proxy = d.proxy_port,
        dns = d.dns_port
    );
    let out = d.run_agent(
        "capture-bot",
        &[
            "unshare",
            "--user",
            "--map-root-user",
            "--net",
            "sh",
            "-c",
            "ip link set lo up && exec python3 -c \"$1\"",
            "sh",
            &src,
        ],
    );
    // The namespace was made: the refusals below are the hooks', not a
    // failure to make it.
    assert!(
        stdout(&out).lines().any(|l| l == "namespace ready"),
        "the agent could not set up its own namespace:\n{}",
        describe(&out)
    );
    for name in ["trap", "trap6", "trap-dns", "tcp", "tcp6", "mapped", "dns"] {
        assert!(
            stdout(&out).lines().any(|l| l == format!("{name} EPERM")),
            "{name} from another network namespace was not refused with EPERM:\n{}",
            describe(&out)
        );
    }
    let status = d.status().expect("status");
    let denied = status["kernel_counters"]["foreign_netns_denied"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        denied >= 4,
        "the kernel counted {denied} refusals of another namespace:\n{status:#}"
    );
    d.wait_for_log(
        "airlock: refused a socket of another network namespace",
        "the kernel's refusal of another namespace",
    );
}

#[test]
fn processes_outside_the_managed_cgroup_are_untouched() {
    let d = Daemon::start(DaemonOptions::with_policy(
        "capture.yaml",
        &capture_policy(&[]),
    ));
    let server = TagServer::start("127.0.0.1:0", "direct");
    let mut s = TcpStream::connect(server.addr).expect("direct connect from outside");
    assert_eq!(harness::read_line_from(&mut s).trim(), "direct");
    s.write_all(b"bye\n").expect("write");
    assert_eq!(server.accepted(), 1);
    let dst = server.addr.to_string();
    assert!(
        d.audit_records().iter().all(|r| r["dst"] != dst.as_str()),
        "an outside connection went through Airlock"
    );
}

#[test]
fn a_killed_daemon_fails_closed_and_its_successor_reuses_the_pins() {
    let server = TagServer::start("127.0.0.1:0", "kept");
    let policy = capture_policy(&[format!("127.0.0.1/32:{}", server.addr.port())]);
    let mut d = Daemon::start(DaemonOptions::with_policy("capture.yaml", &policy));
    let attached = d.attached_programs();
    assert_eq!(attached, 11, "one of each hook");

    // An agent that outlives the daemon: it connects once per step, each
    // step started by a file the test creates.
    let steps = d.dir.path().join("steps");
    std::fs::create_dir_all(&steps).expect("steps dir");
    harness::set_mode(&steps, 0o777);
    let src = format!(
        r#"
import socket, os, time
def tcp(family, host):
    try:
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect((host, {port}))
        return 'tag ' + s.makefile().readline().strip()
    except OSError as e:
        return 'error ' + type(e).__name__
def dns():
    query = bytes.fromhex('123401000001000000000000076578616d706c6503636f6d0000010001')
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        s.sendto(query, ('127.0.0.1', 53))
        s.recvfrom(512)
        return 'answered'
    except OSError as e:
        return 'error ' + type(e).__name__
def attempt(step):
    if step != 'killed':
        return tcp(socket.AF_INET, '127.0.0.1')
    # Every way to the daemon's ports: IPv4, IPv6, v4-mapped, and DNS.
    return '; '.join([tcp(socket.AF_INET, '127.0.0.1'), tcp(socket.AF_INET6, '::1'),
                      tcp(socket.AF_INET6, '::ffff:127.0.0.1'), dns()])
for step in ['alive', 'killed', 'restarted', 'stopped']:
    deadline = time.time() + 60
    while not os.path.exists(os.path.join('{dir}', step)) and time.time() < deadline:
        time.sleep(0.02)
    result = attempt(step)
    with open(os.path.join('{dir}', step + '.out'), 'w') as f:
        f.write(result)
"#,
        port = server.addr.port(),
        dir = steps.display()
    );
    let script = harness::script(&d, "steps.py", &src);
    let agent = std::process::Command::new(harness::AIRLOCK)
        .args(["run", "--config"])
        .arg(&d.config)
        .args([
            "--agent",
            "capture-bot",
            "--user",
            "nobody",
            "--",
            PY,
            &script,
        ])
        .spawn()
        .expect("long-running agent");
    let step = |name: &str| -> String {
        std::fs::write(steps.join(name), b"").expect("step");
        let out = steps.join(format!("{name}.out"));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(text) = std::fs::read_to_string(&out)
                && !text.is_empty()
            {
                return text;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the agent never finished step {name}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut agent = scopeguard(agent);

    assert_eq!(step("alive"), "tag kept");
    d.kill9();
    // A local user takes the dead daemon's ports, as any user may.
    let squatter = Squatter::start(&steps, d.proxy_port, d.dns_port);
    let before = server.accepted();
    let refused = ["error PermissionError"; 4].join("; ");
    assert_eq!(
        step("killed"),
        refused,
        "with the daemon dead, no connect or query of the agent may go ahead (IPv4, IPv6, v4-mapped, DNS)"
    );
    assert_eq!(
        server.accepted(),
        before,
        "the target was reached while the daemon was down"
    );
    assert_eq!(
        squatter.finish(),
        "priority EPERM\n",
        "the process on the dead daemon's ports received an agent's connection or query, or could pass for the daemon"
    );

    d.spawn();
    assert_eq!(
        d.attached_programs(),
        attached,
        "the restarted daemon attached a second copy"
    );
    assert_eq!(step("restarted"), "tag kept");
    let status = d.status().expect("status");
    let programs = status["programs"].as_array().expect("programs");
    assert!(programs.iter().all(|p| p["link"] == "reopened"), "{status}");
    assert!(
        status["kernel_counters"]["no_listener_denied"]
            .as_u64()
            .is_some_and(|n| n >= 4),
        "{status:#}"
    );

    // Stopped cleanly (`systemctl stop`, an upgrade), the daemon closes the
    // hooks: connects are refused at once, and whatever listens on its
    // port meanwhile (any local process may bind it) gets none of them.
    d.stop();
    let squatter = std::net::TcpListener::bind(("127.0.0.1", d.proxy_port))
        .expect("the stopped daemon's port is free");
    squatter.set_nonblocking(true).expect("nonblocking");
    let before = server.accepted();
    assert_eq!(
        step("stopped"),
        "error PermissionError",
        "with the daemon stopped, the agent's connect must be refused"
    );
    assert!(
        squatter.accept().is_err(),
        "the process on the stopped daemon's port received an agent's connection"
    );
    assert_eq!(server.accepted(), before);
    let _ = agent.0.wait();
}

/// A local user, outside Airlock, listening on the daemon's proxy and
/// resolver ports (IPv4 and IPv6) while the daemon is down. It tries to
/// pass for the daemon by giving its socket the daemon's priority, and
/// reports that attempt and everything it received.
struct Squatter {
    child: Option<std::process::Child>,
    done: std::path::PathBuf,
}

impl Drop for Squatter {
    /// A failed assertion must not leave it holding the ports (or the
    /// test's output pipe).
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

const SQUATTER_PY: &str = r#"
import errno, os, select, socket, sys
proxy, dns, ready, done, priority = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
socks = []
for family, kind, addr in [(socket.AF_INET, socket.SOCK_STREAM, ('127.0.0.1', proxy)),
                           (socket.AF_INET6, socket.SOCK_STREAM, ('::1', proxy)),
                           (socket.AF_INET, socket.SOCK_DGRAM, ('127.0.0.1', dns)),
                           (socket.AF_INET6, socket.SOCK_DGRAM, ('::1', dns))]:
    s = socket.socket(family, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(addr)
    if kind == socket.SOCK_STREAM:
        s.listen(16)
    socks.append(s)
out = []
for s in socks:
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_PRIORITY, priority)
        out.append('priority set')
    except OSError as e:
        # The most an unprivileged socket may have.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_PRIORITY, 6)
        if not out:
            out.append('priority ' + errno.errorcode.get(e.errno, str(e.errno)))
open(ready, 'w').close()
while not os.path.exists(done):
    for s in select.select(socks, [], [], 0.05)[0]:
        if s.type == socket.SOCK_STREAM:
            s.accept()
            out.append('accepted on ' + s.getsockname()[0])
        else:
            s.recvfrom(512)
            out.append('datagram on ' + s.getsockname()[0])
print('\n'.join(out))
"#;

impl Squatter {
    fn start(dir: &std::path::Path, proxy_port: u16, dns_port: u16) -> Squatter {
        let ready = dir.join("squatter-ready");
        let done = dir.join("squatter-done");
        let child = as_nobody_outside(&[
            PY,
            "-c",
            SQUATTER_PY,
            &proxy_port.to_string(),
            &dns_port.to_string(),
            &ready.to_string_lossy(),
            &done.to_string_lossy(),
            &agent_common::LISTENER_PRIORITY.to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("squatter");
        let mut squatter = Squatter {
            child: Some(child),
            done,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !ready.exists() {
            if let Some(Ok(Some(status))) = squatter.child.as_mut().map(|c| c.try_wait()) {
                panic!("the squatter could not take the daemon's ports: {status}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the squatter never got ready"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        squatter
    }

    /// Stops it and returns what it reported.
    fn finish(mut self) -> String {
        std::fs::write(&self.done, b"").expect("done flag");
        let child = self.child.take().expect("the squatter runs until finished");
        let out = child.wait_with_output().expect("squatter output");
        assert!(out.status.success(), "{}", describe(&out));
        stdout(&out)
    }
}

const DIAL_PY: &str = r#"
import socket, sys
for port in sys.argv[1:]:
    try:
        s = socket.create_connection(('127.0.0.1', int(port)), timeout=5)
        s.settimeout(5)
        # Something to classify: a silent client would wait out the proxy.
        s.sendall(b'hello\n')
        print(s.makefile().readline().strip() or 'closed')
    except OSError as e:
        print('error ' + type(e).__name__)
"#;

/// What an agent got from each server: its tag, or how it was refused.
fn dial_both(d: &Daemon, allowed: &TagServer, denied: &TagServer) -> Vec<String> {
    let script = harness::script(d, "dial.py", DIAL_PY);
    let ports = [
        allowed.addr.port().to_string(),
        denied.addr.port().to_string(),
    ];
    let out = d.run_agent("capture-bot", &[PY, &script, &ports[0], &ports[1]]);
    assert!(out.status.success(), "{}", describe(&out));
    stdout(&out).lines().map(str::to_owned).collect()
}

/// The proxy closes a connection no rule allows, with the agent's unread
/// line in its buffer: a reset, or an end of stream.
fn refused(line: &str) -> bool {
    line == "closed" || line == "error ConnectionResetError"
}

/// An upgrade, or root acting behind Airlock's back, can leave the pinned
/// links running another program, or the pinned maps with another layout.
/// A restarted daemon must bring both to this build, without ever taking a
/// hook away.
#[test]
fn a_restarted_daemon_replaces_a_foreign_pinned_program_and_maps_of_another_layout() {
    let allowed = TagServer::start("127.0.0.1:0", "allowed");
    let denied = TagServer::start("127.0.0.1:0", "denied");
    let policy = capture_policy(&[format!("127.0.0.1/32:{}", allowed.addr.port())]);
    let mut d = Daemon::start(DaemonOptions::with_policy("capture.yaml", &policy));
    let dial = |d: &Daemon| dial_both(d, &allowed, &denied);
    let connect4 = d.pin_dir.join("link_airlock_connect4");
    let ours = harness::bpf::linked_program_tag(&connect4);
    let first = dial(&d);
    assert!(first[0] == "allowed" && refused(&first[1]), "{first:?}");
    assert_eq!(denied.accepted(), 0);

    // A connect4 program that redirects nothing: the agent goes around
    // the proxy while the link runs it.
    let foreign = harness::bpf::permissive_connect4();
    harness::bpf::switch_link(&connect4, &foreign);
    assert_eq!(
        dial(&d)[1],
        "denied",
        "the foreign program did not take effect"
    );
    assert_eq!(denied.accepted(), 1);

    d.kill9();
    d.spawn();
    assert_eq!(harness::bpf::linked_program_tag(&connect4), ours);
    let status = d.status().expect("status");
    for p in status["programs"].as_array().expect("programs") {
        let expected = if p["name"] == "airlock_connect4" {
            "replaced"
        } else {
            "reopened"
        };
        assert_eq!(p["link"], expected, "{status}");
    }
    assert!(
        status.get("maps_replaced").is_none_or(|m| m.is_null()),
        "{status}"
    );
    assert_eq!(
        d.attached_programs(),
        11,
        "a hook was attached twice or lost"
    );
    let after = dial(&d);
    assert!(after[0] == "allowed" && refused(&after[1]), "{after:?}");
    assert_eq!(
        denied.accepted(),
        1,
        "the denied server was reached after the restart"
    );

    // A record map pinned with another layout, as a build with another
    // record struct would have left it.
    let records = d.pin_dir.join("ORIG_BY_COOKIE");
    let size = harness::bpf::pinned_map_value_size(&records);
    harness::bpf::pin_map_of_another_layout(&records, size + 8);
    d.kill9();
    d.spawn();
    let status = d.status().expect("status");
    let replaced = status["maps_replaced"].as_str().unwrap_or_default();
    assert!(replaced.contains("ORIG_BY_COOKIE"), "{status}");
    for p in status["programs"].as_array().expect("programs") {
        // Every program used the old maps, so every link is switched.
        assert_eq!(p["link"], "replaced", "{status}");
    }
    assert_eq!(harness::bpf::pinned_map_value_size(&records), size);
    assert!(
        !d.pin_dir.join("staged").exists(),
        "the staging directory was left"
    );
    assert_eq!(
        d.attached_programs(),
        11,
        "a hook was attached twice or lost"
    );
    // The allowed relay needs the connect4 record to reach the daemon's
    // lookup through the new maps.
    let after = dial(&d);
    assert!(after[0] == "allowed" && refused(&after[1]), "{after:?}");
    assert_eq!(denied.accepted(), 1);
    let log = d.log_text();
    assert!(log.contains("pinned maps have another layout"), "{log}");
}

/// Remove the (empty) cgroup root with its agent cgroups, and make it anew
/// as systemd would for airlock.slice: a cgroup without any program.
fn remake_cgroup_root(d: &Daemon) {
    let root = harness::cgroup2_mount()
        .expect("cgroup v2")
        .join(&d.cgroup_root);
    for entry in std::fs::read_dir(&root).expect("root").flatten() {
        if entry.path().is_dir() {
            std::fs::remove_dir(entry.path()).expect("rmdir an empty agent cgroup");
        }
    }
    std::fs::remove_dir(&root).expect("rmdir the cgroup root");
    std::fs::create_dir(&root).expect("the root made anew");
}

/// A cgroup root removed and made anew has none of the hooks, and the
/// pinned links still hang on the cgroup that is gone. No agent may be
/// placed there until the programs are attached to the new root: by the
/// running daemon within seconds, or by the next one at its start.
#[test]
fn a_cgroup_root_made_anew_is_guarded_again_before_an_agent_runs_in_it() {
    let allowed = TagServer::start("127.0.0.1:0", "allowed");
    let denied = TagServer::start("127.0.0.1:0", "denied");
    let policy = capture_policy(&[format!("127.0.0.1/32:{}", allowed.addr.port())]);
    let mut d = Daemon::start(DaemonOptions::with_policy("capture.yaml", &policy));
    let first = dial_both(&d, &allowed, &denied);
    assert!(first[0] == "allowed" && refused(&first[1]), "{first:?}");

    // With the daemon down, `run` refuses: the command never starts.
    d.kill9();
    remake_cgroup_root(&d);
    assert!(d.pin_dir.join("link_airlock_connect4").exists());
    let marks = d.dir.path().join("marks");
    std::fs::create_dir_all(&marks).expect("marks dir");
    harness::set_mode(&marks, 0o777);
    let mark = marks.join("ran");
    let out = d.run_agent(
        "capture-bot",
        &["/bin/sh", "-c", &format!("touch {}", mark.display())],
    );
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lacks Airlock's eBPF programs"),
        "{}",
        describe(&out)
    );
    assert!(!mark.exists(), "the agent ran in an unguarded cgroup");

    // The next daemon finds its links on the old cgroup and attaches the
    // programs to the new one.
    d.spawn();
    assert_eq!(d.attached_programs(), 11);
    let status = d.status().expect("status");
    for p in status["programs"].as_array().expect("programs") {
        assert_eq!(p["link"], "attached", "{status}");
    }
    assert_eq!(status["hooks_reattached"], 0, "{status}");
    let after = dial_both(&d, &allowed, &denied);
    assert!(after[0] == "allowed" && refused(&after[1]), "{after:?}");
    assert!(
        d.log_text()
            .contains("pinned link is not attached to the cgroup root"),
        "{}",
        d.log_text()
    );

    // While the daemon runs, it notices by itself and attaches again.
    remake_cgroup_root(&d);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while d.attached_programs() < 11 {
        assert!(
            std::time::Instant::now() < deadline,
            "the running daemon did not attach its programs again:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The loader, a child process, attaches the programs before the daemon
    // hears back from it and counts the attach: wait for the count too.
    let status = loop {
        let status = d.status().expect("status");
        if status["hooks_reattached"] != 0 {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the programs are attached again, but status does not say so: {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status["healthy"], true, "{status}");
    // Status tells what happened: attached again, once, and when.
    assert_eq!(status["hooks_reattached"], 1, "{status}");
    assert!(status["hooks_reattached_at"].as_u64().is_some(), "{status}");
    for p in status["programs"].as_array().expect("programs") {
        assert_eq!(p["link"], "attached", "{status}");
    }
    let healed = dial_both(&d, &allowed, &denied);
    assert!(healed[0] == "allowed" && refused(&healed[1]), "{healed:?}");
    assert_eq!(denied.accepted(), 0, "the denied server was reached");
    assert!(d.log_text().contains("attaching them again"));
}

/// Kills the child if the test fails before it exits.
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn scopeguard(child: std::process::Child) -> Guard {
    Guard(child)
}

#[test]
fn two_thousand_connections_are_each_attributed_to_their_agent_and_destination() {
    let servers: Vec<TagServer> = (0..4)
        .map(|i| TagServer::start("127.0.0.1:0", &format!("server-{i}")))
        .collect();
    let rules: Vec<String> = servers
        .iter()
        .map(|s| format!("127.0.0.1/32:{}", s.addr.port()))
        .collect();
    let policy_for = |agent: &str| {
        let mut yaml = format!("agent: {agent}\ntcp:\n");
        for r in &rules {
            yaml.push_str(&format!("  - \"{r}\"\n"));
        }
        yaml
    };
    let d = Daemon::start(DaemonOptions {
        policies: vec![
            ("alpha.yaml".into(), policy_for("alpha")),
            ("beta.yaml".into(), policy_for("beta")),
        ],
        extra_config: String::new(),
    });
    let ports: Vec<String> = servers.iter().map(|s| s.addr.port().to_string()).collect();
    // alpha dials servers 0 and 1, beta dials 2 and 3: 1,000 connections
    // each, 250 at a time per agent, every answer checked.
    let script = |targets: &[usize]| {
        format!(
            r#"
import asyncio
PORTS = [{ports}]
TARGETS = {targets:?}
async def one(i, sem):
    idx = TARGETS[i % len(TARGETS)]
    async with sem:
        r, w = await asyncio.wait_for(asyncio.open_connection('127.0.0.1', PORTS[idx]), 30)
        tag = (await asyncio.wait_for(r.readline(), 30)).decode().strip()
        w.close()
        return tag == 'server-%d' % idx
async def main():
    sem = asyncio.Semaphore(250)
    results = await asyncio.gather(*[one(i, sem) for i in range(1000)], return_exceptions=True)
    print('ok', sum(1 for r in results if r is True))
asyncio.run(main())
"#,
            ports = ports.join(", "),
        )
    };
    let alpha_src = script(&[0, 1]);
    let beta_src = script(&[2, 3]);
    let (alpha, beta) = std::thread::scope(|s| {
        let a = s.spawn(|| d.run_agent("alpha", &[PY, "-c", &alpha_src]));
        let b = s.spawn(|| d.run_agent("beta", &[PY, "-c", &beta_src]));
        (a.join().expect("alpha"), b.join().expect("beta"))
    });
    assert_eq!(stdout(&alpha).trim(), "ok 1000", "{}", describe(&alpha));
    assert_eq!(stdout(&beta).trim(), "ok 1000", "{}", describe(&beta));

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let records: Vec<serde_json::Value> = d
            .audit_records()
            .into_iter()
            .filter(|r| r["action"] == "allow" && r["proto"] == "tcp")
            .collect();
        if records.len() >= 2000 {
            assert_eq!(records.len(), 2000);
            for (i, server) in servers.iter().enumerate() {
                let dst = server.addr.to_string();
                let expected_agent = if i < 2 { "alpha" } else { "beta" };
                let hits = by_dst(&records, &dst);
                assert_eq!(hits.len(), 500, "connections to {dst}");
                assert!(
                    hits.iter().all(|r| r["agent"] == expected_agent),
                    "a connection to {dst} was attributed to the wrong agent"
                );
            }
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of 2000 connections audited",
            records.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A daemon started from a shell or a container gets a soft limit on open
/// files as low as 1,024 (here 256), and every agent connection takes two
/// of them. The daemon raises the soft limit to the hard one, so an agent
/// holding more connections than that at once gets every one answered
/// instead of waiting on an `accept` that fails.
#[test]
fn more_connections_are_held_at_once_than_the_soft_limit_on_open_files_allows() {
    const SOFT_LIMIT: u64 = 256;
    const HELD: u64 = 400;
    let server = TagServer::start("127.0.0.1:0", "held");
    let policy = capture_policy(&[format!("127.0.0.1/32:{}", server.addr.port())]);
    let d = Daemon::start_with_open_files(
        DaemonOptions::with_policy("capture.yaml", &policy),
        Some(SOFT_LIMIT),
    );
    // Every connection is opened and answered before any is closed, then
    // each echoes once more: all of them are open in the daemon together.
    let src = format!(
        r#"
import socket
socks = [socket.create_connection(('127.0.0.1', {port}), timeout=10) for _ in range({HELD})]
files = [s.makefile('rb') for s in socks]
tags = sum(1 for f in files if f.readline().strip() == b'held')
for s in socks:
    s.sendall(b'ping\n')
echoes = sum(1 for f in files if f.readline().strip() == b'ping')
print(tags, echoes)
"#,
        port = server.addr.port()
    );
    let out = d.run_agent("capture-bot", &[PY, "-c", &src]);
    assert!(
        out.status.success(),
        "{}\ndaemon log:\n{}",
        describe(&out),
        d.log_text()
    );
    assert_eq!(
        stdout(&out).trim(),
        format!("{HELD} {HELD}"),
        "{}\ndaemon log:\n{}",
        describe(&out),
        d.log_text()
    );
    assert_eq!(server.accepted(), HELD as usize);
    assert!(!d.log_text().contains("accept failed"), "{}", d.log_text());
}

/// One agent cannot take the proxy from the others: past
/// `max_connections_per_agent` its connections are closed as they arrive,
/// and recorded; another agent's are answered all the while; and closing
/// some makes room again.
#[test]
fn an_agent_at_its_connection_limit_is_refused_more_and_others_are_not() {
    const LIMIT: usize = 20;
    const OVER: usize = 5;
    let server = TagServer::start("127.0.0.1:0", "held");
    let rule = format!("127.0.0.1/32:{}", server.addr.port());
    let policy_for = |agent: &str| format!("agent: {agent}\ntcp:\n  - \"{rule}\"\n");
    let d = Daemon::start(DaemonOptions {
        policies: vec![
            ("alpha.yaml".into(), policy_for("alpha")),
            ("beta.yaml".into(), policy_for("beta")),
        ],
        extra_config: format!("max_connections_per_agent: {LIMIT}\n"),
    });
    let go_on = d.dir.path().join("go-on");
    // alpha fills its share, tries OVER more, and holds what it has until
    // the test lets it go on; then it closes OVER and opens OVER again.
    let alpha_src = format!(
        r#"
import os, socket, sys, time
def dial():
    s = socket.create_connection(('127.0.0.1', {port}), timeout=10)
    try:
        return s, s.makefile('rb').readline().strip() == b'held'
    except ConnectionResetError:
        return s, False
held = [dial() for _ in range({LIMIT})]
extra = [dial() for _ in range({OVER})]
print('answered', sum(ok for _, ok in held), 'refused', sum(not ok for _, ok in extra), flush=True)
deadline = time.time() + 30
while not os.path.exists({go_on:?}) and time.time() < deadline:
    time.sleep(0.05)
for s, _ in held[:{OVER}]:
    s.close()
time.sleep(0.5)
again = [dial() for _ in range({OVER})]
print('again', sum(ok for _, ok in again), flush=True)
"#,
        port = server.addr.port(),
        go_on = go_on.display().to_string(),
    );
    let mut alpha = std::process::Command::new(harness::AIRLOCK)
        .args(["run", "--config"])
        .arg(&d.config)
        .args([
            "--agent", "alpha", "--user", "nobody", "--", PY, "-c", &alpha_src,
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("airlock run alpha");
    let mut alpha_out = std::io::BufReader::new(alpha.stdout.take().expect("alpha stdout"));
    let mut first = String::new();
    std::io::BufRead::read_line(&mut alpha_out, &mut first).expect("alpha's first line");
    assert_eq!(first.trim(), format!("answered {LIMIT} refused {OVER}"));

    // While alpha holds its limit, status says so and beta is served.
    let status = d.status().expect("status");
    let alpha_status = status["agents"]
        .as_array()
        .and_then(|agents| agents.iter().find(|a| a["agent"] == "alpha"))
        .cloned()
        .expect("alpha in status");
    assert_eq!(alpha_status["live_connections"], LIMIT as u64);
    assert_eq!(alpha_status["connection_limit"], LIMIT as u64);
    // As a person reads it.
    let human = std::process::Command::new(harness::AIRLOCK)
        .args(["status", "--config"])
        .arg(&d.config)
        .output()
        .expect("status");
    let human = stdout(&human);
    let lines: Vec<&str> = human.lines().collect();
    let flagged: Vec<usize> = (1..lines.len())
        .filter(|&i| lines[i].contains("AT ITS LIMIT"))
        .collect();
    assert!(
        flagged.len() == 1
            && lines[flagged[0] - 1].starts_with("  alpha ")
            && lines[flagged[0]].contains(&format!("AT ITS LIMIT of {LIMIT} connections")),
        "{human}"
    );
    // And the metrics, for an alert before the limit is reached.
    let metrics = d.metrics();
    assert!(
        metrics.contains(&format!(
            "airlock_live_connections{{agent=\"alpha\"}} {LIMIT}\n"
        )) && metrics.contains(&format!("airlock_connection_limit_per_agent {LIMIT}\n")),
        "{metrics}"
    );
    let beta_src = format!(
        r#"
import socket
socks = [socket.create_connection(('127.0.0.1', {port}), timeout=10) for _ in range({OVER})]
print(sum(1 for s in socks if s.makefile('rb').readline().strip() == b'held'))
"#,
        port = server.addr.port()
    );
    let beta = d.run_agent("beta", &[PY, "-c", &beta_src]);
    assert_eq!(
        stdout(&beta).trim(),
        OVER.to_string(),
        "{}",
        describe(&beta)
    );

    std::fs::write(&go_on, "").expect("let alpha go on");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut alpha_out, &mut rest).expect("alpha's output");
    let status = alpha.wait().expect("alpha exits");
    assert!(status.success(), "alpha: {status}");
    assert_eq!(rest.trim(), format!("again {OVER}"));
    // Once alpha is gone, so are its connections, from the metrics too.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while d
        .metrics()
        .contains("airlock_live_connections{agent=\"alpha\"}")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "alpha's connections still counted 10 s after it exited:\n{}",
            d.metrics()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    d.wait_audit("of an agent's last connection", |r| {
        r["agent"] == "alpha" && r["action"] == "allow"
    });
    let refusals = d
        .audit_records()
        .into_iter()
        .filter(|r| r["reason"] == "too_many_connections")
        .collect::<Vec<_>>();
    assert_eq!(refusals.len(), OVER, "{refusals:?}");
    assert!(
        refusals
            .iter()
            .all(|r| r["agent"] == "alpha" && r["action"] == "deny")
    );
}
