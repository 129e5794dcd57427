//! The ID of a volume the controller provisioned: all DeleteVolume will have
//! to find the volume again, since Kubernetes gives it nothing else (no
//! StorageClass parameters, only the ID and the provisioner Secret), in at
//! most the 128 bytes CSI allows an ID.
//!
//! `s3vol1:REGION:S3:STS:FLAGS:NAME:BUCKET/PREFIX`: REGION is the
//! StorageClass's `region` (`-`: the controller's default); S3 and STS name the
//! endpoints by the first 8 hex digits of the SHA-256 of their canonical URL
//! (`-`: AWS's own), found again among the operator's `--allow-endpoint` list,
//! which must still allow them; FLAGS is `p` for path-style addressing or `v`
//! for virtual-hosted, then `d` when deleting the volume deletes every version
//! or `k` when it keeps them; NAME is the first 12 hex digits of the SHA-256 of
//! the CreateVolume name, so that a volume made again at the same prefix for
//! another PersistentVolume has another ID (a late DeleteVolume of the old one
//! must not find the new one); PREFIX is the volume's prefix in the bucket.
//! Nothing in the bucket decides what a deletion does: only the ID, which
//! nobody who writes to the bucket can change.

use sha2::Digest;

use super::credentials::Invalid;
use crate::names::{Prefix, Source};

/// The start of every ID this driver makes (the format's version).
const FORMAT: &str = "s3vol1";

/// The longest ID CSI lets a plugin make.
pub const MAX_VOLUME_ID: usize = 128;

/// Where a provisioned volume is: everything a store for it needs but the
/// credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub region: Option<String>,
    /// Canonical (see [`crate::names::endpoint_url`]); `None`: AWS's own.
    pub endpoint: Option<String>,
    pub sts_endpoint: Option<String>,
    pub path_style: bool,
    /// The bucket, and the volume's prefix in it (never the whole bucket).
    pub source: Source,
    /// Deleting the volume deletes every version under it.
    pub delete_versions: bool,
    /// Which CreateVolume made it: the tag of its name ([`name_tag`]).
    pub name_tag: String,
}

/// The tag a volume ID carries of the CreateVolume name.
pub fn name_tag(name: &str) -> String {
    hex::encode(&sha2::Sha256::digest(name.as_bytes())[..6])
}

/// Why an ID of this driver's format cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub enum Unusable {
    /// Not well formed: no volume of this driver has it.
    Malformed(String),
    /// It names an endpoint the operator no longer allows.
    Endpoint(String),
}

impl Location {
    /// The volume's ID.
    pub fn volume_id(&self) -> String {
        let tag = |url: &Option<String>| url.as_deref().map_or("-".into(), endpoint_tag);
        format!(
            "{FORMAT}:{}:{}:{}:{}{}:{}:{}/{}",
            self.region.as_deref().unwrap_or("-"),
            tag(&self.endpoint),
            tag(&self.sts_endpoint),
            if self.path_style { "p" } else { "v" },
            if self.delete_versions { "d" } else { "k" },
            self.name_tag,
            self.source.bucket,
            self.source.prefix.as_str().trim_end_matches('/'),
        )
    }

    /// The location `id` names, its endpoints found among `endpoints` (the
    /// operator's, canonical); `Ok(None)` for an ID this driver does not make
    /// (a volume written by hand, or another driver's).
    pub fn parse(id: &str, endpoints: &[String]) -> Result<Option<Location>, Unusable> {
        let Some(rest) = id.strip_prefix(FORMAT).and_then(|r| r.strip_prefix(':')) else {
            return Ok(None);
        };
        let malformed = |why: &str| Unusable::Malformed(format!("volume_id {id:?} {why}"));
        let fields: Vec<&str> = rest.splitn(6, ':').collect();
        let [region, s3, sts, flags, name_tag, path] = fields[..] else {
            return Err(malformed("has too few fields"));
        };
        let region = match region {
            "-" => None,
            region => Some(
                crate::values::parse_region(region).map_err(|_| malformed("names no region"))?,
            ),
        };
        let find = |tag: &str, which: &str| -> Result<Option<String>, Unusable> {
            if tag == "-" {
                return Ok(None);
            }
            endpoints
                .iter()
                .find(|url| endpoint_tag(url) == tag)
                .cloned()
                .map(Some)
                .ok_or_else(|| {
                    Unusable::Endpoint(format!(
                        "volume_id {id:?} was made for an {which} endpoint (tag {tag}) that \
                         this controller is not given with --allow-endpoint: list that \
                         endpoint again to reach the volume"
                    ))
                })
        };
        let (path_style, delete_versions) = match flags {
            "pk" => (true, false),
            "pd" => (true, true),
            "vk" => (false, false),
            "vd" => (false, true),
            _ => return Err(malformed("has no flags")),
        };
        let hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
        if name_tag.len() != 12 || !name_tag.chars().all(hex) {
            return Err(malformed("names no CreateVolume"));
        }
        let (bucket, prefix) = path
            .split_once('/')
            .ok_or_else(|| malformed("names no prefix"))?;
        let source: Source = format!("{bucket}/{prefix}")
            .parse()
            .map_err(|_| malformed("names no usable bucket and prefix"))?;
        if source.prefix.is_root() || Prefix::parse(prefix).is_err() {
            return Err(malformed("names no usable prefix"));
        }
        Ok(Some(Location {
            region,
            endpoint: find(s3, "S3")?,
            sts_endpoint: find(sts, "STS")?,
            path_style,
            source,
            delete_versions,
            name_tag: name_tag.to_string(),
        }))
    }

    /// The key of the volume's marker: its root's directory marker.
    pub fn marker_key(&self) -> &str {
        self.source.prefix.as_str()
    }
}

/// How an ID names an endpoint.
fn endpoint_tag(url: &str) -> String {
    hex::encode(&sha2::Sha256::digest(url.as_bytes())[..4])
}

/// Whether `id` is in the format of the IDs the controller makes.
pub fn is_provisioned(id: &str) -> bool {
    id.strip_prefix(FORMAT).is_some_and(|r| r.starts_with(':'))
}

/// Refuses an ID over [`MAX_VOLUME_ID`] bytes, naming `what` makes it long.
pub fn fits(id: &str, what: &str) -> Result<(), Invalid> {
    if id.len() > MAX_VOLUME_ID {
        return Err(Invalid(format!(
            "the volume's ID {id:?} would be {} bytes, more than the {MAX_VOLUME_ID} CSI \
             allows: {what}",
            id.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(endpoint: Option<&str>) -> Location {
        Location {
            region: Some("eu-west-1".into()),
            endpoint: endpoint.map(str::to_string),
            sts_endpoint: None,
            path_style: true,
            source: "tenant-bucket/volumes/team-a/data".parse().unwrap(),
            delete_versions: false,
            name_tag: name_tag("pvc-1"),
        }
    }

    #[test]
    fn an_id_names_its_location_and_its_endpoints_by_tag() {
        let url = "https://minio.storage.svc:9000".to_string();
        let at = location(Some(&url));
        let id = at.volume_id();
        assert!(id.starts_with("s3vol1:eu-west-1:"), "{id}");
        let tail = format!(
            ":-:pk:{}:tenant-bucket/volumes/team-a/data",
            name_tag("pvc-1")
        );
        assert!(id.ends_with(&tail), "{id}");
        assert!(!id.contains("minio"), "{id}");
        let other = "http://127.0.0.1:9000".to_string();
        assert_eq!(
            Location::parse(&id, &[other.clone(), url.clone()]),
            Ok(Some(at.clone()))
        );
        assert_eq!(at.marker_key(), "volumes/team-a/data/");
        // Made again for another PersistentVolume, or deleting versions: another ID.
        let again = Location {
            name_tag: name_tag("pvc-2"),
            ..at.clone()
        };
        assert_ne!(again.volume_id(), id);
        let versions = Location {
            delete_versions: true,
            ..at.clone()
        };
        assert_ne!(versions.volume_id(), id);
        assert_eq!(
            Location::parse(&versions.volume_id(), std::slice::from_ref(&url)),
            Ok(Some(versions))
        );
        // AWS's own endpoints need no list.
        let aws = location(None);
        assert_eq!(Location::parse(&aws.volume_id(), &[]), Ok(Some(aws)));
        // An endpoint no longer allowed is named as such.
        let Err(Unusable::Endpoint(why)) = Location::parse(&id, &[other]) else {
            panic!()
        };
        assert!(why.contains("--allow-endpoint"), "{why}");
    }

    #[test]
    fn ids_of_other_drivers_are_not_ours_and_bad_ones_are_refused() {
        for id in ["customer-a", "pvc-1234", "s3vol2:x", "s3vol1"] {
            assert_eq!(Location::parse(id, &[]), Ok(None), "{id}");
        }
        let tag = name_tag("pvc-1");
        let good = format!("s3vol1:-:-:-:pk:{tag}:bucket/x");
        assert!(matches!(Location::parse(&good, &[]), Ok(Some(_))));
        for id in [
            "s3vol1:".to_string(),
            "s3vol1:eu-west-1:-:-:pk".to_string(),
            format!("s3vol1:eu/west:-:-:pk:{tag}:b/x"),
            format!("s3vol1:-:-:-:qk:{tag}:bucket/x"),
            format!("s3vol1:-:-:-:p:{tag}:bucket/x"),
            "s3vol1:-:-:-:pk:abc:bucket/x".to_string(),
            "s3vol1:-:-:-:pk:ABCDEF012345:bucket/x".to_string(),
            format!("s3vol1:-:-:-:pk:{tag}:bucket"),
            format!("s3vol1:-:-:-:pk:{tag}:bucket/"),
            format!("s3vol1:-:-:-:pk:{tag}:Bucket/x"),
            format!("s3vol1:-:-:-:pk:{tag}:bucket/a/../b"),
            format!("s3vol1:-:-:-:pk:{tag}:bucket/a//b"),
        ] {
            assert!(
                matches!(Location::parse(&id, &[]), Err(Unusable::Malformed(_))),
                "{id}"
            );
        }
        assert!(fits(&"x".repeat(128), "").is_ok());
        assert!(
            fits(&"x".repeat(129), "shorten it")
                .unwrap_err()
                .0
                .contains("shorten it")
        );
    }
}
