//! The name a connection's first bytes ask for: the TLS server name (SNI) of a ClientHello,
//! or the `Host` of an HTTP request. The relay compares it with the name the connection was
//! made to, so one allowed name cannot be used to reach another served at the same address.

/// The most the relay reads before deciding.
pub const MAX_PEEK: usize = 16 << 10;

const BAD_TLS: &str = "the TLS hello could not be read";
/// Why an HTTP request head too long to read is refused.
pub const LONG_HEAD: &str = "the HTTP request head is longer than 16 KiB";

/// What the first bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peek {
    /// Not enough bytes to tell yet.
    NeedMore,
    /// A TLS ClientHello with this server name (none: it sends no SNI).
    Tls(Option<String>),
    /// First bytes that should name a host and cannot be read (why).
    Unreadable(&'static str),
    /// An HTTP/1 request with this `Host` (lower case, without port; none: no Host header).
    Http(Option<String>),
    /// Some other protocol.
    Other,
}

const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"HEAD ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

/// Classifies the bytes read so far.
pub fn peek(buf: &[u8]) -> Peek {
    if buf.is_empty() {
        return Peek::NeedMore;
    }
    if buf[0] == 0x16 {
        return tls(buf);
    }
    let mut maybe_http = false;
    for m in METHODS {
        let n = buf.len().min(m.len());
        if buf[..n] == m[..n] {
            if buf.len() < m.len() {
                maybe_http = true;
            } else {
                return http(buf);
            }
        }
    }
    if maybe_http {
        Peek::NeedMore
    } else {
        Peek::Other
    }
}

fn http(buf: &[u8]) -> Peek {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        // Its Host could come after what is read: refused rather than let through unchecked.
        return if buf.len() >= MAX_PEEK {
            Peek::Unreadable(LONG_HEAD)
        } else {
            Peek::NeedMore
        };
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    for line in head.split("\r\n").skip(1) {
        if let Some((k, v)) = line.split_once(':')
            && k.trim().eq_ignore_ascii_case("host")
        {
            let v = v.trim();
            let host = if let Some(rest) = v.strip_prefix('[') {
                rest.split(']').next().unwrap_or("")
            } else {
                v.rsplit_once(':').map_or(v, |(h, p)| {
                    if p.bytes().all(|b| b.is_ascii_digit()) {
                        h
                    } else {
                        v
                    }
                })
            };
            return Peek::Http(Some(host.trim_end_matches('.').to_ascii_lowercase()));
        }
    }
    Peek::Http(None)
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.pos..self.pos + n)?;
        self.pos += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| b[0] as usize)
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
    }
}

fn tls(buf: &[u8]) -> Peek {
    if buf.len() < 5 {
        return Peek::NeedMore;
    }
    if buf[1] != 3 {
        return Peek::Unreadable(BAD_TLS);
    }
    let len = u16::from_be_bytes([buf[3], buf[4]]) as usize;
    if buf.len() < 5 + len {
        return if 5 + len > MAX_PEEK + 5 {
            Peek::Unreadable(BAD_TLS)
        } else {
            Peek::NeedMore
        };
    }
    client_hello(&buf[5..5 + len]).unwrap_or(Peek::Unreadable(BAD_TLS))
}

fn client_hello(rec: &[u8]) -> Option<Peek> {
    let mut r = Reader { b: rec, pos: 0 };
    if r.u8()? != 1 {
        return None;
    }
    r.take(3)?; // handshake length (the hello must fit the first record)
    r.take(2 + 32)?; // version, random
    let sid = r.u8()?;
    r.take(sid)?;
    let suites = r.u16()?;
    r.take(suites)?;
    let comp = r.u8()?;
    r.take(comp)?;
    if r.pos == rec.len() {
        return Some(Peek::Tls(None));
    }
    let ext_len = r.u16()?;
    let exts = r.take(ext_len)?;
    let mut e = Reader { b: exts, pos: 0 };
    while e.pos < exts.len() {
        let ty = e.u16()?;
        let len = e.u16()?;
        let data = e.take(len)?;
        if ty == 0 {
            let mut s = Reader { b: data, pos: 0 };
            let list = s.u16()?;
            let list = s.take(list)?;
            let mut l = Reader { b: list, pos: 0 };
            while l.pos < list.len() {
                let kind = l.u8()?;
                let n = l.u16()?;
                let name = l.take(n)?;
                if kind == 0 {
                    let name = std::str::from_utf8(name).ok()?;
                    return Some(Peek::Tls(Some(
                        name.trim_end_matches('.').to_ascii_lowercase(),
                    )));
                }
            }
        }
    }
    Some(Peek::Tls(None))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello record naming `sni`.
    pub(crate) fn hello(sni: Option<&str>) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one suite
        body.extend_from_slice(&[1, 0]); // null compression
        let mut exts = Vec::new();
        if let Some(n) = sni {
            let mut list = vec![0];
            list.extend_from_slice(&(n.len() as u16).to_be_bytes());
            list.extend_from_slice(n.as_bytes());
            let mut data = (list.len() as u16).to_be_bytes().to_vec();
            data.extend_from_slice(&list);
            exts.extend_from_slice(&[0, 0]);
            exts.extend_from_slice(&(data.len() as u16).to_be_bytes());
            exts.extend_from_slice(&data);
        }
        // An unrelated extension after it.
        exts.extend_from_slice(&[0, 43, 0, 3, 2, 3, 4]);
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut hs = vec![1, 0];
        hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn the_tls_server_name_is_read_even_byte_by_byte() {
        let h = hello(Some("Allowed.Test"));
        for cut in 0..h.len() {
            assert_eq!(peek(&h[..cut]), Peek::NeedMore, "cut at {cut}");
        }
        assert_eq!(peek(&h), Peek::Tls(Some("allowed.test".into())));
        assert_eq!(peek(&hello(None)), Peek::Tls(None));
        let mut bad = hello(Some("a.test"));
        bad[5] = 2; // a ServerHello is not a ClientHello
        assert_eq!(peek(&bad), Peek::Unreadable(BAD_TLS));
        let mut cut = hello(Some("a.test"));
        let n = cut.len();
        cut[4] -= 4; // the record says it ends inside the extensions
        assert_eq!(peek(&cut[..n - 4]), Peek::Unreadable(BAD_TLS));
    }

    #[test]
    fn the_http_host_is_read_without_its_port() {
        assert_eq!(peek(b"GE"), Peek::NeedMore);
        assert_eq!(peek(b"GET / HTTP/1.1\r\nHost: a.test"), Peek::NeedMore);
        assert_eq!(
            peek(b"GET / HTTP/1.1\r\nhost: Allowed.Test:8080\r\nX: y\r\n\r\n"),
            Peek::Http(Some("allowed.test".into()))
        );
        assert_eq!(
            peek(b"POST /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
            Peek::Http(None)
        );
        let mut long = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
        long.resize(MAX_PEEK, b'a');
        assert_eq!(peek(&long[..MAX_PEEK - 1]), Peek::NeedMore);
        assert_eq!(peek(&long), Peek::Unreadable(LONG_HEAD));
        assert_eq!(peek(b"SSH-2.0-OpenSSH\r\n"), Peek::Other);
        assert_eq!(peek(b"\x00\x01"), Peek::Other);
    }
}
