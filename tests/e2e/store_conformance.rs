//! One suite of store checks, run on the memory store and on the S3 store against
//! Garage and moto, so the fake the filesystem tests rely on cannot drift from S3.

use crate::common;

use std::sync::Arc;

use common::{Server, ServerKind, pattern};
use s3vol::store::memory::MemoryStore;
use s3vol::store::s3::{S3Options, S3Store};
use s3vol::store::{
    Deletion, GetOptions, ListRequest, ObjectHeaders, ObjectStore, Pin, Read, StoreError,
    UploadedPart, Versioning, VersionsRequest, multipart_etag,
};

/// A store under test plus a way to put objects into it behind its back.
struct Subject {
    store: Arc<dyn ObjectStore>,
    memory: Option<Arc<MemoryStore>>,
    server: Option<Server>,
}

impl Subject {
    /// Whether the store checks what `check` names. The memory store checks all of
    /// S3's rules; the local servers have gaps, named here.
    fn checks(&self, check: Check) -> bool {
        let kind = self.server.as_ref().map(|s| s.kind);
        !matches!(
            (kind, check),
            (
                Some(ServerKind::Garage),
                Check::MinPartSize
                    | Check::SelfCopyChanges
                    | Check::Encryption
                    | Check::Versions
                    | Check::IfNoneMatch
            ) | (
                Some(ServerKind::Moto),
                Check::CopyIfMatch | Check::ControlCharacters | Check::NullVersion
            )
        )
    }

    async fn put(&self, key: &str, data: &[u8]) {
        match (&self.memory, &self.server) {
            (Some(memory), _) => memory.put(key, data.to_vec()),
            (None, Some(server)) => server.put(BUCKET, key, data.to_vec()).await,
            (None, None) => unreachable!(),
        }
    }
}

const BUCKET: &str = "conformance";

/// S3 rules some local servers do not enforce.
#[derive(Clone, Copy)]
enum Check {
    /// Every part but the last is at least 5 MiB (Garage accepts smaller).
    MinPartSize,
    /// x-amz-copy-source-if-match (moto copies regardless).
    CopyIfMatch,
    /// Keys with control characters (moto's web server cannot route them).
    ControlCharacters,
    /// A copy onto itself must change something (Garage copies regardless).
    SelfCopyChanges,
    /// Server-side encryption with S3's keys (Garage has none).
    Encryption,
    /// ListObjectVersions and reads by version (Garage keeps no versions and
    /// answers NotImplemented).
    Versions,
    /// Reads of the version `null` of an object written without versioning
    /// (moto answers 400).
    NullVersion,
    /// A PUT with If-None-Match: * where the key exists is refused (Garage
    /// writes regardless).
    IfNoneMatch,
}

fn memory() -> Subject {
    let memory = Arc::new(MemoryStore::new(BUCKET));
    Subject {
        store: memory.clone(),
        memory: Some(memory),
        server: None,
    }
}

async fn s3(kind: ServerKind) -> Subject {
    let server = Server::start(kind);
    server.create_bucket(BUCKET).await;
    Subject {
        store: Arc::new(s3_store(&server, true)),
        memory: None,
        server: Some(server),
    }
}

/// An S3 store of the conformance bucket on `server`. With `renewed`, its
/// credentials are handed to it as a volume hands it those it renews, and it
/// sends HEADs without the SDK once the SDK has sent one; without, the SDK
/// sends every HEAD.
fn s3_store(server: &Server, renewed: bool) -> S3Store {
    let creds =
        aws_sdk_s3::config::SharedCredentialsProvider::new(aws_sdk_s3::config::Credentials::new(
            &server.access_key,
            &server.secret_key,
            None,
            None,
            "test",
        ));
    let sdk = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(server.region.clone()))
        .credentials_provider(creds.clone())
        .build();
    let options = S3Options {
        endpoint_url: Some(server.endpoint.clone()),
        force_path_style: true,
        credentials: renewed.then_some(creds),
        ..S3Options::default()
    };
    S3Store::from_sdk_config(BUCKET, &sdk, &options)
}

async fn head_and_get(s: &Subject) {
    let data = pattern(100_000, 1);
    s.put("obj/a.bin", &data).await;
    let info = s.store.head_object("obj/a.bin").await.unwrap();
    assert_eq!(info.size, 100_000);
    assert!(
        info.etag.starts_with('"') && info.etag.len() > 2,
        "{}",
        info.etag
    );

    let got = s
        .store
        .get_range("obj/a.bin", 10..5000, None)
        .await
        .unwrap();
    assert_eq!(&got[..], &data[10..5000]);
    let pinned = s
        .store
        .get_range("obj/a.bin", 0..100_000, Some(&info.etag))
        .await
        .unwrap();
    assert_eq!(&pinned[..], &data[..]);
    // A range running past the end is cut at the end.
    let tail = s
        .store
        .get_range("obj/a.bin", 99_990..200_000, None)
        .await
        .unwrap();
    assert_eq!(&tail[..], &data[99_990..]);
    assert!(matches!(
        s.store.get_range("obj/a.bin", 100_000..100_010, None).await,
        Err(StoreError::InvalidRange { .. })
    ));
    assert!(matches!(
        s.store.head_object("obj/missing").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.store.get_range("obj/missing", 0..10, None).await,
        Err(StoreError::NotFound { .. })
    ));

    // Replacing the object changes its ETag and breaks reads pinned to the old one.
    s.put("obj/a.bin", &pattern(100_000, 2)).await;
    let replaced = s.store.head_object("obj/a.bin").await.unwrap();
    assert_ne!(replaced.etag, info.etag);
    assert!(matches!(
        s.store
            .get_range("obj/a.bin", 0..10, Some(&info.etag))
            .await,
        Err(StoreError::Changed { .. })
    ));
    // Every read of the one GET may be pinned to an ETag; the headers come
    // with a HEAD and with the start of an object, never with a range.
    for read in [Read::Head, Read::Range(0..10), Read::Start(10)] {
        let options = |etag| GetOptions {
            pin: Pin::Current(Some(etag)),
            read: read.clone(),
        };
        let stale = s.store.get("obj/a.bin", options(&info.etag)).await;
        assert!(
            matches!(stale, Err(StoreError::Changed { .. })),
            "{read:?}: {stale:?}"
        );
        let got = s
            .store
            .get("obj/a.bin", options(&replaced.etag))
            .await
            .unwrap();
        let wanted = pattern(100_000, 2);
        match read {
            Read::Head => assert!(got.data.is_empty()),
            _ => assert_eq!(&got.data[..], &wanted[..10], "{read:?}"),
        }
        let etag = got.info.map(|info| info.etag);
        match read {
            Read::Range(_) => assert_eq!(etag, None),
            _ => assert_eq!(etag.as_ref(), Some(&replaced.etag), "{read:?}"),
        }
    }
}

async fn list_with_delimiter_and_pages(s: &Subject) {
    for key in [
        "l/a", "l/b/1", "l/b/2", "l/c/", "l/d", "l/e/x/y", "l/f", "l/g/1", "other",
    ] {
        s.put(key, b"x").await;
    }
    let page = s
        .store
        .list_objects(ListRequest {
            prefix: "l/",
            delimiter: Some("/"),
            ..Default::default()
        })
        .await
        .unwrap();
    let keys: Vec<_> = page.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys, ["l/a", "l/d", "l/f"]);
    assert_eq!(page.common_prefixes, ["l/b/", "l/c/", "l/e/", "l/g/"]);
    assert!(page.next_token.is_none());

    // Small pages: every entry exactly once, in order, across pages.
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = s
            .store
            .list_objects(ListRequest {
                prefix: "l/",
                delimiter: Some("/"),
                continuation: token.as_deref(),
                max_keys: Some(2),
            })
            .await
            .unwrap();
        pages += 1;
        assert!(page.objects.len() + page.common_prefixes.len() <= 2);
        let mut entries: Vec<String> = page.objects.iter().map(|o| o.key.clone()).collect();
        entries.extend(page.common_prefixes.iter().cloned());
        entries.sort();
        seen.extend(entries);
        token = page.next_token;
        if token.is_none() {
            break;
        }
    }
    assert_eq!(
        seen,
        ["l/a", "l/b/", "l/c/", "l/d", "l/e/", "l/f", "l/g/"],
        "after {pages} pages"
    );

    // A marker object is listed under its own prefix.
    let marker = s
        .store
        .list_objects(ListRequest {
            prefix: "l/c/",
            delimiter: Some("/"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(marker.objects.len(), 1);
    assert_eq!(marker.objects[0].key, "l/c/");
    assert_eq!(marker.objects[0].size, 1);

    // Without a delimiter, everything under the prefix, one key at a time.
    let one = s
        .store
        .list_objects(ListRequest {
            prefix: "l/b/",
            max_keys: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(one.objects.len(), 1);
    assert!(one.next_token.is_some());
    let none = s
        .store
        .list_objects(ListRequest {
            prefix: "nothing/",
            max_keys: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(none.objects.is_empty() && none.common_prefixes.is_empty());
}

async fn file_beside_directory(s: &Subject) {
    s.put("same/name", b"file").await;
    s.put("same/name/child", b"child").await;
    let page = s
        .store
        .list_objects(ListRequest {
            prefix: "same/",
            delimiter: Some("/"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.objects.len(), 1);
    assert_eq!(page.objects[0].key, "same/name");
    assert_eq!(page.common_prefixes, ["same/name/"]);
}

/// Keys with characters XML 1.0 cannot carry, and the ones URL encoding treats
/// specially, come back from listings exactly as they were stored.
async fn any_characters_in_keys(s: &Subject) {
    let control = ["ctl\u{1}\u{7}", "line\nbreak"];
    let names = ["sp ace", "pl+us", "per%20cent", "été", "amp&lt;"];
    let with_control = s.checks(Check::ControlCharacters).then_some(control);
    let names: Vec<&str> = names
        .into_iter()
        .chain(with_control.into_iter().flatten())
        .collect();
    for name in &names {
        s.put(&format!("odd/{name}"), name.as_bytes()).await;
    }
    s.put("odd/sub dir/x", b"x").await;
    let page = s
        .store
        .list_objects(ListRequest {
            prefix: "odd/",
            delimiter: Some("/"),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut listed: Vec<String> = page.objects.into_iter().map(|o| o.key).collect();
    listed.sort();
    let mut expected: Vec<String> = names.iter().map(|n| format!("odd/{n}")).collect();
    expected.sort();
    assert_eq!(listed, expected);
    assert_eq!(page.common_prefixes, ["odd/sub dir/"]);
    let id = s
        .store
        .create_multipart_upload("odd/up+ load", &ObjectHeaders::default())
        .await
        .unwrap();
    let pending = s.store.list_multipart_uploads("odd/").await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].key, "odd/up+ load");
    s.store
        .abort_multipart_upload("odd/up+ load", &id)
        .await
        .unwrap();
}

async fn uploads_abort_and_deletes(s: &Subject) {
    let id = s
        .store
        .create_multipart_upload("mp/x", &ObjectHeaders::default())
        .await
        .unwrap();
    assert!(!id.is_empty());
    s.store.abort_multipart_upload("mp/x", &id).await.unwrap();
    // The upload is gone: aborting it again is "no such upload".
    assert!(matches!(
        s.store.abort_multipart_upload("mp/x", &id).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.store.head_object("mp/x").await,
        Err(StoreError::NotFound { .. })
    ));

    s.put("del/me", b"x").await;
    s.store.delete_object("del/me").await.unwrap();
    assert!(matches!(
        s.store.head_object("del/me").await,
        Err(StoreError::NotFound { .. })
    ));
    // Deleting what is not there succeeds, as on S3.
    s.store.delete_object("del/never").await.unwrap();
}

/// DeleteObjects of what is there and what is not; the first uploads of a
/// listing; a write only where nothing is (If-None-Match).
async fn batch_deletes_first_uploads_and_writes_only_where_nothing_is(s: &Subject) {
    for i in 0..3 {
        s.put(&format!("batch/{i}"), b"x").await;
    }
    s.put("batch-kept", b"x").await;
    let batch: Vec<Deletion> = (0..4)
        .map(|i| Deletion {
            key: format!("batch/{i}"),
            version_id: None,
        })
        .collect();
    s.store.delete_batch(&batch).await.unwrap();
    let listing = ListRequest {
        prefix: "batch",
        ..ListRequest::default()
    };
    let left: Vec<String> = s
        .store
        .list_objects(listing)
        .await
        .unwrap()
        .objects
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(left, ["batch-kept"]);

    let mut ids = Vec::new();
    for i in 0..3 {
        let key = format!("ups/{i}");
        ids.push((
            key.clone(),
            s.store
                .create_multipart_upload(&key, &ObjectHeaders::default())
                .await
                .unwrap(),
        ));
    }
    let first = s.store.first_multipart_uploads("ups/", 2).await.unwrap();
    assert!((2..=3).contains(&first.len()), "{first:?}");
    assert!(first.iter().all(|u| u.key.starts_with("ups/")), "{first:?}");
    for (key, id) in ids {
        s.store.abort_multipart_upload(&key, &id).await.unwrap();
    }

    let headers = ObjectHeaders::default();
    s.store
        .put_new_object("new/a", bytes::Bytes::from_static(b"1"), &headers)
        .await
        .unwrap();
    if s.checks(Check::IfNoneMatch) {
        let again = s
            .store
            .put_new_object("new/a", bytes::Bytes::from_static(b"2"), &headers)
            .await;
        assert!(
            matches!(again, Err(StoreError::Changed { .. })),
            "{again:?}"
        );
        let info = s.store.head_object("new/a").await.unwrap();
        assert_eq!(info.size, 1);
    }
}

const MIB: usize = 1024 * 1024;

async fn puts_multipart_uploads_and_copies(s: &Subject) {
    // PutObject: the ETag it returns is the object's.
    let etag = s
        .store
        .put_object("w/small", b"small"[..].into(), &ObjectHeaders::default())
        .await
        .unwrap();
    assert_eq!(s.store.head_object("w/small").await.unwrap().etag, etag);
    assert_eq!(
        &s.store.get_range("w/small", 0..5, None).await.unwrap()[..],
        b"small"
    );

    // A multipart upload, listed while in progress; a part uploaded again replaces
    // the earlier one.
    let (one, two) = (pattern(5 * MIB, 3), pattern(1000, 4));
    let id = s
        .store
        .create_multipart_upload("w/big", &ObjectHeaders::default())
        .await
        .unwrap();
    let pending = s.store.list_multipart_uploads("w/").await.unwrap();
    assert!(
        pending
            .iter()
            .any(|u| u.key == "w/big" && u.upload_id == id)
    );
    s.store
        .upload_part("w/big", &id, 2, pattern(1000, 9).into())
        .await
        .unwrap();
    let etag1 = s
        .store
        .upload_part("w/big", &id, 1, one.clone().into())
        .await
        .unwrap();
    let etag2 = s
        .store
        .upload_part("w/big", &id, 2, two.clone().into())
        .await
        .unwrap();
    let parts = [
        UploadedPart {
            number: 1,
            etag: etag1,
        },
        UploadedPart {
            number: 2,
            etag: etag2,
        },
    ];
    let etag = s
        .store
        .complete_multipart_upload("w/big", &id, &parts)
        .await
        .unwrap();
    // S3's rule for the ETag of a completed upload, which lets a client whose
    // answer to CompleteMultipartUpload was lost recognise its object.
    assert_eq!(Some(&etag), multipart_etag(&parts).as_ref());
    // Completing it again: the upload is gone (moto answers as if it were not).
    match s
        .store
        .complete_multipart_upload("w/big", &id, &parts)
        .await
    {
        Err(StoreError::NotFound { .. }) => {}
        Ok(again) if again == etag => {}
        other => panic!("completing twice: {other:?}"),
    }
    let size = (one.len() + two.len()) as u64;
    let got = s.store.get_range("w/big", 0..size, None).await.unwrap();
    assert!(got[..one.len()] == one[..] && got[one.len()..] == two[..]);
    assert!(
        s.store
            .list_multipart_uploads("w/")
            .await
            .unwrap()
            .is_empty()
    );

    // Every part but the last must be at least 5 MiB.
    if s.checks(Check::MinPartSize) {
        let id = s
            .store
            .create_multipart_upload("w/tiny", &ObjectHeaders::default())
            .await
            .unwrap();
        let a = s
            .store
            .upload_part("w/tiny", &id, 1, b"a"[..].into())
            .await
            .unwrap();
        let b = s
            .store
            .upload_part("w/tiny", &id, 2, b"b"[..].into())
            .await
            .unwrap();
        let parts = [
            UploadedPart { number: 1, etag: a },
            UploadedPart { number: 2, etag: b },
        ];
        assert!(
            s.store
                .complete_multipart_upload("w/tiny", &id, &parts)
                .await
                .is_err()
        );
        s.store.abort_multipart_upload("w/tiny", &id).await.unwrap();
    }

    // CopyObject, pinned to the source's ETag.
    let source = s.store.head_object("w/big").await.unwrap();
    s.store
        .copy_object("w/big", "w/copy", Some(&source.etag), source.size, None)
        .await
        .unwrap();
    assert_eq!(s.store.head_object("w/copy").await.unwrap().size, size);
    if s.checks(Check::CopyIfMatch) {
        assert!(matches!(
            s.store
                .copy_object("w/big", "w/copy2", Some("\"0000\""), source.size, None)
                .await,
            Err(StoreError::Changed { .. })
        ));
    }

    // UploadPartCopy: a range of an object as a part.
    let id = s
        .store
        .create_multipart_upload("w/ranged", &ObjectHeaders::default())
        .await
        .unwrap();
    let etag = s
        .store
        .upload_part_copy("w/big", "w/ranged", &id, 1, 10..5000, Some(&source.etag))
        .await
        .unwrap();
    let parts = [UploadedPart { number: 1, etag }];
    s.store
        .complete_multipart_upload("w/ranged", &id, &parts)
        .await
        .unwrap();
    let got = s.store.get_range("w/ranged", 0..4990, None).await.unwrap();
    assert!(got[..] == one[10..5000]);
}

/// Headers given to an upload come back from HEAD (a listing has none); a copy
/// carries them, or replaces them when asked, onto the same key too.
async fn headers_are_kept_carried_and_replaced(s: &Subject) {
    let mut headers = ObjectHeaders {
        content_type: Some("text/csv".into()),
        cache_control: Some("max-age=60".into()),
        ..ObjectHeaders::default()
    };
    headers.user.insert("mode".into(), "0100640".into());
    headers
        .user
        .insert("mtime".into(), "1557126489.987654321".into());
    s.store
        .put_object("h/one", b"one"[..].into(), &headers)
        .await
        .unwrap();
    let head = s.store.head_object("h/one").await.unwrap();
    let got = head.headers.clone().unwrap();
    assert_eq!(got.user, headers.user);
    assert_eq!(got.content_type.as_deref(), Some("text/csv"));
    assert_eq!(got.cache_control.as_deref(), Some("max-age=60"));
    let listed = s
        .store
        .list_objects(ListRequest {
            prefix: "h/",
            delimiter: None,
            continuation: None,
            max_keys: None,
        })
        .await
        .unwrap();
    assert_eq!(listed.objects[0].headers, None);

    // A copy carries them.
    s.store
        .copy_object("h/one", "h/two", Some(&head.etag), head.size, None)
        .await
        .unwrap();
    let two = s.store.head_object("h/two").await.unwrap().headers.unwrap();
    assert_eq!(two.user, headers.user);
    assert_eq!(two.content_type.as_deref(), Some("text/csv"));

    // In place, the metadata is replaced and the bytes stay; a copy onto itself
    // that changes nothing is refused, as S3 refuses it.
    let mut changed = got.clone();
    changed.user.insert("mode".into(), "0100600".into());
    changed.user.insert("other".into(), "kept".into());
    s.store
        .copy_object(
            "h/one",
            "h/one",
            Some(&head.etag),
            head.size,
            Some(&changed),
        )
        .await
        .unwrap();
    let after = s.store.head_object("h/one").await.unwrap();
    // The bytes are the same, and so is the ETag: readers pinned to it go on.
    assert_eq!(after.etag, head.etag);
    let after_headers = after.headers.unwrap();
    assert_eq!(after_headers.user, changed.user);
    assert_eq!(after_headers.content_type.as_deref(), Some("text/csv"));
    assert_eq!(after_headers.cache_control.as_deref(), Some("max-age=60"));
    assert_eq!(
        &s.store.get_range("h/one", 0..3, None).await.unwrap()[..],
        b"one"
    );
    if s.checks(Check::CopyIfMatch) {
        assert!(
            s.store
                .copy_object("h/one", "h/one", Some("\"0000\""), 3, Some(&changed))
                .await
                .is_err(),
            "pinned to an ETag the object does not have"
        );
    }
    if s.checks(Check::SelfCopyChanges) {
        assert!(
            s.store
                .copy_object("h/one", "h/one", None, 3, None)
                .await
                .is_err()
        );
    }

    // The encryption an object is stored with survives a change in place.
    if s.checks(Check::Encryption) {
        let encrypted = ObjectHeaders {
            sse: Some("AES256".into()),
            ..headers.clone()
        };
        s.store
            .put_object("h/sse", b"secret"[..].into(), &encrypted)
            .await
            .unwrap();
        let head = s.store.head_object("h/sse").await.unwrap();
        let mut kept = head.headers.clone().unwrap();
        assert_eq!(kept.sse.as_deref(), Some("AES256"));
        kept.user.insert("mode".into(), "0100600".into());
        s.store
            .copy_object("h/sse", "h/sse", Some(&head.etag), head.size, Some(&kept))
            .await
            .unwrap();
        let after = s.store.head_object("h/sse").await.unwrap().headers.unwrap();
        assert_eq!(after.sse.as_deref(), Some("AES256"));
        assert_eq!(after.user["mode"], "0100600");
    }

    // A multipart upload's headers are the completed object's.
    let id = s
        .store
        .create_multipart_upload("h/multi", &headers)
        .await
        .unwrap();
    let etag = s
        .store
        .upload_part("h/multi", &id, 1, b"m"[..].into())
        .await
        .unwrap();
    s.store
        .complete_multipart_upload("h/multi", &id, &[UploadedPart { number: 1, etag }])
        .await
        .unwrap();
    let multi = s
        .store
        .head_object("h/multi")
        .await
        .unwrap()
        .headers
        .unwrap();
    assert_eq!(multi.user, headers.user);
    assert_eq!(multi.content_type.as_deref(), Some("text/csv"));
}

/// The first bytes of an object with what a HEAD says, in one request.
async fn start_of_objects(s: &Subject) {
    let data = pattern(100_000, 3);
    s.put("start/big.bin", &data).await;
    s.put("start/small.txt", b"tiny").await;
    s.put("start/empty", b"").await;
    let head = s.store.head_object("start/big.bin").await.unwrap();
    let (info, first) = s.store.get_start("start/big.bin", 65536).await.unwrap();
    assert_eq!(&first[..], &data[..65536]);
    assert_eq!(
        info.size, 100_000,
        "the size of the object, not of the range"
    );
    assert_eq!(info.etag, head.etag);
    assert_eq!(info.last_modified, head.last_modified);
    assert_eq!(info.headers.unwrap().user, head.headers.unwrap().user);

    let (info, all) = s.store.get_start("start/small.txt", 65536).await.unwrap();
    assert_eq!((info.size, &all[..]), (4, &b"tiny"[..]));
    // An empty object has no first byte: the caller asks with a HEAD instead.
    assert!(matches!(
        s.store.get_start("start/empty", 65536).await,
        Err(StoreError::InvalidRange { .. })
    ));
    assert!(matches!(
        s.store.get_start("start/missing", 65536).await,
        Err(StoreError::NotFound { .. })
    ));
}

/// A bucket that never had versioning: each object is its one version,
/// `null`, read like the object itself.
async fn versions_of_an_unversioned_bucket(s: &Subject) {
    s.put("ver/a", b"first").await;
    s.put("ver/b", b"second!").await;
    s.put("ver/sub/c", b"deeper").await;
    assert_eq!(
        s.store.bucket_versioning().await.unwrap(),
        Versioning::Never
    );
    if !s.checks(Check::Versions) {
        return;
    }
    let page = s
        .store
        .list_versions(VersionsRequest {
            prefix: "ver/",
            delimiter: Some("/"),
            ..VersionsRequest::default()
        })
        .await
        .unwrap();
    let keys: Vec<(&str, &str, u64, bool, bool)> = page
        .versions
        .iter()
        .map(|v| {
            (
                v.key.as_str(),
                v.version_id.as_str(),
                v.size,
                v.latest,
                v.delete_marker,
            )
        })
        .collect();
    assert_eq!(
        keys,
        [
            ("ver/a", "null", 5, true, false),
            ("ver/b", "null", 7, true, false)
        ]
    );
    assert_eq!(page.common_prefixes, ["ver/sub/"]);
    assert_eq!(page.next, None);
    let head = s.store.head_object("ver/b").await.unwrap();
    assert_eq!(page.versions[1].etag, head.etag);
    if s.checks(Check::NullVersion) {
        let version = s.store.head_version("ver/b", "null").await.unwrap();
        assert_eq!((version.size, version.etag), (7, head.etag));
        let data = s
            .store
            .get_version_range("ver/b", "null", 1..4)
            .await
            .unwrap();
        assert_eq!(&data[..], b"eco");
    }
    // Pages of one key each, resumed where the last ended.
    let first = s
        .store
        .list_versions(VersionsRequest {
            prefix: "ver/",
            max_keys: Some(1),
            ..VersionsRequest::default()
        })
        .await
        .unwrap();
    assert_eq!(first.versions.len(), 1);
    let (key, version) = first.next.clone().expect("a next page");
    let second = s
        .store
        .list_versions(VersionsRequest {
            prefix: "ver/",
            max_keys: Some(1),
            after: Some((&key, &version)),
            ..VersionsRequest::default()
        })
        .await
        .unwrap();
    assert_eq!(second.versions[0].key, "ver/b");
}

async fn suite(s: Subject) {
    head_and_get(&s).await;
    start_of_objects(&s).await;
    uploads_abort_and_deletes(&s).await;
    batch_deletes_first_uploads_and_writes_only_where_nothing_is(&s).await;
    puts_multipart_uploads_and_copies(&s).await;
    list_with_delimiter_and_pages(&s).await;
    file_beside_directory(&s).await;
    any_characters_in_keys(&s).await;
    headers_are_kept_carried_and_replaced(&s).await;
    versions_of_an_unversioned_bucket(&s).await;
}

#[tokio::test]
async fn memory_store_conforms() {
    suite(memory()).await;
}

#[tokio::test]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn s3_store_on_garage_conforms() {
    suite(s3(ServerKind::Garage).await).await;
}

#[tokio::test]
#[ignore = "needs moto; run scripts/test.sh"]
async fn s3_store_on_moto_conforms() {
    suite(s3(ServerKind::Moto).await).await;
}

/// A HEAD the store sends without the SDK answers exactly as the SDK's: the
/// same object facts and headers for keys of any characters and metadata
/// values with commas, quotes and spaces, the same errors for a missing key
/// and for a pin to another ETag (the answer it does not read goes to the
/// SDK).
async fn heads_without_the_sdk_answer_as_the_sdk_does(kind: ServerKind) {
    let server = Server::start(kind);
    server.create_bucket(BUCKET).await;
    let (lean, sdk) = (s3_store(&server, true), s3_store(&server, false));
    let mut headers = ObjectHeaders {
        content_type: Some("text/plain; charset=utf-8".into()),
        content_encoding: Some("identity".into()),
        content_disposition: Some("attachment; filename=\"a, b.txt\"".into()),
        content_language: Some("fr".into()),
        cache_control: Some("no-cache, max-age=0".into()),
        ..ObjectHeaders::default()
    };
    headers.user.insert("mode".into(), "0100640".into());
    headers
        .user
        .insert("json".into(), r#"{"kms_cmk_id":"k, 1","x":"\"y\""}"#.into());
    headers.user.insert("spaced".into(), "a  b , c".into());
    let mut keys = vec![
        "h/plain".to_string(),
        "h/sp ace".into(),
        "h/pl+us".into(),
        "h/per%20cent".into(),
        "h/été/ü".into(),
        "h/amp&lt;?q=1#f".into(),
        "h/a//b".into(),
        "h/~tilde*star'q(p)".into(),
    ];
    if kind == ServerKind::Garage {
        keys.push("h/ctl\u{1}\u{7}".into());
    }
    for key in &keys {
        sdk.put_object(key, key.as_bytes().to_vec().into(), &headers)
            .await
            .unwrap();
    }
    for key in &keys {
        let by_sdk = sdk.head_object(key).await.unwrap();
        let without = lean.head_object(key).await.unwrap();
        assert_eq!(without, by_sdk, "{key}");
        assert_eq!(
            without.headers.as_ref().unwrap().user,
            headers.user,
            "{key}"
        );
    }
    // The first HEAD went through the SDK; it taught the others, and every
    // answer since was read without it.
    assert_eq!(lean.heads_without_the_sdk(), (keys.len() as u64 - 1, 0));
    assert_eq!(sdk.heads_without_the_sdk(), (0, 0));

    // Refusals are read as the SDK reads them, without asking it again.
    let by_sdk = sdk.head_object("h/none").await.unwrap_err();
    let without = lean.head_object("h/none").await.unwrap_err();
    assert!(matches!(by_sdk, StoreError::NotFound { .. }), "{by_sdk:?}");
    assert_eq!(format!("{without:?}"), format!("{by_sdk:?}"));
    let pinned = GetOptions {
        pin: Pin::Current(Some("\"0123456789abcdef0123456789abcdef\"")),
        read: Read::Head,
    };
    let by_sdk = sdk.get("h/plain", pinned.clone()).await.unwrap_err();
    let without = lean.get("h/plain", pinned).await.unwrap_err();
    assert!(matches!(by_sdk, StoreError::Changed { .. }), "{by_sdk:?}");
    assert_eq!(format!("{without:?}"), format!("{by_sdk:?}"));
    assert_eq!(lean.heads_without_the_sdk(), (keys.len() as u64 + 1, 0));
}

#[tokio::test]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn heads_without_the_sdk_answer_as_the_sdk_does_on_garage() {
    heads_without_the_sdk_answer_as_the_sdk_does(ServerKind::Garage).await;
}

#[tokio::test]
#[ignore = "needs moto; run scripts/test.sh"]
async fn heads_without_the_sdk_answer_as_the_sdk_does_on_moto() {
    heads_without_the_sdk_answer_as_the_sdk_does(ServerKind::Moto).await;
}

/// Overwritten and deleted on a bucket with versioning: every version is
/// listed, newest first, and each reads back as it was.
#[tokio::test]
#[ignore = "needs moto; run scripts/test.sh"]
async fn versions_on_a_versioned_bucket_on_moto() {
    let s = s3(ServerKind::Moto).await;
    let server = s.server.as_ref().unwrap();
    server.enable_versioning(BUCKET).await;
    assert_eq!(
        s.store.bucket_versioning().await.unwrap(),
        Versioning::Enabled
    );
    s.put("v/k", b"one").await;
    s.put("v/k", b"two, longer").await;
    s.store.delete_object("v/k").await.unwrap();
    let page = s
        .store
        .list_versions(VersionsRequest {
            prefix: "v/",
            ..VersionsRequest::default()
        })
        .await
        .unwrap();
    let seen: Vec<(bool, bool, u64)> = page
        .versions
        .iter()
        .map(|v| (v.delete_marker, v.latest, v.size))
        .collect();
    assert_eq!(
        seen,
        [(true, true, 0), (false, false, 11), (false, false, 3)]
    );
    assert!(
        page.versions
            .iter()
            .all(|v| v.key == "v/k" && v.version_id != "null")
    );
    let oldest = &page.versions[2];
    let data = s
        .store
        .get_version_range("v/k", &oldest.version_id, 0..3)
        .await
        .unwrap();
    assert_eq!(&data[..], b"one");
    let head = s
        .store
        .head_version("v/k", &page.versions[1].version_id)
        .await
        .unwrap();
    assert_eq!(head.size, 11);
    assert_eq!(
        head.version_id.as_deref(),
        Some(page.versions[1].version_id.as_str())
    );
    assert!(matches!(
        s.store.head_object("v/k").await,
        Err(StoreError::NotFound { .. })
    ));
}

/// The bucket at a past moment: later writes hidden, later deletes undone, and
/// keys deleted before the moment gone, each read byte-exact as it was.
#[tokio::test]
#[ignore = "needs moto; run scripts/test.sh"]
async fn a_view_of_the_past_on_moto() {
    use s3vol::store::versioned::VersionedView;
    let s = s3(ServerKind::Moto).await;
    let server = s.server.as_ref().unwrap();
    server.enable_versioning(BUCKET).await;
    s.put("past/kept", b"kept, first version").await;
    s.put("past/gone", b"deleted later").await;
    s.put("past/early", b"deleted before").await;
    s.store.delete_object("past/early").await.unwrap();
    s.put("past/dir/inner", b"in a directory").await;
    // S3 keeps times to the millisecond; a second apart on either side.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let moment = std::time::SystemTime::now();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    s.put("past/kept", b"kept, second version, longer").await;
    s.store.delete_object("past/gone").await.unwrap();
    s.put("past/new", b"written later").await;

    let view = VersionedView::new(s.store.clone(), moment, s3vol::store::LISTING_PATIENCE);
    let page = view
        .list_objects(ListRequest {
            prefix: "past/",
            delimiter: Some("/"),
            ..ListRequest::default()
        })
        .await
        .unwrap();
    let names: Vec<(&str, u64)> = page
        .objects
        .iter()
        .map(|o| (o.key.as_str(), o.size))
        .collect();
    assert_eq!(names, [("past/gone", 13), ("past/kept", 19)]);
    assert_eq!(page.common_prefixes, ["past/dir/"]);
    let data = view.get_range("past/kept", 0..19, None).await.unwrap();
    assert_eq!(&data[..], b"kept, first version");
    let data = view.get_range("past/gone", 0..13, None).await.unwrap();
    assert_eq!(&data[..], b"deleted later");
    // Asked for by name, without a listing first.
    let fresh = VersionedView::new(s.store.clone(), moment, s3vol::store::LISTING_PATIENCE);
    let head = fresh.head_object("past/kept").await.unwrap();
    assert_eq!(head.size, 19);
    let (info, start) = fresh.get_start("past/dir/inner", 4).await.unwrap();
    assert_eq!((info.size, &start[..]), (14, &b"in a"[..]));
    for missing in ["past/new", "past/early"] {
        assert!(
            matches!(
                fresh.head_object(missing).await,
                Err(StoreError::NotFound { .. })
            ),
            "{missing}"
        );
    }
    assert!(fresh.delete_object("past/kept").await.is_err(), "read-only");
    assert_eq!(
        s.store.get_range("past/kept", 0..5, None).await.unwrap(),
        &b"kept,"[..],
        "the bucket itself is untouched"
    );
}

/// An object of an archive storage class, not restored: S3 refuses its bytes
/// and a copy of it with 403 InvalidObjectState (ObjectNotInActiveTierError)
/// as it refuses what a policy denies. The store tells it from a denial, and
/// names the object to restore, the source of a copy.
#[tokio::test]
#[ignore = "needs moto; run scripts/test.sh"]
async fn an_archived_object_is_told_from_a_denial_on_moto() {
    let s = s3(ServerKind::Moto).await;
    let headers = ObjectHeaders {
        storage_class: Some("GLACIER".into()),
        ..ObjectHeaders::default()
    };
    s.store
        .put_object("cold/a", bytes::Bytes::from_static(b"frozen"), &headers)
        .await
        .unwrap();
    let head = s.store.head_object("cold/a").await.unwrap();
    assert_eq!(head.size, 6);
    match s.store.get_range("cold/a", 0..6, None).await {
        Err(StoreError::Archived { key, .. }) => assert_eq!(key, "cold/a"),
        other => panic!("a GET of an archived object: {other:?}"),
    }
    match s.store.copy_object("cold/a", "cold/b", None, 6, None).await {
        Err(e @ StoreError::Archived { .. }) => {
            let said = e.to_string();
            assert!(
                said.contains("cold/a") && !said.contains("cold/b"),
                "{said}"
            );
        }
        other => panic!("a copy of an archived object: {other:?}"),
    }
}
