//! A made-up internet for the egress tests: a network namespace of its own, joined to the
//! host by a veth pair (host 203.0.113.1, it 203.0.113.2 and .3), holding a DNS server for
//! made-up names, an HTTP server and an HTTPS server with a test CA. Nothing leaves the
//! machine. The namespace is held by a child process that ends with the test process (its
//! stdin is our pipe), taking the namespace and the veth pair with it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// The host's side (one of the node's own addresses).
pub const HOST: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// allowed.test and its HTTPS.
pub const ALLOWED: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
/// denied.test.
pub const DENIED: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 3);
/// The resolver, for `network.resolver`.
pub const RESOLVER: &str = "203.0.113.2:53";

pub struct FakeNet {
    _holder: Child,
    _lock: std::fs::File,
    /// The test CA, PEM (programs in jails trust it through a file).
    pub ca_pem: String,
    /// Queries of rebind.test so far.
    rebinds: Arc<AtomicU64>,
}

impl FakeNet {
    /// How many times rebind.test was asked for.
    pub fn rebind_queries(&self) -> u64 {
        self.rebinds.load(Ordering::SeqCst)
    }
}

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e} (the egress tests need iproute2)"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The made-up internet (made once per test process).
pub fn get() -> &'static FakeNet {
    static NET: OnceLock<FakeNet> = OnceLock::new();
    NET.get_or_init(make)
}

fn make() -> FakeNet {
    // One made-up internet on this machine at a time (its addresses are fixed).
    let lock = std::fs::File::create("/tmp/runcell-fakenet.lock").expect("lock file");
    // SAFETY: flock on a descriptor we own.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let mut holder = Command::new("unshare")
        .args(["--net", "--", "sh", "-c", "echo ready; read x"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("unshare --net (util-linux)");
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    let pid = holder.id().to_string();
    let (h, f) = ("rcfake-h", "rcfake-f");
    // A pair left by a test process that was killed: its namespace is gone, the host end
    // is not always.
    let _ = Command::new("ip").args(["link", "del", h]).output();
    run(&["ip", "link", "add", h, "type", "veth", "peer", "name", f]);
    run(&["ip", "link", "set", f, "netns", &pid]);
    run(&["ip", "addr", "add", "203.0.113.1/24", "dev", h]);
    run(&["ip", "link", "set", h, "up"]);
    let ns = |a: &[&str]| {
        let mut v = vec!["nsenter", "-t", &pid, "-n", "ip"];
        v.extend_from_slice(a);
        run(&v);
    };
    ns(&["addr", "add", "203.0.113.2/24", "dev", f]);
    ns(&["addr", "add", "203.0.113.3/24", "dev", f]);
    ns(&["link", "set", f, "up"]);
    ns(&["link", "set", "lo", "up"]);

    let ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut ca = ca;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "runcell test CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["allowed.test".to_string()]).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = Arc::new(
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf_cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
            )
            .unwrap(),
    );

    // The servers' sockets are made inside the namespace by a thread that enters it.
    let nsfile = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
    let (udp, http, https, denied) = std::thread::spawn(move || {
        // SAFETY: setns on this short-lived thread only.
        assert_eq!(
            unsafe { libc::setns(nsfile.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        (
            UdpSocket::bind((ALLOWED, 53)).unwrap(),
            TcpListener::bind((ALLOWED, 80)).unwrap(),
            TcpListener::bind((ALLOWED, 443)).unwrap(),
            TcpListener::bind((DENIED, 80)).unwrap(),
        )
    })
    .join()
    .unwrap();
    let rebinds = Arc::new(AtomicU64::new(0));
    let r = Arc::clone(&rebinds);
    std::thread::spawn(move || dns(udp, r));
    serve(http, |s| {
        handle_http(s, "http");
    });
    serve(denied, |s| {
        handle_http(s, "denied");
    });
    serve(https, move |s| {
        let conn = rustls::ServerConnection::new(Arc::clone(&tls)).unwrap();
        let Ok(sock) = s.try_clone() else { return };
        let mut t = rustls::StreamOwned::new(conn, sock);
        handle_http(&mut t, "https");
    });
    FakeNet {
        _holder: holder,
        _lock: lock,
        ca_pem: ca_cert.pem(),
        rebinds,
    }
}

fn serve<F>(l: TcpListener, f: F)
where
    F: Fn(&mut TcpStream) + Send + Sync + Clone + 'static,
{
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let f = f.clone();
            std::thread::spawn(move || {
                let mut s = s;
                f(&mut s)
            });
        }
    });
}

/// Answers one request: `GET /size/N` sends N bytes, anything else a greeting naming the
/// server and the Host asked for.
fn handle_http(s: &mut (impl Read + Write), who: &str) {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => return,
        }
        if head.len() > 8192 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let body: Vec<u8> = match path.strip_prefix("/size/") {
        Some(n) => vec![b'x'; n.parse().unwrap_or(0)],
        None => format!("hello from the {who} server\n").into_bytes(),
    };
    let _ = write!(
        s,
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    for chunk in body.chunks(16 << 10) {
        if s.write_all(chunk).is_err() {
            return;
        }
    }
    let _ = s.flush();
}

/// The made-up names: allowed.test and big.test → .2, denied.test → .3, self.test → the
/// host's side, meta.test → 169.254.169.254, private.test → 10.0.0.1, rebind.test → .2 the
/// first time and 127.0.0.1 after (TTL 0). Anything else: NXDOMAIN.
fn dns(sock: UdpSocket, rebinds: Arc<AtomicU64>) {
    let mut buf = [0u8; 1500];
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let q = &buf[..n];
        if n < 12 {
            continue;
        }
        let mut pos = 12;
        let mut name = String::new();
        while pos < n && q[pos] != 0 {
            let l = q[pos] as usize;
            if !name.is_empty() {
                name.push('.');
            }
            name.push_str(&String::from_utf8_lossy(&q[pos + 1..(pos + 1 + l).min(n)]));
            pos += 1 + l;
        }
        let qend = pos + 5;
        if qend > n {
            continue;
        }
        let qtype = u16::from_be_bytes([q[pos + 1], q[pos + 2]]);
        let (addr, ttl): (Option<Ipv4Addr>, u32) = match name.to_ascii_lowercase().as_str() {
            "allowed.test" | "big.test" => (Some(ALLOWED), 30),
            "denied.test" => (Some(DENIED), 30),
            "self.test" => (Some(HOST), 30),
            "meta.test" => (Some(Ipv4Addr::new(169, 254, 169, 254)), 30),
            "private.test" => (Some(Ipv4Addr::new(10, 0, 0, 1)), 30),
            "rebind.test" => {
                let first = rebinds.fetch_add(1, Ordering::SeqCst) == 0;
                (Some(if first { ALLOWED } else { Ipv4Addr::LOCALHOST }), 0)
            }
            _ => (None, 0),
        };
        let mut out = q[..2].to_vec();
        let rcode: u16 = if addr.is_some() { 0 } else { 3 };
        out.extend_from_slice(&(0x8180u16 | rcode).to_be_bytes());
        let answers = u16::from(addr.is_some() && qtype == 1);
        out.extend_from_slice(&[0, 1]);
        out.extend_from_slice(&answers.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(&q[12..qend]);
        if let (Some(a), 1) = (addr, answers) {
            out.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
            out.extend_from_slice(&ttl.to_be_bytes());
            out.extend_from_slice(&[0, 4]);
            out.extend_from_slice(&a.octets());
        }
        let _ = sock.send_to(&out, peer);
    }
}
