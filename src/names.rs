//! Validated names at the edge: the volume source (`BUCKET[/PREFIX]`), the key prefix
//! that is the volume root, file names that can appear in a directory, and the IAM
//! principals and external IDs that trust policies name.

use std::fmt;
use std::str::FromStr;

/// The longest file name Linux accepts (NAME_MAX).
pub const NAME_MAX: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("the source is empty; give BUCKET or BUCKET/PREFIX (s3://BUCKET/PREFIX/ also works)")]
    Empty,
    #[error(
        "{0:?} is not a valid bucket name: use 3-63 characters of lower-case letters, digits, '.' and '-', starting and ending with a letter or digit"
    )]
    BadBucket(String),
    #[error(
        "prefix {0:?} is not usable as a volume root: it must not contain empty segments ('//'), '.' or '..' segments, or NUL"
    )]
    BadPrefix(String),
}

/// A key prefix naming a directory: empty (the whole bucket) or `a/b/` with a
/// trailing slash and no empty, `.` or `..` segments.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Prefix(String);

impl Prefix {
    pub fn root() -> Self {
        Self(String::new())
    }

    /// Parses a prefix given with or without its trailing slash.
    pub fn parse(text: &str) -> Result<Self, SourceError> {
        let trimmed = text.strip_suffix('/').unwrap_or(text);
        if text.is_empty() {
            return Ok(Self::root());
        }
        let bad = trimmed
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == ".." || seg.contains('\0'));
        if bad {
            return Err(SourceError::BadPrefix(text.to_string()));
        }
        Ok(Self(format!("{trimmed}/")))
    }

    /// The prefix as keys under it start, e.g. `data/2024/` (or empty).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a volume attaches: a bucket and a prefix inside it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Source {
    pub bucket: String,
    pub prefix: Prefix,
}

impl FromStr for Source {
    type Err = SourceError;

    /// Accepts `BUCKET`, `BUCKET/PREFIX`, `BUCKET/PREFIX/` and the same behind `s3://`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let rest = text.strip_prefix("s3://").unwrap_or(text);
        if rest.is_empty() {
            return Err(SourceError::Empty);
        }
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if !valid_bucket(bucket) {
            return Err(SourceError::BadBucket(bucket.to_string()));
        }
        Ok(Self {
            bucket: bucket.to_string(),
            prefix: Prefix::parse(prefix)?,
        })
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_root() {
            f.write_str(&self.bucket)
        } else {
            write!(
                f,
                "{}/{}",
                self.bucket,
                self.prefix.as_str().trim_end_matches('/')
            )
        }
    }
}

/// S3's bucket naming rules (the general-purpose ones; underscores and capitals are
/// refused too, since only legacy us-east-1 buckets have them).
fn valid_bucket(name: &str) -> bool {
    let bytes = name.as_bytes();
    (3..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'.' || *b == b'-')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && !name.contains("..")
}

/// Why a key segment cannot be shown as a file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameProblem {
    Empty,
    Dot,
    TooLong,
    Nul,
    Slash,
}

impl fmt::Display for NameProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameProblem::Empty => "empty path segment (from '//' in the key)",
            NameProblem::Dot => "'.' or '..' segment",
            NameProblem::TooLong => "longer than 255 bytes",
            NameProblem::Nul => "contains NUL",
            NameProblem::Slash => "contains '/'",
        })
    }
}

/// Checks that `name` can be a directory entry on Linux.
pub fn check_name(name: &str) -> Result<(), NameProblem> {
    if name.is_empty() {
        Err(NameProblem::Empty)
    } else if name == "." || name == ".." {
        Err(NameProblem::Dot)
    } else if name.len() > NAME_MAX {
        Err(NameProblem::TooLong)
    } else if name.contains('\0') {
        Err(NameProblem::Nul)
    } else if name.contains('/') {
        Err(NameProblem::Slash)
    } else {
        Ok(())
    }
}

/// An IAM principal or external ID that AWS would not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "{0:?} is not an IAM principal ARN; give the ARN of the role or user that will run s3vol, \
         e.g. arn:aws:iam::111122223333:role/platform"
    )]
    BadPrincipal(String),
    #[error(
        "the external ID must be 2 to 1224 characters of letters, digits and +=,.@:/-_ (AWS's rule)"
    )]
    BadExternalId,
}

/// Checks a principal ARN: `arn:PARTITION:iam::ACCOUNT:(root|role/..|user/..)`.
pub fn check_principal(arn: &str) -> Result<(), PolicyError> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let ok = parts.len() == 6
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == "iam"
        && parts[3].is_empty()
        && parts[4].len() == 12
        && parts[4].bytes().all(|b| b.is_ascii_digit())
        && (parts[5] == "root" || parts[5].starts_with("role/") || parts[5].starts_with("user/"));
    if ok {
        Ok(())
    } else {
        Err(PolicyError::BadPrincipal(arn.to_string()))
    }
}

/// Checks an external ID against AWS's rule for sts:AssumeRole.
pub fn check_external_id(id: &str) -> Result<(), PolicyError> {
    let ok = (2..=1224).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@:/-_".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(PolicyError::BadExternalId)
    }
}

/// Why an endpoint URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("{0:?} is not a URL such as https://s3.example.com or http://127.0.0.1:3900")]
    NotUrl(String),
    #[error("{0:?} must start with http:// or https://")]
    Scheme(String),
    #[error("{0:?} has no host")]
    NoHost(String),
    #[error("{0:?} names a user (user@host); give the host alone, credentials never go in a URL")]
    UserInfo(String),
    #[error("{0:?} has a query or fragment; give the endpoint alone")]
    Query(String),
}

/// An S3 or STS endpoint URL in one canonical form, so that two spellings of
/// the same endpoint compare equal: `scheme://host[:port][/path]`, scheme and
/// host in lower case, the scheme's own port and a trailing `/` left out.
/// Refused: other schemes, no host, a user part, a query or fragment, and
/// anything a URL cannot hold (spaces, control characters).
pub fn endpoint_url(text: &str) -> Result<String, EndpointError> {
    let uri: http::Uri = text
        .parse()
        .map_err(|_| EndpointError::NotUrl(text.to_string()))?;
    let scheme = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
        Some("http") => "http",
        Some("https") => "https",
        _ => return Err(EndpointError::Scheme(text.to_string())),
    };
    let Some(authority) = uri.authority() else {
        return Err(EndpointError::NoHost(text.to_string()));
    };
    if authority.as_str().contains('@') {
        return Err(EndpointError::UserInfo(text.to_string()));
    }
    if uri.query().is_some() || text.contains('#') {
        return Err(EndpointError::Query(text.to_string()));
    }
    let host = authority.host().to_ascii_lowercase();
    if host.is_empty() {
        return Err(EndpointError::NoHost(text.to_string()));
    }
    let default_port = if scheme == "https" { 443 } else { 80 };
    // What follows the host is a port number, or nothing: an empty port or one
    // that is no port number (`:99999`) is refused rather than read as the
    // scheme's own.
    let port = match authority.as_str()[authority.host().len()..].strip_prefix(':') {
        None => None,
        Some(digits) => match digits.parse::<u16>() {
            Ok(port) => Some(port),
            Err(_) => return Err(EndpointError::NotUrl(text.to_string())),
        },
    };
    let port = match port {
        Some(port) if port != default_port => format!(":{port}"),
        _ => String::new(),
    };
    let path = uri.path().trim_end_matches('/');
    Ok(format!("{scheme}://{host}{port}{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_or_explain() {
        let good = [
            ("bkt", "bkt", ""),
            ("bkt/", "bkt", ""),
            ("bkt/root", "bkt", "root/"),
            ("bkt/root/", "bkt", "root/"),
            ("bkt/a/b/c", "bkt", "a/b/c/"),
            ("s3://bkt/a/b/", "bkt", "a/b/"),
            ("s3://bkt", "bkt", ""),
            ("my.bucket-1", "my.bucket-1", ""),
        ];
        for (text, bucket, prefix) in good {
            let source: Source = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(source.bucket, bucket, "{text}");
            assert_eq!(source.prefix.as_str(), prefix, "{text}");
        }
        let bad = [
            ("", SourceError::Empty),
            ("s3://", SourceError::Empty),
            ("ab", SourceError::BadBucket("ab".into())),
            ("Bucket", SourceError::BadBucket("Bucket".into())),
            ("bkt_x", SourceError::BadBucket("bkt_x".into())),
            ("-bkt", SourceError::BadBucket("-bkt".into())),
            ("bkt/a//b", SourceError::BadPrefix("a//b".into())),
            ("bkt/a/../b", SourceError::BadPrefix("a/../b".into())),
            ("bkt/./b", SourceError::BadPrefix("./b".into())),
            ("bkt//", SourceError::BadPrefix("/".into())),
        ];
        for (text, want) in bad {
            assert_eq!(text.parse::<Source>(), Err(want), "{text}");
        }
    }

    #[test]
    fn source_displays_without_trailing_slash() {
        let source: Source = "s3://bkt/a/b/".parse().unwrap();
        assert_eq!(source.to_string(), "bkt/a/b");
        let source: Source = "bkt".parse().unwrap();
        assert_eq!(source.to_string(), "bkt");
    }

    #[test]
    fn names_follow_linux_rules() {
        assert_eq!(check_name("a.txt"), Ok(()));
        assert_eq!(check_name(&"x".repeat(255)), Ok(()));
        assert_eq!(check_name(""), Err(NameProblem::Empty));
        assert_eq!(check_name("."), Err(NameProblem::Dot));
        assert_eq!(check_name(".."), Err(NameProblem::Dot));
        assert_eq!(check_name(&"x".repeat(256)), Err(NameProblem::TooLong));
        assert_eq!(check_name("a\0b"), Err(NameProblem::Nul));
        assert_eq!(check_name("a/b"), Err(NameProblem::Slash));
    }

    #[test]
    fn principals_and_external_ids_are_checked() {
        for good in [
            "arn:aws:iam::111122223333:root",
            "arn:aws:iam::111122223333:role/platform",
            "arn:aws-cn:iam::111122223333:user/ops/alice",
        ] {
            assert_eq!(check_principal(good), Ok(()), "{good}");
        }
        for bad in [
            "111122223333",
            "arn:aws:s3:::bucket",
            "arn:aws:iam::1234:role/x",
            "arn:aws:iam::111122223333:group/x",
        ] {
            assert!(check_principal(bad).is_err(), "{bad}");
        }
        assert_eq!(check_external_id("ext-123_a.b@c"), Ok(()));
        assert!(check_external_id("x").is_err());
        assert!(check_external_id("has space").is_err());
        assert!(check_external_id(&"a".repeat(1225)).is_err());
    }

    #[test]
    fn endpoints_have_one_spelling_and_nothing_else() {
        let same = [
            ("https://s3.example.com", "https://s3.example.com"),
            ("HTTPS://S3.Example.com:443/", "https://s3.example.com"),
            ("http://127.0.0.1:3900/", "http://127.0.0.1:3900"),
            ("http://127.0.0.1:80", "http://127.0.0.1"),
            ("https://[::1]:9000/s3/", "https://[::1]:9000/s3"),
        ];
        for (text, canonical) in same {
            assert_eq!(endpoint_url(text).as_deref(), Ok(canonical), "{text}");
        }
        // Each with the refusals that may name it (the URL parser takes some
        // of them for no URL at all).
        let refused: [(&str, &[&str]); 11] = [
            ("https://s3.example.com:99999", &["NotUrl"]),
            ("https://s3.example.com:", &["NotUrl"]),
            ("http://s3.example.com:8o", &["NotUrl"]),
            ("s3.example.com", &["NotUrl", "Scheme"]),
            ("ftp://s3.example.com", &["Scheme"]),
            ("https://", &["NotUrl", "NoHost"]),
            ("https://evil@127.0.0.1", &["UserInfo"]),
            ("https://s3.example.com/?x=1", &["Query"]),
            ("https://s3.example.com/#x", &["Query", "NotUrl"]),
            ("https://s3.example.com\ncredential_process=x", &["NotUrl"]),
            ("https://s3 .example.com", &["NotUrl"]),
        ];
        for (text, expected) in refused {
            let error = format!("{:?}", endpoint_url(text).unwrap_err());
            assert!(
                expected.iter().any(|e| error.starts_with(&format!("{e}("))),
                "{text:?}: {error}"
            );
        }
    }
}
