//! Answers no S3 would give, for testing that s3vol refuses them: bodies longer
//! than the range asked for (or endless), the whole object for a range, ranges
//! and ETags other than asked, listings that go round in circles, never end, or
//! hold keys outside the prefix asked for.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Head, Shared, read_head};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lie {
    /// Ranged GETs: the body runs a MiB past the range.
    LongBody,
    /// Ranged GETs: the body never ends.
    EndlessBody,
    /// Ranged GETs: the body comes a byte at a time, each just before the
    /// stall limit of `--io-timeout 3s` (a second) would cut it.
    DrippingBody,
    /// Ranged GETs: the first hundred bytes of the body, then silence.
    StallingBody,
    /// Ranged GETs: 200 with no Content-Range, as for the whole object.
    WholeObject,
    /// Ranged GETs: a Content-Range a byte later than asked.
    WrongRange,
    /// Ranged GETs: an ETag other than the object's.
    WrongEtag,
    /// Listings: the first page again and again, with the same continuation.
    RepeatingListing,
    /// Listings: made-up keys, a thousand a page, page after page.
    EndlessListing,
    /// Listings: the first page as the server has it, but for a continuation;
    /// then empty pages, each with a new continuation, page after page.
    EmptyListing,
    /// Listings: keys outside the prefix asked for, besides the real ones.
    ForeignKeys,
}

/// The continuation a repeating listing always gives.
const SAME_TOKEN: &str = "s3vol-proxy-same";

/// The headers of a listing's answer.
const XML: &[(&str, &str)] = &[("Content-Type", "application/xml")];

/// Where foreign keys live: outside any prefix a test mounts.
pub const FOREIGN: &str = "outside-the-prefix/";

impl Lie {
    /// Whether the lie is about this kind of request.
    pub(super) fn fits(self, request: &Head) -> bool {
        let get = request.start.starts_with("GET ");
        match self {
            Lie::LongBody
            | Lie::EndlessBody
            | Lie::DrippingBody
            | Lie::StallingBody
            | Lie::WholeObject
            | Lie::WrongRange
            | Lie::WrongEtag => get && request.header("range").is_some(),
            Lie::RepeatingListing | Lie::EndlessListing | Lie::EmptyListing | Lie::ForeignKeys => {
                get && request.start.contains("list-type=2")
            }
        }
    }
}

/// Answers `request` with `lie`. False when the connection must end.
pub(super) async fn tell(
    lie: Lie,
    client: &mut TcpStream,
    request: &Head,
    shared: &Shared,
) -> bool {
    if lie == Lie::EndlessListing {
        let page = query(request, "continuation-token")
            .and_then(|t| t.strip_prefix("page-")?.parse::<u64>().ok())
            .unwrap_or(0);
        let prefix = query(request, "prefix").unwrap_or_default();
        let keys: String = (0..1000)
            .map(|i| contents(&format!("{prefix}endless-{page:06}-{i:04}")))
            .collect();
        let body = listing(&prefix, &keys, Some(&format!("page-{}", page + 1)));
        return answer(client, "200 OK", XML, body.as_bytes()).await;
    }
    if let Some(page) = query(request, "continuation-token")
        .and_then(|t| t.strip_prefix("empty-")?.parse::<u64>().ok())
        .filter(|_| lie == Lie::EmptyListing)
    {
        let prefix = query(request, "prefix").unwrap_or_default();
        let body = listing(&prefix, "", Some(&format!("empty-{}", page + 1)));
        return answer(client, "200 OK", XML, body.as_bytes()).await;
    }
    if lie == Lie::RepeatingListing && query(request, "continuation-token").is_some() {
        // The request is signed: it cannot be changed and sent on. The page
        // after the first is made up: nothing, and the same continuation.
        let prefix = query(request, "prefix").unwrap_or_default();
        let body = listing(&prefix, "", Some(SAME_TOKEN));
        return answer(client, "200 OK", XML, body.as_bytes()).await;
    }
    // The other lies change what the server says.
    let Some((head, body)) = exchange(shared, request).await else {
        return false;
    };
    let mut headers: Vec<(String, String)> = head
        .headers
        .iter()
        .filter(|(n, _)| {
            !["content-length", "connection", "transfer-encoding"]
                .iter()
                .any(|drop| n.eq_ignore_ascii_case(drop))
        })
        .cloned()
        .collect();
    let mut status = head
        .start
        .split_once(' ')
        .map_or("200 OK", |(_, s)| s)
        .to_string();
    let mut body = body;
    match lie {
        Lie::LongBody => body.extend(std::iter::repeat_n(b'X', 1 << 20)),
        Lie::EndlessBody => {
            let head = encode(&status, &headers, None);
            if client.write_all(&head).await.is_err() || client.write_all(&body).await.is_err() {
                return false;
            }
            let endless = async {
                let chunk = vec![b'X'; 64 * 1024];
                while client.write_all(&chunk).await.is_ok() {}
            };
            let _ = tokio::time::timeout(Duration::from_secs(120), endless).await;
            return false;
        }
        Lie::DrippingBody => {
            headers.push(("Content-Length".into(), body.len().to_string()));
            let head = encode(&status, &headers, None);
            if client.write_all(&head).await.is_err() {
                return false;
            }
            let drip = async {
                for byte in &body {
                    tokio::time::sleep(Duration::from_millis(900)).await;
                    if client.write_all(&[*byte]).await.is_err() {
                        return;
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(120), drip).await;
            return false;
        }
        Lie::StallingBody => {
            headers.push(("Content-Length".into(), body.len().to_string()));
            let head = encode(&status, &headers, None);
            let start = &body[..body.len().min(100)];
            if client.write_all(&head).await.is_err() || client.write_all(start).await.is_err() {
                return false;
            }
            // Silent until the client gives up.
            let _ =
                tokio::time::timeout(Duration::from_secs(120), client.read(&mut [0u8; 1])).await;
            return false;
        }
        Lie::WholeObject => {
            status = "200 OK".into();
            headers.retain(|(n, _)| !n.eq_ignore_ascii_case("content-range"));
        }
        Lie::WrongRange => {
            for (name, value) in &mut headers {
                if name.eq_ignore_ascii_case("content-range") {
                    *value = later_range(value);
                }
            }
        }
        Lie::WrongEtag => {
            for (name, value) in &mut headers {
                if name.eq_ignore_ascii_case("etag") {
                    *value = "\"00000000000000000000000000000000\"".to_string();
                }
            }
        }
        Lie::RepeatingListing => body = truncated(&body, SAME_TOKEN).into_bytes(),
        Lie::EmptyListing => body = truncated(&body, "empty-1").into_bytes(),
        Lie::ForeignKeys => {
            let foreign: String = (0..3)
                .map(|i| contents(&format!("{FOREIGN}foreign-{i}")))
                .chain(std::iter::once(format!(
                    "<CommonPrefixes><Prefix>{FOREIGN}dir/</Prefix></CommonPrefixes>"
                )))
                .collect();
            body = String::from_utf8_lossy(&body)
                .replace(
                    "</ListBucketResult>",
                    &format!("{foreign}</ListBucketResult>"),
                )
                .into_bytes();
        }
        Lie::EndlessListing => {}
    }
    headers.push(("Content-Length".into(), body.len().to_string()));
    let head = encode(&status, &headers, Some("keep-alive"));
    client.write_all(&head).await.is_ok() && client.write_all(&body).await.is_ok()
}

/// Sends the request (signed: as it is) to the server and reads its whole
/// answer.
async fn exchange(shared: &Shared, request: &Head) -> Option<(Head, Vec<u8>)> {
    let mut server = TcpStream::connect(&shared.upstream).await.ok()?;
    server
        .write_all(&request.encode(Some("close")))
        .await
        .ok()?;
    let mut buf = Vec::new();
    let head = read_head(&mut server, &mut buf).await?;
    let mut rest = Vec::new();
    server.read_to_end(&mut rest).await.ok()?;
    buf.extend(rest);
    let len = head
        .header("content-length")
        .map_or(buf.len(), |_| head.content_length() as usize);
    buf.truncate(len);
    Some((head, buf))
}

async fn answer(
    client: &mut TcpStream,
    status: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> bool {
    let mut all: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    all.push(("Content-Length".into(), body.len().to_string()));
    let head = encode(status, &all, Some("keep-alive"));
    client.write_all(&head).await.is_ok() && client.write_all(body).await.is_ok()
}

fn encode(status: &str, headers: &[(String, String)], connection: Option<&str>) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    match connection {
        Some(connection) => out.push_str(&format!("Connection: {connection}\r\n")),
        None => out.push_str("Connection: close\r\n"),
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// A query parameter of the request, percent-decoded.
fn query(request: &Head, name: &str) -> Option<String> {
    let target = request.start.split(' ').nth(1)?;
    let (_, query) = target.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        (n == name).then(|| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// A listing's continuation token replaced by the one that never changes.
/// A listing page `body` as if more followed, at continuation `token`.
fn truncated(body: &[u8], token: &str) -> String {
    let text = String::from_utf8_lossy(body).replace(
        "<IsTruncated>false</IsTruncated>",
        "<IsTruncated>true</IsTruncated>",
    );
    let text = match text.find("<NextContinuationToken>") {
        Some(_) => text,
        None => text.replacen(
            "<IsTruncated>true</IsTruncated>",
            "<IsTruncated>true</IsTruncated><NextContinuationToken></NextContinuationToken>",
            1,
        ),
    };
    let (Some(start), Some(end)) = (
        text.find("<NextContinuationToken>"),
        text.find("</NextContinuationToken>"),
    ) else {
        return text;
    };
    let from = start + "<NextContinuationToken>".len();
    format!("{}{token}{}", &text[..from], &text[end..])
}

/// `bytes a-b/t` as `bytes (a+1)-(b+1)/t`.
fn later_range(value: &str) -> String {
    let shifted = value
        .strip_prefix("bytes ")
        .and_then(|rest| rest.split_once('/'))
        .and_then(|(span, total)| {
            let (a, b) = span.split_once('-')?;
            Some(format!(
                "bytes {}-{}/{total}",
                a.parse::<u64>().ok()? + 1,
                b.parse::<u64>().ok()? + 1
            ))
        });
    shifted.unwrap_or_else(|| value.to_string())
}

fn contents(key: &str) -> String {
    format!(
        "<Contents><Key>{key}</Key><LastModified>2024-01-01T00:00:00.000Z</LastModified>\
         <ETag>\"0123456789abcdef0123456789abcdef\"</ETag><Size>1</Size>\
         <StorageClass>STANDARD</StorageClass></Contents>"
    )
}

fn listing(prefix: &str, contents: &str, next: Option<&str>) -> String {
    let next = next
        .map(|t| format!("<NextContinuationToken>{t}</NextContinuationToken>"))
        .unwrap_or_default();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult \
         xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>vol</Name>\
         <Prefix>{prefix}</Prefix><KeyCount>1000</KeyCount><MaxKeys>1000</MaxKeys>\
         <Delimiter>/</Delimiter><IsTruncated>true</IsTruncated>{next}{contents}\
         </ListBucketResult>"
    )
}
