//! A minimal RESP2 client: enough to act as a Redis operator from a test.

use std::fmt;
use std::io;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RespValue {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`: the command failed; the text includes the error prefix (`ERR`, `OOM`, ...).
    Error(String),
    /// `:42`
    Integer(i64),
    /// `$5\r\nhello`
    Bulk(Vec<u8>),
    /// `$-1` or `*-1`: a missing value.
    Null,
    /// `*2\r\n...`
    Array(Vec<RespValue>),
}

impl RespValue {
    /// The reply as text, if it is a simple or bulk string.
    pub fn as_text(&self) -> Option<String> {
        match self {
            Self::Simple(text) => Some(text.clone()),
            Self::Bulk(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
            _ => None,
        }
    }

    /// The reply as an integer, if it is one (or a bulk string holding one, as `SCAN` cursors are).
    pub fn as_integer(&self) -> Option<i64> {
        match self {
            Self::Integer(n) => Some(*n),
            Self::Bulk(_) | Self::Simple(_) => self.as_text()?.parse().ok(),
            _ => None,
        }
    }
}

/// Renders a reply the way a test usually wants to read it: strings as-is, integers in decimal,
/// `Null` as the empty string, errors as their text, and arrays one element per line.
impl fmt::Display for RespValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Simple(text) | Self::Error(text) => f.write_str(text),
            Self::Integer(n) => write!(f, "{n}"),
            Self::Bulk(bytes) => f.write_str(&String::from_utf8_lossy(bytes)),
            Self::Null => Ok(()),
            Self::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str("\n")?;
                    }
                    write!(f, "{item}")?;
                }
                Ok(())
            }
        }
    }
}

/// A raw RESP2 connection to a Redis server, one command at a time.
#[derive(Debug)]
pub struct RespConnection {
    stream: TcpStream,
    buffer: BytesMut,
}

impl RespConnection {
    /// Connects to `127.0.0.1:port`.
    ///
    /// # Errors
    ///
    /// Returns the I/O error when nothing accepts on the port.
    pub async fn connect(port: u16) -> io::Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        Ok(Self { stream, buffer: BytesMut::with_capacity(4096) })
    }

    /// Sends one command (as an array of bulk strings) and reads its reply.
    ///
    /// A Redis error reply is `Ok(RespValue::Error(..))`, not an `Err`.
    ///
    /// # Errors
    ///
    /// Returns an I/O error when the connection breaks or the reply is not valid RESP2.
    pub async fn command(&mut self, args: &[&str]) -> io::Result<RespValue> {
        self.stream.write_all(&encode_command(args)).await?;
        loop {
            if let Some((value, used)) = parse(&self.buffer)? {
                self.buffer.advance(used);
                return Ok(value);
            }
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "redis closed the connection before replying",
                ));
            }
        }
    }
}

/// Encodes a command as a RESP array of bulk strings.
pub(crate) fn encode_command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Parses one reply from the front of `input`: `Ok(None)` when more bytes are needed,
/// otherwise the value and how many bytes it used.
pub(crate) fn parse(input: &[u8]) -> io::Result<Option<(RespValue, usize)>> {
    let Some(line_end) = find_crlf(input) else {
        return Ok(None);
    };
    let Some((&kind, rest)) = input[..line_end].split_first() else {
        return Err(invalid("empty reply line"));
    };
    let line = std::str::from_utf8(rest).map_err(|_| invalid("reply line is not UTF-8"))?;
    let after_line = line_end + 2;
    let value = match kind {
        b'+' => RespValue::Simple(line.to_owned()),
        b'-' => RespValue::Error(line.to_owned()),
        b':' => RespValue::Integer(parse_int(line)?),
        b'$' => {
            let len = parse_int(line)?;
            let Ok(len) = usize::try_from(len) else {
                return Ok(Some((RespValue::Null, after_line)));
            };
            let end = after_line + len;
            if input.len() < end + 2 {
                return Ok(None);
            }
            if &input[end..end + 2] != b"\r\n" {
                return Err(invalid("bulk string not terminated by CRLF"));
            }
            return Ok(Some((RespValue::Bulk(input[after_line..end].to_vec()), end + 2)));
        }
        b'*' => {
            let len = parse_int(line)?;
            let Ok(len) = usize::try_from(len) else {
                return Ok(Some((RespValue::Null, after_line)));
            };
            let mut items = Vec::with_capacity(len);
            let mut used = after_line;
            for _ in 0..len {
                let Some((item, n)) = parse(&input[used..])? else {
                    return Ok(None);
                };
                items.push(item);
                used += n;
            }
            return Ok(Some((RespValue::Array(items), used)));
        }
        other => return Err(invalid(&format!("unknown RESP type byte {:?}", other as char))),
    };
    Ok(Some((value, after_line)))
}

fn find_crlf(input: &[u8]) -> Option<usize> {
    input.windows(2).position(|pair| pair == b"\r\n")
}

fn parse_int(text: &str) -> io::Result<i64> {
    text.parse().map_err(|_| invalid(&format!("invalid RESP integer {text:?}")))
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}
