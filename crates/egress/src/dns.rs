//! The little of DNS's wire format the gateway needs: reading a jail's query, answering it,
//! and asking the upstream resolver for a name's IPv4 addresses.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;
pub const CLASS_IN: u16 = 1;

pub const NOERROR: u8 = 0;
pub const FORMERR: u8 = 1;
pub const SERVFAIL: u8 = 2;
pub const NXDOMAIN: u8 = 3;
pub const NOTIMP: u8 = 4;

/// A malformed message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed DNS message: {0}")]
pub struct DnsError(pub &'static str);

/// A query's one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub id: u16,
    pub recursion_desired: bool,
    /// Lower case, no trailing dot.
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
    /// The question section as received (echoed in the answer).
    raw: Vec<u8>,
}

/// Reads a name at `pos` (following compression pointers); returns it and the position after
/// it in the original sequence.
fn read_name(msg: &[u8], mut pos: usize) -> Result<(String, usize), DnsError> {
    let mut name = String::new();
    let mut end = None;
    let mut jumps = 0;
    loop {
        let len = *msg.get(pos).ok_or(DnsError("name runs past the end"))? as usize;
        if len & 0xc0 == 0xc0 {
            let lo = *msg
                .get(pos + 1)
                .ok_or(DnsError("pointer runs past the end"))? as usize;
            end.get_or_insert(pos + 2);
            jumps += 1;
            if jumps > 16 {
                return Err(DnsError("too many compression pointers"));
            }
            pos = ((len & 0x3f) << 8) | lo;
            continue;
        }
        if len & 0xc0 != 0 {
            return Err(DnsError("unknown label type"));
        }
        if len == 0 {
            return Ok((name, end.unwrap_or(pos + 1)));
        }
        let label = msg
            .get(pos + 1..pos + 1 + len)
            .ok_or(DnsError("label runs past the end"))?;
        if !name.is_empty() {
            name.push('.');
        }
        for &b in label {
            if !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return Err(DnsError("a name holds characters host names do not"));
            }
            name.push(b.to_ascii_lowercase() as char);
        }
        if name.len() > 253 {
            return Err(DnsError("name longer than 253 bytes"));
        }
        pos += 1 + len;
    }
}

fn u16_at(msg: &[u8], pos: usize) -> Result<u16, DnsError> {
    msg.get(pos..pos + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or(DnsError("message cut short"))
}

/// Reads a query (one question, opcode QUERY). On error, the id when there was one (to
/// answer FORMERR).
pub fn parse_query(msg: &[u8]) -> Result<Question, (Option<u16>, DnsError)> {
    let id = u16_at(msg, 0).map_err(|e| (None, e))?;
    let fail = |e| (Some(id), e);
    let flags = u16_at(msg, 2).map_err(fail)?;
    if flags & 0x8000 != 0 {
        return Err((None, DnsError("not a query")));
    }
    if (flags >> 11) & 0xf != 0 {
        return Err(fail(DnsError("only standard queries are answered")));
    }
    if u16_at(msg, 4).map_err(fail)? != 1 {
        return Err(fail(DnsError("a query must hold exactly one question")));
    }
    let (name, pos) = read_name(msg, 12).map_err(fail)?;
    let qtype = u16_at(msg, pos).map_err(fail)?;
    let qclass = u16_at(msg, pos + 2).map_err(fail)?;
    Ok(Question {
        id,
        recursion_desired: flags & 0x0100 != 0,
        name,
        qtype,
        qclass,
        raw: msg[12..pos + 4].to_vec(),
    })
}

/// The answer to `q`: `rcode`, and A records for `addrs` (when the question is for A).
pub fn answer(q: &Question, rcode: u8, addrs: &[Ipv4Addr], ttl: u32) -> Vec<u8> {
    let addrs = if rcode == NOERROR && q.qtype == TYPE_A {
        addrs
    } else {
        &[]
    };
    let mut out = Vec::with_capacity(12 + q.raw.len() + 16 * addrs.len());
    out.extend_from_slice(&q.id.to_be_bytes());
    // QR, AA, RA; RD echoed.
    let flags: u16 =
        0x8000 | 0x0400 | 0x0080 | if q.recursion_desired { 0x0100 } else { 0 } | rcode as u16;
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&q.raw);
    for a in addrs {
        out.extend_from_slice(&[0xc0, 12]);
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&a.octets());
    }
    out
}

/// A FORMERR for a query that could not be read.
pub fn format_error(id: u16) -> Vec<u8> {
    let mut out = id.to_be_bytes().to_vec();
    out.extend_from_slice(&(0x8000u16 | FORMERR as u16).to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    out
}

/// A recursive query for `name`'s records of `qtype`.
pub fn build_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut out = id.to_be_bytes().to_vec();
    out.extend_from_slice(&0x0100u16.to_be_bytes());
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out
}

/// What the upstream resolver said of a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Its IPv4 addresses (possibly none) and the smallest TTL among them.
    Found(Vec<Ipv4Addr>, u32),
    /// The name does not exist.
    NoSuchName,
}

/// Reads the upstream's response to the query `id` for `name`. Addresses are taken from A
/// records of any owner in the answer section (a CNAME chain's end carries them).
pub fn parse_response(msg: &[u8], id: u16, name: &str) -> Result<Lookup, DnsError> {
    if u16_at(msg, 0)? != id {
        return Err(DnsError("the response answers another query"));
    }
    let flags = u16_at(msg, 2)?;
    if flags & 0x8000 == 0 {
        return Err(DnsError("not a response"));
    }
    if flags & 0x0200 != 0 {
        return Err(DnsError("the response was truncated"));
    }
    let qd = u16_at(msg, 4)?;
    let an = u16_at(msg, 6)?;
    let mut pos = 12;
    let mut asked = false;
    for _ in 0..qd {
        let (n, p) = read_name(msg, pos)?;
        asked |= n == name;
        pos = p + 4;
    }
    if !asked {
        return Err(DnsError("the response is about another name"));
    }
    match (flags & 0xf) as u8 {
        NOERROR => {}
        NXDOMAIN => return Ok(Lookup::NoSuchName),
        _ => return Err(DnsError("the resolver failed")),
    }
    let mut addrs = Vec::new();
    let mut ttl = u32::MAX;
    for _ in 0..an {
        let (_, p) = read_name(msg, pos)?;
        let rtype = u16_at(msg, p)?;
        let class = u16_at(msg, p + 2)?;
        let t = msg
            .get(p + 4..p + 8)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or(DnsError("record cut short"))?;
        let len = u16_at(msg, p + 8)? as usize;
        let data = msg
            .get(p + 10..p + 10 + len)
            .ok_or(DnsError("record data cut short"))?;
        if rtype == TYPE_A && class == CLASS_IN && len == 4 {
            addrs.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
            ttl = ttl.min(t);
        }
        pos = p + 10 + len;
    }
    if addrs.is_empty() {
        ttl = 0;
    }
    Ok(Lookup::Found(addrs, ttl))
}

/// Asks `server` (over UDP, from the host's network) for `name`'s IPv4 addresses: two tries
/// of `timeout` each.
pub async fn resolve_a(
    server: SocketAddr,
    name: &str,
    timeout: Duration,
) -> Result<Lookup, std::io::Error> {
    let bind: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = tokio::net::UdpSocket::bind(bind).await?;
    sock.connect(server).await?;
    let mut last = std::io::Error::new(std::io::ErrorKind::TimedOut, "the resolver did not answer");
    for _ in 0..2 {
        let mut idb = [0u8; 2];
        getrandom::fill(&mut idb).map_err(|e| std::io::Error::other(e.to_string()))?;
        let id = u16::from_be_bytes(idb);
        sock.send(&build_query(id, name, TYPE_A)).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut buf = [0u8; 1500];
        loop {
            match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
                Err(_) => break,
                Ok(Err(e)) => {
                    last = e;
                    break;
                }
                // A response to something else (or forged): keep waiting for ours.
                Ok(Ok(n)) => match parse_response(&buf[..n], id, name) {
                    Ok(l) => return Ok(l),
                    Err(e) => last = std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                },
            }
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_is_read_and_answered() {
        let q = build_query(0x1234, "Allowed.Test", TYPE_A);
        let parsed = parse_query(&q).unwrap();
        assert_eq!(parsed.id, 0x1234);
        assert_eq!(parsed.name, "allowed.test");
        assert_eq!(parsed.qtype, TYPE_A);
        assert!(parsed.recursion_desired);
        let a = answer(&parsed, NOERROR, &[Ipv4Addr::new(198, 18, 0, 1)], 300);
        let l = parse_response(&a, 0x1234, "allowed.test").unwrap();
        assert_eq!(l, Lookup::Found(vec![Ipv4Addr::new(198, 18, 0, 1)], 300));
        let nx = answer(&parsed, NXDOMAIN, &[], 0);
        assert_eq!(
            parse_response(&nx, 0x1234, "allowed.test"),
            Ok(Lookup::NoSuchName)
        );
        assert!(parse_response(&nx, 0x1235, "allowed.test").is_err());
        assert!(parse_response(&nx, 0x1234, "other.test").is_err());
    }

    #[test]
    fn malformed_and_hostile_messages_are_refused() {
        assert!(parse_query(&[]).is_err());
        assert!(parse_query(&[1, 2]).is_err());
        // A pointer loop.
        let mut q = build_query(7, "a.test", TYPE_A);
        q.truncate(12);
        q.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(parse_query(&q).unwrap_err().0, Some(7));
        // A label with a byte host names do not have.
        let mut q = build_query(7, "a.test", TYPE_A);
        q[13] = b'/';
        assert!(parse_query(&q).is_err());
        // A response is not a query.
        let r = answer(
            &parse_query(&build_query(7, "a.test", TYPE_A)).unwrap(),
            0,
            &[],
            0,
        );
        assert_eq!(parse_query(&r).unwrap_err().0, None);
        assert_eq!(format_error(9)[..2], [0, 9]);
    }

    #[test]
    fn compressed_answers_and_cname_chains_are_followed() {
        // Response: question a.test A; answers: a.test CNAME b.test (pointer), b.test A.
        let mut m = vec![0, 5, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0];
        m.extend_from_slice(&[1, b'a', 4, b't', b'e', b's', b't', 0, 0, 1, 0, 1]);
        // CNAME record, owner pointer to 12, rdata "b" + pointer to "test" at 14.
        m.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 30, 0, 4, 1, b'b', 0xc0, 14]);
        // A record owned by the CNAME target (its name is at offset 36).
        m.extend_from_slice(&[0xc0, 36, 0, 1, 0, 1, 0, 0, 0, 20, 0, 4, 203, 0, 113, 2]);
        assert_eq!(
            parse_response(&m, 5, "a.test"),
            Ok(Lookup::Found(vec![Ipv4Addr::new(203, 0, 113, 2)], 20))
        );
    }
}
