//! Parsers of option values (sizes, durations, modes, URLs and AWS names), for
//! the command line and the CSI driver alike: each refuses bad input with a
//! sentence that shows a good one.

use std::time::Duration;

use crate::auth::Secret;
use crate::names::Source;

/// A byte count with an optional binary unit: 8388608, 8MiB, 8M, 1GiB.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        _ => return Err(format!("{text:?} is not a size such as 8MiB or 1GiB")),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("{text:?} is not a size such as 8MiB or 1GiB"))
}

pub fn parse_part_size(text: &str) -> Result<u64, String> {
    let size = parse_size(text)?;
    if (5 << 20..=5 << 30).contains(&size) {
        Ok(size)
    } else {
        Err(format!("{text:?}: S3 parts are 5MiB to 5GiB"))
    }
}

pub fn parse_cache_size(text: &str) -> Result<u64, String> {
    let size = parse_size(text)?;
    if size >= crate::cache::BLOCK_SIZE {
        Ok(size)
    } else {
        Err(format!(
            "{text:?} cannot hold one 1MiB block; give at least 1MiB, or --no-cache to \
             turn the cache off"
        ))
    }
}

pub fn parse_staging_size(text: &str) -> Result<u64, String> {
    let size = parse_size(text)?;
    if size >= 1 << 20 {
        Ok(size)
    } else {
        Err(format!(
            "{text:?} leaves no room for files being written; give at least 1MiB"
        ))
    }
}

pub fn parse_max_memory(text: &str) -> Result<u64, String> {
    let size = parse_size(text)?;
    if size >= crate::memory::MIN_MAX_MEMORY {
        Ok(size)
    } else {
        Err(format!(
            "{text:?} is too little memory for a volume to read and write with; give at \
             least 32MiB"
        ))
    }
}

pub fn parse_source(text: &str) -> Result<Source, String> {
    text.parse()
        .map_err(|e: crate::names::SourceError| e.to_string())
}

/// A region name, which becomes part of AWS's host names: letters, digits, `-`
/// and `_` (S3-compatible servers name theirs freely, but never with a dot or
/// a slash that would change the host).
pub fn parse_region(text: &str) -> Result<String, String> {
    let ok = (1..=64).contains(&text.len())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(text.to_string())
    } else {
        Err(format!(
            "{text:?} is not a region name such as eu-west-1 (letters, digits, - and _)"
        ))
    }
}

pub fn parse_role_arn(text: &str) -> Result<String, String> {
    let parts: Vec<&str> = text.splitn(6, ':').collect();
    // IAM's rules: a partition such as aws or aws-cn, a 12-digit account, and a
    // role name (with its path) of letters, digits and +=,.@_-/.
    let ok = parts.len() == 6
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[1]
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'-')
        && parts[2] == "iam"
        && parts[3].is_empty()
        && parts[4].len() == 12
        && parts[4].bytes().all(|b| b.is_ascii_digit())
        && parts[5].strip_prefix("role/").is_some_and(|name| {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-/".contains(&b))
        });
    if ok {
        Ok(text.to_string())
    } else {
        Err(format!(
            "{text:?} is not an IAM role ARN such as arn:aws:iam::111122223333:role/NAME"
        ))
    }
}

pub fn parse_external_id(text: &str) -> Result<Secret, String> {
    crate::names::check_external_id(text)
        .map(|()| Secret::new(text))
        .map_err(|e| e.to_string())
}

pub fn parse_session_name(text: &str) -> Result<String, String> {
    let ok = (2..=64).contains(&text.len())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+=,.@-_".contains(c));
    if ok {
        Ok(text.to_string())
    } else {
        Err("a session name is 2-64 characters of letters, digits and +=,.@-_".into())
    }
}

pub fn parse_role_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_ttl(text)?;
    if (900..=43200).contains(&duration.as_secs()) {
        Ok(duration)
    } else {
        Err(format!(
            "{text:?}: STS role sessions last 900 s (15 min) to 43200 s (12 h)"
        ))
    }
}

/// A moment in the past: a time (RFC 3339, `2026-11-30T12:00:00Z`; without a
/// zone, UTC) or how long before now (`2d`, `90m`).
pub fn parse_version_at(text: &str) -> Result<std::time::SystemTime, String> {
    let now = std::time::SystemTime::now();
    let at = match humantime::parse_rfc3339_weak(text) {
        Ok(at) => at,
        Err(_) => {
            let before = humantime::parse_duration(text).map_err(|_| {
                format!(
                    "{text:?} is neither a time (RFC 3339, e.g. 2026-11-30T12:00:00Z) nor a \
                     duration before now (e.g. 2d, 90m)"
                )
            })?;
            now.checked_sub(before)
                .ok_or_else(|| format!("{text:?} reaches back before 1970"))?
        }
    };
    if at > now {
        return Err(format!(
            "{text:?} is in the future; a view shows the bucket as it was"
        ));
    }
    Ok(at)
}

pub fn parse_url_validity(text: &str) -> Result<Duration, String> {
    let duration = parse_ttl(text)?;
    if (1..=crate::store::MAX_URL_VALIDITY.as_secs()).contains(&duration.as_secs()) {
        Ok(duration)
    } else {
        Err(format!(
            "{text:?}: a presigned URL is valid from 1s to 7d (S3's limit)"
        ))
    }
}

pub fn parse_io_timeout(text: &str) -> Result<Duration, String> {
    let duration = parse_ttl(text)?;
    // Below a second, one slow answer would already fail the operation.
    if (1..=3600).contains(&duration.as_secs()) {
        Ok(duration)
    } else {
        Err(format!("{text:?}: the I/O timeout must be from 1s to 1h"))
    }
}

pub fn parse_url(text: &str) -> Result<String, String> {
    crate::names::endpoint_url(text).map_err(|e| e.to_string())
}

/// Whether requests to `url` would cross a network in clear: plain http to a
/// host other than this one's loopback (127.0.0.0/8, ::1, localhost). A name
/// other than localhost counts as remote: it may resolve anywhere.
pub fn in_clear_beyond_this_host(url: &str) -> bool {
    let url = url.trim();
    let plain = url
        .get(..7)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("http://"));
    // Schemes and host names are read without regard to case, as the SDK
    // reads them.
    let Ok(uri) = url.parse::<http::Uri>() else {
        // Not a URL s3vol can read: plain http is taken at its word.
        return plain;
    };
    if !uri
        .scheme_str()
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("http"))
    {
        return false;
    }
    let host = uri.host().unwrap_or_default();
    // [::1]
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.eq_ignore_ascii_case("localhost") {
        return false;
    }
    !host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

pub fn parse_mode(text: &str) -> Result<u16, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u16::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o7777 => Ok(mode),
        _ => Err(format!(
            "{text:?} is not an octal permission mode such as 0644 or 0755"
        )),
    }
}

/// The longest TTL the kernel accepts without overflow in its own arithmetic; used
/// for "indefinite".
pub const INDEFINITE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    if text == "indefinite" {
        return Ok(INDEFINITE);
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration ({e}); use e.g. 5s, 1m, 0 or indefinite"))
}

/// `--metrics-listen`: `PORT` (on 127.0.0.1), or `IP:PORT` (`[IPv6]:PORT`) to
/// listen elsewhere.
pub fn parse_metrics_listen(text: &str) -> Result<std::net::SocketAddr, String> {
    let addr = match text.parse::<u16>() {
        Ok(port) => std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Err(_) => text.parse().map_err(|_| {
            format!(
                "{text:?} is not a port or an IP address and port; give e.g. 9464 (on \
                 127.0.0.1), 127.0.0.1:9464, 0.0.0.0:9464 or [::1]:9464"
            )
        })?,
    };
    if addr.port() == 0 {
        return Err(format!(
            "{text:?} names no port; give the port Prometheus will scrape, e.g. 9464"
        ));
    }
    Ok(addr)
}

/// `unix:///PATH` (or a bare absolute path): the CSI plugin's socket.
pub fn parse_csi_endpoint(text: &str) -> Result<std::path::PathBuf, String> {
    let path = text.strip_prefix("unix://").unwrap_or(text);
    if !path.starts_with('/') || path.contains("://") {
        return Err(format!(
            "{text:?} is not a Unix socket endpoint; give unix:///PATH (e.g. \
             unix:///csi/csi.sock)"
        ));
    }
    Ok(path.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metrics_address_is_loopback_unless_named() {
        assert_eq!(
            parse_metrics_listen("9464").unwrap().to_string(),
            "127.0.0.1:9464"
        );
        assert_eq!(
            parse_metrics_listen("0.0.0.0:9100").unwrap().to_string(),
            "0.0.0.0:9100"
        );
        assert_eq!(
            parse_metrics_listen("[::1]:9100").unwrap().to_string(),
            "[::1]:9100"
        );
        for bad in ["0", "localhost:9100", "127.0.0.1:0", "99999", ""] {
            assert!(parse_metrics_listen(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn modes_and_ttls_parse_or_explain() {
        assert_eq!(parse_mode("0644"), Ok(0o644));
        assert_eq!(parse_mode("755"), Ok(0o755));
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("rw").is_err());
        assert!(parse_mode("17777").is_err());
        assert_eq!(parse_ttl("0"), Ok(Duration::ZERO));
        assert_eq!(parse_ttl("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_ttl("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_ttl("indefinite"), Ok(INDEFINITE));
        assert!(parse_ttl("soon").unwrap_err().contains("indefinite"));
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("8M"), Ok(8 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("8 parsecs").is_err());
        assert!(parse_size("99999999999G").is_err());
        assert_eq!(parse_part_size("16MiB"), Ok(16 << 20));
        assert!(
            parse_part_size("1MiB")
                .unwrap_err()
                .contains("5MiB to 5GiB")
        );
        assert_eq!(parse_max_memory("64MiB"), Ok(64 << 20));
        assert!(
            parse_max_memory("16MiB")
                .unwrap_err()
                .contains("at least 32MiB")
        );
    }

    #[test]
    fn role_options_parse_or_explain() {
        assert!(parse_role_arn("arn:aws:iam::111122223333:role/reader").is_ok());
        assert!(parse_role_arn("arn:aws:iam::111122223333:user/alice").is_err());
        assert!(parse_role_arn("reader").is_err());
        assert!(parse_role_arn("arn:aws-cn:iam::111122223333:role/path/to/r+w=1,x.y@z_").is_ok());
        for bad in [
            "arn:aws:iam::1111:role/r",
            "arn:aws:iam::111122223333:role/",
            "arn:aws:iam::111122223333:role/r\ncredential_process = id",
            "arn:aws:iam::111122223333:role/a b",
            "arn:aws:sts::111122223333:role/r",
        ] {
            assert!(parse_role_arn(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_region("eu-west-1").as_deref(), Ok("eu-west-1"));
        assert_eq!(parse_region("garage").as_deref(), Ok("garage"));
        for bad in ["", "eu.west", "x/y", "a\nb", &"r".repeat(65)] {
            assert!(parse_region(bad).is_err(), "{bad:?}");
        }
        assert!(parse_external_id("ext-123").is_ok());
        assert!(parse_external_id("with space").is_err());
        assert_eq!(parse_role_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_role_duration("60").unwrap_err().contains("900 s"));
        assert!(parse_role_duration("13h").is_err());
        assert!(parse_session_name("s3vol-host.example").is_ok());
        assert!(parse_session_name("x").is_err());
    }

    #[test]
    fn urls_need_a_scheme_and_host() {
        assert_eq!(
            parse_url("http://127.0.0.1:9000/").unwrap(),
            "http://127.0.0.1:9000"
        );
        assert!(parse_url("127.0.0.1:9000").is_err());
        assert!(parse_url("http://").is_err());
    }

    #[test]
    fn plain_http_counts_as_in_clear_unless_it_stays_on_this_host() {
        for url in [
            "http://10.0.0.5:9000",
            "http://s3.internal",
            "http://192.0.2.1",
            "http://user@minio:9000/x",
            "http://[2001:db8::1]:9000",
            // A scheme in capitals is plain http all the same.
            "HTTP://10.0.0.5:9000",
            "Http://s3.example.com",
            " http://10.0.0.5",
            "http://user@10.0.0.5",
        ] {
            assert!(in_clear_beyond_this_host(url), "{url}");
        }
        for url in [
            "https://10.0.0.5:9000",
            "http://127.0.0.1:3900",
            "http://127.9.9.9",
            "http://localhost:9000",
            "http://LOCALHOST",
            "http://[::1]:9000",
            "HTTP://127.0.0.1:3900",
            "https://s3.amazonaws.com",
            "HTTPS://s3.amazonaws.com",
        ] {
            assert!(!in_clear_beyond_this_host(url), "{url}");
        }
    }

    #[test]
    fn a_csi_endpoint_is_a_unix_socket_path() {
        assert_eq!(
            parse_csi_endpoint("unix:///csi/csi.sock").unwrap(),
            std::path::PathBuf::from("/csi/csi.sock")
        );
        assert_eq!(
            parse_csi_endpoint("/csi/csi.sock").unwrap(),
            std::path::PathBuf::from("/csi/csi.sock")
        );
        for bad in ["tcp://127.0.0.1:10000", "unix://csi.sock", "csi.sock", ""] {
            let err = parse_csi_endpoint(bad).unwrap_err();
            assert!(err.contains("unix:///PATH"), "{bad}: {err}");
        }
    }
}
