//! The load client's HTTP/1.1: GET requests on one kept-alive connection,
//! written and read by hand over a tokio `TcpStream`. It reads only what the
//! service sends (a status line, headers, a body of `Content-Length` bytes),
//! which spares the client a second HTTP stack.

use std::fmt;
use std::io;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The most a response's head (status line and headers) may take.
const MAX_HEAD: usize = 16 * 1024;
/// The most a response's body may take.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// Why a request got no response.
#[derive(Debug)]
pub enum HttpError {
    /// Not an `http://host:port` address.
    Address(String),
    Io(io::Error),
    /// The server closed the connection before a whole response.
    Closed,
    /// A response this client does not read (no `Content-Length`, too
    /// large, not HTTP/1.1).
    Unsupported(&'static str),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Address(why) => write!(f, "not an http://host:port address: {why}"),
            Self::Io(error) => write!(f, "{error}"),
            Self::Closed => f.write_str("the server closed the connection"),
            Self::Unsupported(what) => write!(f, "a response this client cannot read: {what}"),
        }
    }
}

impl std::error::Error for HttpError {}

impl From<io::Error> for HttpError {
    fn from(error: io::Error) -> Self {
        Self::Io(error)
    }
}

/// The `host:port` of an `http://host:port` address (a trailing `/` allowed).
pub fn authority(url: &str) -> Result<&str, HttpError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| HttpError::Address("it must start with http://".into()))?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains('/') || !authority.contains(':') {
        return Err(HttpError::Address("it must be http://host:port".into()));
    }
    Ok(authority)
}

/// A response: its status and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// One kept-alive connection to the service.
pub struct Connection {
    stream: BufReader<TcpStream>,
    authority: String,
}

impl Connection {
    /// Connects to `authority` (`host:port`).
    pub async fn open(authority: &str) -> Result<Self, HttpError> {
        let stream = TcpStream::connect(authority).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream: BufReader::new(stream),
            authority: authority.to_owned(),
        })
    }

    /// GETs `path` and reads the whole response.
    pub async fn get(&mut self, path: &str) -> Result<Response, HttpError> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.authority);
        self.stream.get_mut().write_all(request.as_bytes()).await?;

        let mut head = 0;
        let status_line = self.line(&mut head).await?;
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .ok_or(HttpError::Unsupported("a status line other than HTTP/1.1"))?;
        let mut length = None;
        loop {
            let line = self.line(&mut head).await?;
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    let value: usize = value
                        .trim()
                        .parse()
                        .map_err(|_| HttpError::Unsupported("a Content-Length not a number"))?;
                    length = Some(value);
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    return Err(HttpError::Unsupported("a chunked body"));
                }
            }
        }
        let length = length.ok_or(HttpError::Unsupported("no Content-Length"))?;
        if length > MAX_BODY {
            return Err(HttpError::Unsupported("a body over 16 MiB"));
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await.map_err(|error| {
            if error.kind() == io::ErrorKind::UnexpectedEof {
                HttpError::Closed
            } else {
                HttpError::Io(error)
            }
        })?;
        Ok(Response { status, body })
    }

    /// One line of the response's head, without its CRLF; `head` counts the
    /// head's bytes so far.
    async fn line(&mut self, head: &mut usize) -> Result<String, HttpError> {
        let mut line = Vec::new();
        let budget = MAX_HEAD.saturating_sub(*head) as u64;
        let read = (&mut self.stream)
            .take(budget)
            .read_until(b'\n', &mut line)
            .await?;
        *head += read;
        if !line.ends_with(b"\n") {
            return Err(if read as u64 == budget {
                HttpError::Unsupported("a head over 16 KiB")
            } else {
                HttpError::Closed
            });
        }
        line.truncate(line.len() - 1);
        if line.ends_with(b"\r") {
            line.pop();
        }
        String::from_utf8(line).map_err(|_| HttpError::Unsupported("a head not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server on a free loopback port that reads a request head and
    /// answers `answer` to each, until the client leaves.
    async fn server(answer: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let address = listener.local_addr().expect("bound").to_string();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("a client");
            let mut stream = BufReader::new(stream);
            loop {
                let mut line = String::new();
                while line != "\r\n" {
                    line.clear();
                    if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                }
                if stream.get_mut().write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
        address
    }

    fn watchdog<F: Future>(test: F) -> tokio::time::Timeout<F> {
        tokio::time::timeout(std::time::Duration::from_secs(10), test)
    }

    #[tokio::test]
    async fn two_responses_are_read_on_one_connection() {
        watchdog(async {
            let address = server("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello").await;
            let mut connection = Connection::open(&address).await.expect("connects");
            for _ in 0..2 {
                let response = connection.get("/").await.expect("a response");
                assert_eq!(
                    (response.status, response.body.as_slice()),
                    (200, &b"hello"[..])
                );
            }
        })
        .await
        .expect("within the watchdog");
    }

    #[tokio::test]
    async fn a_chunked_response_is_refused() {
        watchdog(async {
            let answer =
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
            let address = server(answer).await;
            let mut connection = Connection::open(&address).await.expect("connects");
            let error = connection.get("/").await.expect_err("chunked");
            assert!(
                matches!(error, HttpError::Unsupported("a chunked body")),
                "{error}"
            );
        })
        .await
        .expect("within the watchdog");
    }

    #[tokio::test]
    async fn a_body_cut_short_is_a_closed_connection() {
        watchdog(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
            let address = listener.local_addr().expect("bound").to_string();
            tokio::spawn(async move {
                let (mut stream, _) = listener.accept().await.expect("a client");
                let mut request = [0; 256];
                let _ = stream.read(&mut request).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\nhalf")
                    .await;
            });
            let mut connection = Connection::open(&address).await.expect("connects");
            let error = connection.get("/").await.expect_err("cut short");
            assert!(matches!(error, HttpError::Closed), "{error}");
        })
        .await
        .expect("within the watchdog");
    }

    #[test]
    fn only_http_host_port_addresses_are_taken() {
        assert_eq!(
            authority("http://127.0.0.1:8080/").ok(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(authority("http://localhost:1").ok(), Some("localhost:1"));
        for bad in [
            "127.0.0.1:8080",
            "https://a:1",
            "http://a",
            "http://a:1/x",
            "http://",
        ] {
            assert!(authority(bad).is_err(), "{bad}");
        }
    }
}
