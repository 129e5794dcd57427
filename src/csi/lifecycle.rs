//! A provisioned volume's life in its bucket: made, and found again.
//!
//! A volume is a prefix with a marker: the directory marker of its root (the
//! key `PREFIX/`, empty, which a mount shows as the root itself), carrying
//! metadata that names this driver, the volume and its ID. Only a prefix whose
//! marker names the very volume ID a DeleteVolume gives is ever deleted
//! (`purge`), and the marker goes last, so a deletion cut short is found and
//! finished by the next. A prefix that holds anything, or lies inside another
//! volume, is never made a volume: its data would be deleted with it.

use tracing::{info, warn};

use super::service::DRIVER_NAME;
use super::volume_id::Location;
use crate::store::{ListRequest, ObjectHeaders, ObjectStore, StoreError, StoreResult, Versioning};

/// The marker's user metadata (`x-amz-meta-…`), in S3's lower case.
const DRIVER: &str = "s3vol-csi-driver";
const VOLUME: &str = "s3vol-csi-volume";
const VOLUME_ID: &str = "s3vol-csi-volume-id";

/// What the volume's marker says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Marker {
    /// No marker: no volume (or one deleted).
    Absent,
    /// A directory marker that is not this driver's.
    Foreign,
    /// A volume of this driver.
    Volume(Volume),
}

/// A volume, as its marker describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    /// The CreateVolume name it was made for.
    pub name: String,
    pub volume_id: String,
}

/// Why a volume cannot be made. The messages go to the claim's events, which
/// its namespace reads: they name no other claim's volume or object (the log
/// does).
#[derive(Debug, thiserror::Error)]
pub enum MakeError {
    #[error(
        "the prefix {prefix} is already another claim's volume; a claim whose name makes \
         the same prefix cannot have it too (that volume may be on its way out, or kept by \
         the reclaim policy Retain): give the claim another name, or the StorageClass a \
         volume_name rule with ${{pv.name}}"
    )]
    Taken { prefix: String },
    #[error(
        "the prefix {prefix} is this volume already, made with other StorageClass settings; \
         a volume's settings cannot change: delete the claim, or give the StorageClass its \
         settings back"
    )]
    Changed { prefix: String },
    #[error(
        "the prefix {prefix} {what}; a volume is never made of existing data, which deleting \
         the volume would delete: mount existing data with a static PersistentVolume, or \
         choose another prefix or volume_name rule"
    )]
    NotEmpty { prefix: String, what: &'static str },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the marker at `key` says.
async fn marker_at(store: &dyn ObjectStore, key: &str) -> StoreResult<Marker> {
    let info = match store.head_object(key).await {
        Ok(info) => info,
        Err(StoreError::NotFound { .. }) => return Ok(Marker::Absent),
        Err(e) => return Err(e),
    };
    let user = info.headers.map(|h| h.user).unwrap_or_default();
    if user.get(DRIVER).map(String::as_str) != Some(DRIVER_NAME) {
        return Ok(Marker::Foreign);
    }
    Ok(Marker::Volume(Volume {
        name: user.get(VOLUME).cloned().unwrap_or_default(),
        volume_id: user.get(VOLUME_ID).cloned().unwrap_or_default(),
    }))
}

/// What the marker at `location` says.
pub async fn marker(store: &dyn ObjectStore, location: &Location) -> StoreResult<Marker> {
    marker_at(store, location.marker_key()).await
}

/// The first object under the volume's prefix (its marker aside), if any.
pub async fn first_object(
    store: &dyn ObjectStore,
    location: &Location,
) -> StoreResult<Option<String>> {
    let prefix = location.marker_key();
    let listing = ListRequest {
        prefix,
        max_keys: Some(2),
        ..ListRequest::default()
    };
    let page = store.list_objects(listing).await?;
    Ok(page
        .objects
        .into_iter()
        .map(|o| o.key)
        .find(|k| k != prefix))
}

/// Makes `volume` at `location`, or finds it made by an earlier call for the
/// same name and settings; refuses a prefix that is another volume, lies in
/// one, or holds anything.
pub async fn make(
    store: &dyn ObjectStore,
    location: &Location,
    volume: &Volume,
) -> Result<(), MakeError> {
    let prefix = location.marker_key().to_string();
    match marker(store, location).await? {
        Marker::Volume(found) => return same(&prefix, &found, volume),
        Marker::Foreign => {
            return Err(MakeError::NotEmpty {
                prefix,
                what: "has a directory marker",
            });
        }
        Marker::Absent => {}
    }
    // A volume inside another would be deleted with it. (Where the
    // credentials may not read a parent, as a policy scoped to the prefix
    // allows, that parent is not theirs to have made a volume of.)
    let mut end = 0;
    while let Some(slash) = prefix[end..prefix.len() - 1].find('/') {
        end += slash + 1;
        let parent = match marker_at(store, &prefix[..end]).await {
            Err(StoreError::AccessDenied { .. }) => continue,
            parent => parent?,
        };
        if let Marker::Volume(outer) = parent {
            warn!(
                prefix,
                outer = outer.volume_id,
                "refused: inside another volume"
            );
            return Err(MakeError::NotEmpty {
                prefix,
                what: "lies inside another volume",
            });
        }
    }
    if let Some(key) = first_object(store, location).await? {
        info!(prefix, key, "refused: the prefix holds data");
        return Err(MakeError::NotEmpty {
            prefix,
            what: "holds objects",
        });
    }
    // Versions kept of what was there before are data too, when deleting the
    // volume will delete every version.
    if location.delete_versions
        && store.bucket_versioning().await? != Versioning::Never
        && super::purge::holds_versions(store, &prefix).await?
    {
        info!(prefix, "refused: the prefix holds versions");
        return Err(MakeError::NotEmpty {
            prefix,
            what: "holds versions of objects deleted before",
        });
    }
    let mut headers = ObjectHeaders::default();
    for (key, value) in [
        (DRIVER, DRIVER_NAME),
        (VOLUME, &volume.name),
        (VOLUME_ID, &volume.volume_id),
    ] {
        headers.user.insert(key.into(), value.to_string());
    }
    // Only where no marker is: of two claims racing for one prefix, one makes
    // it (on servers that keep If-None-Match; on others, the marker that
    // stayed decides below).
    match store
        .put_new_object(&prefix, bytes::Bytes::new(), &headers)
        .await
    {
        Ok(_) | Err(StoreError::Changed { .. }) => {}
        // A server that does not take the condition: a plain write.
        Err(e) if e.refuses_condition() => {
            store
                .put_object(&prefix, bytes::Bytes::new(), &headers)
                .await?;
        }
        Err(e) => return Err(e.into()),
    }
    match marker(store, location).await? {
        Marker::Volume(found) => same(&prefix, &found, volume),
        _ => Err(MakeError::NotEmpty {
            prefix,
            what: "has a marker that changed as it was made",
        }),
    }
}

/// Whether the volume `found` at `prefix` is `volume`.
fn same(prefix: &str, found: &Volume, volume: &Volume) -> Result<(), MakeError> {
    let prefix = prefix.to_string();
    if found == volume {
        Ok(())
    } else if found.name == volume.name {
        info!(
            prefix,
            found = found.volume_id,
            "refused: made with other settings"
        );
        Err(MakeError::Changed { prefix })
    } else {
        info!(
            prefix,
            other = found.name,
            "refused: another claim's volume"
        );
        Err(MakeError::Taken { prefix })
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    pub(in crate::csi) fn location(prefix: &str) -> Location {
        Location {
            region: None,
            endpoint: None,
            sts_endpoint: None,
            path_style: true,
            source: format!("bkt/{prefix}").parse().unwrap(),
            delete_versions: false,
            name_tag: "000000000000".into(),
        }
    }

    pub(in crate::csi) fn volume(name: &str) -> Volume {
        Volume {
            name: name.into(),
            volume_id: format!("id-of-{name}"),
        }
    }

    #[tokio::test]
    async fn a_volume_is_made_once_by_name_and_never_of_a_prefix_in_use() {
        let store = MemoryStore::new("bkt");
        let at = location("vols/a");
        make(&store, &at, &volume("pvc-a")).await.unwrap();
        let headers = store.headers("vols/a/").unwrap();
        assert_eq!(headers.user[DRIVER], DRIVER_NAME);
        assert_eq!(headers.user[VOLUME], "pvc-a");
        assert_eq!(store.get("vols/a/").unwrap().len(), 0);
        assert_eq!(
            marker(&store, &at).await.unwrap(),
            Marker::Volume(volume("pvc-a"))
        );
        assert_eq!(first_object(&store, &at).await.unwrap(), None);
        // Again for the same name: the same volume.
        make(&store, &at, &volume("pvc-a")).await.unwrap();
        // The same name with other settings (another ID) is not the same volume.
        let mut changed = volume("pvc-a");
        changed.volume_id = "id-with-other-settings".into();
        let err = make(&store, &at, &changed).await.unwrap_err();
        assert!(matches!(err, MakeError::Changed { .. }), "{err}");
        // Another name for the prefix is refused, without naming the volume.
        let taken = make(&store, &at, &volume("pvc-b")).await.unwrap_err();
        assert!(matches!(taken, MakeError::Taken { .. }), "{taken}");
        assert!(!taken.to_string().contains("pvc-a"), "{taken}");
        // A prefix with data, or a marker of someone else's, is never made a volume.
        store.put("vols/data/report.csv", "1,2");
        let busy = make(&store, &location("vols/data"), &volume("pvc-c"))
            .await
            .unwrap_err();
        assert!(matches!(busy, MakeError::NotEmpty { .. }), "{busy}");
        assert!(!busy.to_string().contains("report.csv"), "{busy}");
        store.put("vols/console/", "");
        let foreign = make(&store, &location("vols/console"), &volume("pvc-d"))
            .await
            .unwrap_err();
        assert!(matches!(foreign, MakeError::NotEmpty { .. }), "{foreign}");
        assert_eq!(
            marker(&store, &location("vols/console")).await.unwrap(),
            Marker::Foreign
        );
        assert!(store.headers("vols/data/").is_none());
        // Nor inside another volume, which would delete it with its own.
        let inner = make(&store, &location("vols/a/inner"), &volume("pvc-e"))
            .await
            .unwrap_err();
        assert!(
            inner.to_string().contains("inside another volume"),
            "{inner}"
        );
        assert!(store.headers("vols/a/inner/").is_none());
    }

    #[tokio::test]
    async fn of_two_claims_racing_for_a_prefix_one_has_it() {
        let store = MemoryStore::new("bkt");
        let at = location("vols/race");
        let (one, two) = (volume("pvc-a"), volume("pvc-b"));
        let (a, b) = tokio::join!(make(&store, &at, &one), make(&store, &at, &two));
        assert!(a.is_ok() != b.is_ok(), "{a:?} {b:?}");
        // Even when the second has seen no marker before it writes its own.
        let other = location("vols/late");
        store.put_with("vols/late/", "", {
            let mut headers = ObjectHeaders::default();
            for (k, v) in [
                (DRIVER, DRIVER_NAME),
                (VOLUME, "pvc-a"),
                (VOLUME_ID, "id-of-pvc-a"),
            ] {
                headers.user.insert(k.into(), v.into());
            }
            headers
        });
        let late = store
            .put_new_object("vols/late/", bytes::Bytes::new(), &ObjectHeaders::default())
            .await;
        assert!(matches!(late, Err(StoreError::Changed { .. })), "{late:?}");
        assert_eq!(
            marker(&store, &other).await.unwrap(),
            Marker::Volume(volume("pvc-a"))
        );
    }
}
