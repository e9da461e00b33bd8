//! A ZMTP guard between our ZeroMQ client and a kernel that may be hostile.
//!
//! Code in a sandbox runs inside its kernel, so it can make the kernel (or a fake kernel on the
//! same ports) send anything. A ZeroMQ frame header can announce a body of 2^63 bytes, and the
//! client library reserves memory for what is announced. Every byte from the kernel therefore
//! passes through this filter first: it checks the ZMTP 3 greeting, and refuses any frame or
//! multipart message above fixed limits, by ending the connection (the kernel is then treated
//! as dead). Bytes towards the kernel pass unchecked.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Limits on what a kernel may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardLimits {
    /// Largest frame body.
    pub max_frame: u64,
    /// Largest multipart message (all its frames together).
    pub max_message: u64,
    /// Largest command frame (handshake, ping).
    pub max_command: u64,
}

impl Default for GuardLimits {
    fn default() -> Self {
        GuardLimits {
            max_frame: 32 << 20,
            max_message: 64 << 20,
            max_command: 64 << 10,
        }
    }
}

const GREETING: usize = 64;
const FLAG_MORE: u8 = 0x01;
const FLAG_LONG: u8 = 0x02;
const FLAG_COMMAND: u8 = 0x04;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Greeting {
        got: usize,
    },
    Flags,
    Size {
        long: bool,
        more: bool,
        command: bool,
        got: usize,
    },
    Body {
        left: u64,
    },
}

/// The incremental checker of one kernel-to-client byte stream.
#[derive(Debug)]
pub struct ZmtpFilter {
    limits: GuardLimits,
    state: State,
    greeting: [u8; GREETING],
    size: [u8; 8],
    /// Bytes of the current multipart message so far.
    message: u64,
}

impl ZmtpFilter {
    pub fn new(limits: GuardLimits) -> ZmtpFilter {
        ZmtpFilter {
            limits,
            state: State::Greeting { got: 0 },
            greeting: [0; GREETING],
            size: [0; 8],
            message: 0,
        }
    }

    /// Checks the next bytes of the stream; an error means the connection must end.
    pub fn check(&mut self, mut buf: &[u8]) -> Result<(), String> {
        while !buf.is_empty() {
            match self.state {
                State::Greeting { got } => {
                    let n = (GREETING - got).min(buf.len());
                    self.greeting[got..got + n].copy_from_slice(&buf[..n]);
                    buf = &buf[n..];
                    let got = got + n;
                    if got >= 1 && self.greeting[0] != 0xff {
                        return Err("not a ZMTP greeting".into());
                    }
                    if got >= 10 && self.greeting[9] != 0x7f {
                        return Err("not a ZMTP greeting".into());
                    }
                    if got >= 11 && self.greeting[10] < 3 {
                        return Err("ZMTP before version 3 is not supported".into());
                    }
                    self.state = if got == GREETING {
                        if &self.greeting[12..16] != b"NULL" {
                            return Err("only the NULL security mechanism is supported".into());
                        }
                        State::Flags
                    } else {
                        State::Greeting { got }
                    };
                }
                State::Flags => {
                    let flags = buf[0];
                    buf = &buf[1..];
                    if flags & !(FLAG_MORE | FLAG_LONG | FLAG_COMMAND) != 0 {
                        return Err(format!("reserved frame flags set: {flags:#04x}"));
                    }
                    let command = flags & FLAG_COMMAND != 0;
                    if command && flags & FLAG_MORE != 0 {
                        return Err("a command frame cannot have more frames".into());
                    }
                    self.state = State::Size {
                        long: flags & FLAG_LONG != 0,
                        more: flags & FLAG_MORE != 0,
                        command,
                        got: 0,
                    };
                }
                State::Size {
                    long,
                    more,
                    command,
                    got,
                } => {
                    let need = if long { 8 } else { 1 };
                    let n = (need - got).min(buf.len());
                    self.size[got..got + n].copy_from_slice(&buf[..n]);
                    buf = &buf[n..];
                    let got = got + n;
                    if got < need {
                        self.state = State::Size {
                            long,
                            more,
                            command,
                            got,
                        };
                        continue;
                    }
                    let size = if long {
                        u64::from_be_bytes(self.size)
                    } else {
                        self.size[0] as u64
                    };
                    let limit = if command {
                        self.limits.max_command
                    } else {
                        self.limits.max_frame
                    };
                    if size > limit {
                        return Err(format!("frame of {size} bytes exceeds {limit}"));
                    }
                    if !command {
                        self.message += size;
                        if self.message > self.limits.max_message {
                            return Err(format!(
                                "message of more than {} bytes",
                                self.limits.max_message
                            ));
                        }
                        if !more {
                            self.message = 0;
                        }
                    }
                    self.state = if size == 0 {
                        State::Flags
                    } else {
                        State::Body { left: size }
                    };
                }
                State::Body { left } => {
                    let n = (left.min(buf.len() as u64)) as usize;
                    buf = &buf[n..];
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::Flags
                    } else {
                        State::Body { left }
                    };
                }
            }
        }
        Ok(())
    }
}

/// Copies `kernel` → `client` through the filter and `client` → `kernel` as is, until either
/// side closes or the filter refuses something.
pub async fn pump<K, C>(kernel: K, client: C, limits: GuardLimits) -> io::Result<()>
where
    K: AsyncRead + AsyncWrite + Unpin,
    C: AsyncRead + AsyncWrite + Unpin,
{
    let (mut k_read, mut k_write) = tokio::io::split(kernel);
    let (mut c_read, mut c_write) = tokio::io::split(client);
    let up = async {
        let mut filter = ZmtpFilter::new(limits);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = k_read.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, io::Error>(());
            }
            filter
                .check(&buf[..n])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            c_write.write_all(&buf[..n]).await?;
        }
    };
    let down = async {
        tokio::io::copy(&mut c_read, &mut k_write).await?;
        Ok::<_, io::Error>(())
    };
    // Whichever direction ends first ends the connection.
    tokio::select! {
        r = up => r,
        r = down => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn greeting() -> Vec<u8> {
        let mut g = vec![0u8; 64];
        g[0] = 0xff;
        g[9] = 0x7f;
        g[10] = 3;
        g[11] = 1;
        g[12..16].copy_from_slice(b"NULL");
        g
    }

    fn frame(flags: u8, body: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        if body.len() > 255 {
            f.push(flags | FLAG_LONG);
            f.extend_from_slice(&(body.len() as u64).to_be_bytes());
        } else {
            f.push(flags);
            f.push(body.len() as u8);
        }
        f.extend_from_slice(body);
        f
    }

    fn limits() -> GuardLimits {
        GuardLimits {
            max_frame: 1000,
            max_message: 1500,
            max_command: 100,
        }
    }

    #[test]
    fn a_normal_conversation_passes_in_any_chunking() {
        let mut stream = greeting();
        stream.extend(frame(FLAG_COMMAND, b"\x05READY"));
        stream.extend(frame(FLAG_MORE, b"<IDS|MSG>"));
        stream.extend(frame(FLAG_MORE, &[b'x'; 600]));
        stream.extend(frame(0, &[b'y'; 800]));
        stream.extend(frame(0, b""));
        for chunk in [1, 2, 7, 64, 1000, stream.len()] {
            let mut f = ZmtpFilter::new(limits());
            for c in stream.chunks(chunk) {
                f.check(c).unwrap();
            }
        }
    }

    #[test]
    fn oversized_frames_and_messages_are_refused() {
        let mut f = ZmtpFilter::new(limits());
        f.check(&greeting()).unwrap();
        // A header announcing 2^62 bytes: refused before any body arrives.
        let mut huge = vec![FLAG_LONG];
        huge.extend_from_slice(&(1u64 << 62).to_be_bytes());
        assert!(f.check(&huge).is_err());

        let mut f = ZmtpFilter::new(limits());
        f.check(&greeting()).unwrap();
        f.check(&frame(FLAG_MORE, &[0; 900])).unwrap();
        assert!(
            f.check(&frame(0, &[0; 900]))
                .unwrap_err()
                .contains("message")
        );

        let mut f = ZmtpFilter::new(limits());
        f.check(&greeting()).unwrap();
        assert!(f.check(&frame(FLAG_COMMAND, &[0; 200])).is_err());
    }

    #[test]
    fn garbage_is_refused() {
        assert!(
            ZmtpFilter::new(limits())
                .check(b"HTTP/1.1 200 OK\r\n")
                .is_err()
        );
        let mut g = greeting();
        g[10] = 2;
        assert!(ZmtpFilter::new(limits()).check(&g).is_err());
        let mut g = greeting();
        g[12..16].copy_from_slice(b"CURV");
        assert!(ZmtpFilter::new(limits()).check(&g).is_err());
        let mut f = ZmtpFilter::new(limits());
        f.check(&greeting()).unwrap();
        assert!(f.check(&[0x80, 1, 0]).is_err(), "reserved flag bits");
        let mut f = ZmtpFilter::new(limits());
        f.check(&greeting()).unwrap();
        assert!(f.check(&[FLAG_COMMAND | FLAG_MORE, 1, 0]).is_err());
    }

    #[tokio::test]
    async fn the_pump_ends_a_connection_that_breaks_the_rules() {
        let (kernel, mut kernel_side) = tokio::io::duplex(1 << 16);
        let (client, mut client_side) = tokio::io::duplex(1 << 16);
        let task = tokio::spawn(pump(kernel, client, limits()));
        kernel_side.write_all(&greeting()).await.unwrap();
        let mut got = vec![0u8; 64];
        client_side.read_exact(&mut got).await.unwrap();
        assert_eq!(got, greeting());
        client_side.write_all(b"to kernel").await.unwrap();
        let mut back = [0u8; 9];
        kernel_side.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"to kernel");
        let mut huge = vec![FLAG_LONG];
        huge.extend_from_slice(&(1u64 << 40).to_be_bytes());
        kernel_side.write_all(&huge).await.unwrap();
        let r = task.await.unwrap();
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}
