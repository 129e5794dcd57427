//! Calls over the plugin's Unix socket with any `:authority`.
//!
//! kubelet's gRPC client names `localhost` as the authority of its calls over a
//! Unix socket; clients built on grpc-core (Python's `grpcio`, among others)
//! name the socket's path, which the HTTP/2 server under tonic refuses as a
//! malformed authority (a stream reset with PROTOCOL_ERROR) before any service
//! sees the call. So each connection passes through a relay that reads the
//! client's frames and re-encodes every header block, with an authority the
//! server would refuse replaced by `localhost`; every other frame, and all the
//! server sends back, passes unchanged.
//!
//! HPACK keeps a table of headers per connection on each side, so the relay
//! decodes every block the client sends (keeping the client's table in step)
//! and encodes every block it forwards without adding to the server's table
//! (an encoder whose table holds nothing can never disagree with its peer).

use std::borrow::Cow;
use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What every HTTP/2 connection starts with (RFC 9113, section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
/// The largest frame every HTTP/2 peer accepts (SETTINGS_MAX_FRAME_SIZE's
/// least value, and the server's, which never raises it): a longer frame from
/// the client ends the connection, and re-encoded blocks are cut into frames
/// of at most this.
const MAX_FRAME: usize = 16_384;
/// The most a client's header block may take, encoded and decoded (each header
/// counted as its name, its value and 32 bytes, as HTTP/2 counts them). A CSI
/// call's headers are a few hundred bytes; the bounds keep a client from
/// making the relay hold more than this per connection.
const MAX_BLOCK: usize = 64 << 10;
const MAX_HEADER_LIST: usize = 64 << 10;
/// The table size the server's decoder advertises (HTTP/2's default, which
/// tonic keeps): a client may not ask the relay's decoder for more.
const MAX_TABLE: usize = 4096;

const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// What the server is told instead of an authority it would refuse.
const LOCALHOST: &[u8] = b"localhost";

/// Relays one connection: `client`'s bytes to `server` with their header
/// blocks re-encoded, and `server`'s back as they are, until either side ends.
pub async fn relay<C, S>(client: C, server: S)
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (client_read, mut client_write) = tokio::io::split(client);
    let (mut server_read, mut server_write) = tokio::io::split(server);
    let upstream = async {
        let result = forward(client_read, &mut server_write).await;
        let _ = server_write.shutdown().await;
        result
    };
    let downstream = async {
        let result = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
        result.map(drop)
    };
    tokio::pin!(upstream, downstream);
    // The client may finish sending and wait for its answers; once the server
    // has said all it will, nothing more the client sends matters.
    let ended = tokio::select! {
        up = &mut upstream => up.and(downstream.await),
        down = &mut downstream => down,
    };
    if let Err(e) = ended {
        tracing::debug!("CSI connection ended: {e}");
    }
}

/// The client's side of a connection, frame by frame.
async fn forward<R, W>(mut client: R, server: &mut W) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut preface = [0u8; PREFACE.len()];
    client.read_exact(&mut preface).await?;
    server.write_all(&preface).await?;
    if &preface != PREFACE {
        // Not HTTP/2 with prior knowledge: the server answers as it will.
        tokio::io::copy(&mut client, server).await?;
        return Ok(());
    }
    let mut blocks = Blocks::default();
    loop {
        let mut header = [0u8; FRAME_HEADER];
        match client.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        if length > MAX_FRAME {
            return Err(invalid("a frame longer than the server accepts"));
        }
        let mut payload = vec![0u8; length];
        client.read_exact(&mut payload).await?;
        let out = blocks.frame(header, payload)?;
        server.write_all(&out).await?;
    }
}

/// A HEADERS frame's priority fields (stream dependency and weight).
type Priority = [u8; 5];

/// A header block that goes on in CONTINUATION frames.
struct OpenBlock {
    stream: u32,
    /// The HEADERS frame's END_STREAM flag.
    end_stream: u8,
    priority: Option<Priority>,
    /// The block so far.
    block: Vec<u8>,
}

/// The state of one connection's header blocks.
struct Blocks {
    decoder: loona_hpack::Decoder<'static>,
    encoder: loona_hpack::Encoder<'static>,
    open: Option<OpenBlock>,
}

impl Default for Blocks {
    fn default() -> Self {
        let mut encoder = loona_hpack::Encoder::new();
        // An encoder whose table holds nothing only ever refers to the static
        // table, which every peer shares.
        encoder.set_max_table_size(0);
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(MAX_TABLE);
        Self {
            decoder,
            encoder,
            open: None,
        }
    }
}

impl Blocks {
    /// The bytes to send the server for one frame of the client's (nothing
    /// while a header block is incomplete).
    fn frame(&mut self, header: [u8; FRAME_HEADER], payload: Vec<u8>) -> io::Result<Vec<u8>> {
        let (kind, flags) = (header[3], header[4]);
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & !(1 << 31);
        let mut open = match (kind, self.open.take()) {
            (HEADERS, None) => {
                let (priority, fragment) = split_headers(flags, &payload)?;
                OpenBlock {
                    stream,
                    end_stream: flags & END_STREAM,
                    priority,
                    block: fragment.to_vec(),
                }
            }
            (CONTINUATION, Some(mut open)) if open.stream == stream => {
                open.block.extend_from_slice(&payload);
                open
            }
            (_, Some(_)) => {
                return Err(invalid("a header block was interrupted by another frame"));
            }
            (_, None) => {
                let mut out = header.to_vec();
                out.extend_from_slice(&payload);
                return Ok(out);
            }
        };
        if open.block.len() > MAX_BLOCK {
            return Err(invalid("a header block longer than a CSI call needs"));
        }
        if flags & END_HEADERS == 0 {
            self.open = Some(open);
            return Ok(Vec::new());
        }
        open.block = self.reencode(&open.block)?;
        Ok(frames(&open))
    }

    /// One whole header block, decoded and encoded again with its authority
    /// made acceptable.
    fn reencode(&mut self, block: &[u8]) -> io::Result<Vec<u8>> {
        let mut headers: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        // Counted before anything is copied: a byte of the block may stand
        // for a whole entry of the table.
        let mut size = 0;
        self.decoder
            .decode_with_cb(block, |name, value| {
                size += name.len() + value.len() + 32;
                if size > MAX_HEADER_LIST {
                    return;
                }
                let value = match (&*name, &value) {
                    (b":authority", value) if !acceptable(value) => Cow::Borrowed(LOCALHOST),
                    _ => value,
                };
                headers.push((name.into_owned(), value.into_owned()));
            })
            .map_err(|e| invalid(&format!("a header block cannot be decoded: {e:?}")))?;
        if size > MAX_HEADER_LIST {
            return Err(invalid("headers longer than a CSI call needs"));
        }
        Ok(self
            .encoder
            .encode(headers.iter().map(|(n, v)| (&n[..], &v[..]))))
    }
}

/// A HEADERS frame's priority fields and block fragment, its padding left out.
fn split_headers(flags: u8, payload: &[u8]) -> io::Result<(Option<Priority>, &[u8])> {
    let mut rest = payload;
    if flags & PADDED != 0 {
        let (&pad, after) = rest
            .split_first()
            .ok_or_else(|| invalid("empty padded frame"))?;
        rest = after
            .len()
            .checked_sub(pad as usize)
            .map(|end| &after[..end])
            .ok_or_else(|| invalid("padding longer than the frame"))?;
    }
    let priority = match flags & PRIORITY {
        0 => None,
        _ => {
            let (fields, after) = rest
                .split_first_chunk::<5>()
                .ok_or_else(|| invalid("short priority fields"))?;
            rest = after;
            Some(*fields)
        }
    };
    Ok((priority, rest))
}

/// A whole (re-encoded) block as a HEADERS frame and as many CONTINUATION
/// frames as it needs.
fn frames(open: &OpenBlock) -> Vec<u8> {
    let priority = open.priority.as_ref().map_or(&[][..], |p| &p[..]);
    let (first, mut rest) = open
        .block
        .split_at(open.block.len().min(MAX_FRAME - priority.len()));
    let mut out = Vec::with_capacity(open.block.len() + 64);
    let mut push = |kind: u8, flags: u8, prefix: &[u8], fragment: &[u8]| {
        let length = (prefix.len() + fragment.len()) as u32;
        out.extend_from_slice(&length.to_be_bytes()[1..]);
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&open.stream.to_be_bytes());
        out.extend_from_slice(prefix);
        out.extend_from_slice(fragment);
    };
    let last = |rest: &[u8]| if rest.is_empty() { END_HEADERS } else { 0 };
    let priority_flag = if open.priority.is_some() { PRIORITY } else { 0 };
    push(
        HEADERS,
        open.end_stream | priority_flag | last(rest),
        priority,
        first,
    );
    while !rest.is_empty() {
        let (fragment, after) = rest.split_at(rest.len().min(MAX_FRAME));
        rest = after;
        push(CONTINUATION, last(rest), &[], fragment);
    }
    out
}

/// Whether the HTTP/2 server takes `value` as an authority.
fn acceptable(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's request headers, as grpc-core sends them over a Unix socket.
    fn request(path: &str, authority: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// The frames in `bytes`: (kind, flags, stream, payload).
    fn parse(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut frames = Vec::new();
        while !bytes.is_empty() {
            let length = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
            let stream = u32::from_be_bytes(bytes[5..9].try_into().unwrap());
            frames.push((bytes[3], bytes[4], stream, bytes[9..9 + length].to_vec()));
            bytes = &bytes[9 + length..];
        }
        frames
    }

    /// Runs the client's `bytes` through a relay and gives what the server got.
    async fn relayed(bytes: Vec<u8>) -> Vec<u8> {
        let (client, mut client_end) = tokio::io::duplex(1 << 20);
        let (server, mut server_end) = tokio::io::duplex(1 << 20);
        let relay = tokio::spawn(relay(client, server));
        client_end.write_all(&bytes).await.unwrap();
        client_end.shutdown().await.unwrap();
        let mut got = Vec::new();
        server_end.read_to_end(&mut got).await.unwrap();
        drop(client_end);
        drop(server_end);
        relay.await.unwrap();
        got
    }

    #[tokio::test]
    async fn a_socket_path_authority_reaches_the_server_as_localhost() {
        // The client's encoder indexes what it sends, so the second request
        // refers to entries of the first: the relay must follow its table.
        let mut client = loona_hpack::Encoder::new();
        let mut encode = |headers: &[(Vec<u8>, Vec<u8>)]| {
            client.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])))
        };
        let socket = "%2Frun%2Fcsi%2Fcsi.sock";
        let first = encode(&request("/csi.v1.Identity/Probe", socket));
        let second = encode(&request("/csi.v1.Node/NodeGetInfo", socket));
        let kept = encode(&request("/csi.v1.Identity/Probe", "localhost"));
        let data = frame(0x0, END_STREAM, 1, b"\0\0\0\0\0");
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        // The first block padded and with priority fields, cut in two.
        let mut padded = vec![3u8];
        padded.extend_from_slice(&[0, 0, 0, 0, 15]);
        padded.extend_from_slice(&first[..10]);
        padded.extend_from_slice(&[0, 0, 0]);
        bytes.extend(frame(HEADERS, PADDED | PRIORITY, 1, &padded));
        bytes.extend(frame(CONTINUATION, END_HEADERS, 1, &first[10..]));
        bytes.extend(&data);
        bytes.extend(frame(HEADERS, END_HEADERS, 3, &second));
        bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, 5, &kept));

        let got = relayed(bytes).await;
        assert_eq!(&got[..24], PREFACE);
        let frames = parse(&got[24..]);
        let kinds: Vec<u8> = frames.iter().map(|f| f.0).collect();
        assert_eq!(kinds, [0x4, HEADERS, 0x0, HEADERS, HEADERS]);
        assert_eq!(frames[1].1, PRIORITY | END_HEADERS);
        assert_eq!(&frames[1].3[..5], &[0, 0, 0, 0, 15]);
        assert_eq!(frames[2].3, b"\0\0\0\0\0");
        assert_eq!(frames[4].1, END_HEADERS | END_STREAM);
        // What the server's decoder reads: the same requests, each naming
        // localhost.
        let mut server = loona_hpack::Decoder::new();
        let blocks = [&frames[1].3[5..], &frames[3].3, &frames[4].3];
        let paths = [
            "/csi.v1.Identity/Probe",
            "/csi.v1.Node/NodeGetInfo",
            "/csi.v1.Identity/Probe",
        ];
        for (block, path) in blocks.into_iter().zip(paths) {
            assert_eq!(server.decode(block).unwrap(), request(path, "localhost"));
        }
    }

    #[test]
    fn a_large_block_is_cut_into_frames_the_server_takes() {
        let mut blocks = Blocks::default();
        let mut headers = request("/csi.v1.Node/NodePublishVolume", "localhost");
        headers.push((b"x-large".to_vec(), vec![b'a'; 40_000]));
        let block =
            loona_hpack::Encoder::new().encode(headers.iter().map(|(n, v)| (&n[..], &v[..])));
        let header: [u8; 9] = frame(HEADERS, END_HEADERS, 7, &[])[..9].try_into().unwrap();
        let out = blocks.frame(header, block).unwrap();
        let frames = parse(&out);
        assert!(frames.len() >= 3, "{}", frames.len());
        assert!(frames.iter().all(|f| f.3.len() <= MAX_FRAME && f.2 == 7));
        assert_eq!(frames[0].0, HEADERS);
        assert!(frames[1..].iter().all(|f| f.0 == CONTINUATION));
        assert_eq!(frames.last().unwrap().1, END_HEADERS);
        let whole: Vec<u8> = frames.iter().flat_map(|f| f.3.clone()).collect();
        assert_eq!(loona_hpack::Decoder::new().decode(&whole).unwrap(), headers);
    }

    #[test]
    fn what_is_not_a_header_block_passes_as_it_is_and_garbage_is_refused() {
        let mut blocks = Blocks::default();
        let ping = frame(0x6, 0, 0, b"12345678");
        let header: [u8; 9] = ping[..9].try_into().unwrap();
        assert_eq!(blocks.frame(header, ping[9..].to_vec()).unwrap(), ping);
        let bad = frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0xff, 0xff]);
        let header: [u8; 9] = bad[..9].try_into().unwrap();
        assert!(blocks.frame(header, bad[9..].to_vec()).is_err());
        assert!(acceptable(b"localhost") && acceptable(b"127.0.0.1:10000"));
        assert!(!acceptable(b"/run/csi/csi.sock") && !acceptable(b"%2Frun%2Fcsi.sock"));
    }

    #[tokio::test]
    async fn a_client_cannot_make_the_relay_hold_more_than_a_call_needs() {
        // A frame longer than the server takes ends the connection unread.
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(0x0, 0, 1, &vec![0; MAX_FRAME + 1]));
        assert_eq!(relayed(bytes).await, PREFACE);

        let header =
            |kind, flags| -> [u8; 9] { frame(kind, flags, 1, &[])[..9].try_into().unwrap() };
        // A block that never ends.
        let mut blocks = Blocks::default();
        assert!(
            blocks
                .frame(header(HEADERS, 0), vec![0x82])
                .unwrap()
                .is_empty()
        );
        let flood = (0..)
            .map(|_| blocks.frame(header(CONTINUATION, 0), vec![0x82; MAX_FRAME]))
            .take(MAX_BLOCK / MAX_FRAME + 2)
            .find_map(Result::err);
        assert!(flood.is_some(), "an endless header block was held");

        // A table larger than the server's.
        let mut grow = vec![0x3f];
        grow.extend(loona_hpack::encoder::encode_integer(1 << 20, 5));
        grow.push(0x82);
        let mut blocks = Blocks::default();
        assert!(blocks.frame(header(HEADERS, END_HEADERS), grow).is_err());

        // One large entry referred to again and again: each reference is a
        // byte of the block, and would be a copy of the entry.
        let mut client = loona_hpack::Encoder::new();
        let big = vec![b'a'; 3000];
        let mut bomb = client.encode([(&b"x-big"[..], &big[..])]);
        let reference = client.encode([(&b"x-big"[..], &big[..])]);
        assert_eq!(reference.len(), 1);
        bomb.extend(std::iter::repeat_n(reference[0], 1000));
        let mut blocks = Blocks::default();
        let error = blocks
            .frame(header(HEADERS, END_HEADERS), bomb)
            .unwrap_err();
        assert!(
            error.to_string().contains("longer than a CSI call needs"),
            "{error}"
        );
    }
}
