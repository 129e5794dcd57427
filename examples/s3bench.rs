//! A raw parallel S3 client for the benchmark: the ceiling a filesystem is measured
//! against, and the tool that seeds the benchmark's data.
//!
//! ```text
//! s3bench get BUCKET KEY[,KEY...] [CONCURRENCY]
//!                                             parallel 8 MiB ranged GETs of the
//!                                             keys, whole; prints MiB/s
//! s3bench put BUCKET KEY MIB [CONCURRENCY]    parallel multipart upload of MIB MiB,
//!                                             made before the clock starts; prints
//!                                             MiB/s
//! s3bench put-many BUCKET PREFIX COUNT [DIRS [SIZE]]
//!                                             COUNT objects of SIZE bytes (1 to 100
//!                                             when 0), spread over DIRS dirs
//! s3bench latency BUCKET KEY [COUNT]         COUNT 4 KiB ranged GETs one after another;
//!                                             prints the mean latency in ms
//! s3bench wait BUCKET PREFIX COUNT BYTES      waits until COUNT objects holding BYTES
//!                                             in all are listed under PREFIX (at
//!                                             most 10 minutes)
//! s3bench delete BUCKET PREFIX                deletes every object under PREFIX
//! s3bench heads BUCKET PREFIX [CONCURRENCY]   lists PREFIX as a directory and sends a
//!                                             HEAD for each object listed, CONCURRENCY
//!                                             (32) in flight; prints the seconds
//! ```
//!
//! Every object it writes holds bytes of its own (see `bytes_of`).
//!
//! The endpoint comes from `S3_ENDPOINT`, credentials and region from the usual
//! `AWS_*` variables.

use std::sync::Arc;
use std::time::Instant;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use futures::StreamExt;

const PART: u64 = 8 * 1024 * 1024;

async fn client() -> Client {
    let endpoint = std::env::var("S3_ENDPOINT").expect("set S3_ENDPOINT");
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let config = aws_sdk_s3::config::Builder::from(&sdk)
        .endpoint_url(endpoint)
        .force_path_style(true)
        .build();
    Client::from_conf(config)
}

fn arg(args: &[String], i: usize, what: &str) -> String {
    args.get(i)
        .cloned()
        .unwrap_or_else(|| panic!("missing {what}; see the usage at the top of s3bench.rs"))
}

/// Reads every key in `keys` whole, in parallel 8 MiB ranged GETs (`concurrency`
/// in flight across all of them); prints MiB/s of them all.
async fn get(client: Client, bucket: String, keys: Vec<String>, concurrency: usize) {
    let mut ranges = Vec::new();
    let mut size = 0;
    for key in keys {
        let head = client
            .head_object()
            .bucket(&bucket)
            .key(&key)
            .send()
            .await
            .expect("head");
        let len = head.content_length().unwrap_or(0) as u64;
        size += len;
        let key = Arc::new(key);
        ranges.extend(
            (0..len)
                .step_by(PART as usize)
                .map(|offset| (key.clone(), offset, (offset + PART).min(len) - 1)),
        );
    }
    let start = Instant::now();
    let client = Arc::new(client);
    let total: usize = futures::stream::iter(ranges)
        .map(|(key, offset, end)| {
            let (client, bucket) = (client.clone(), bucket.clone());
            async move {
                let out = client
                    .get_object()
                    .bucket(bucket)
                    .key(key.as_str())
                    .range(format!("bytes={offset}-{end}"))
                    .send()
                    .await
                    .expect("get");
                let mut body = out.body;
                let mut n = 0;
                while let Some(chunk) = body.next().await {
                    n += chunk.expect("body").len();
                }
                n
            }
        })
        .buffer_unordered(concurrency)
        .fold(0, |a, b| async move { a + b })
        .await;
    assert_eq!(total as u64, size);
    let secs = start.elapsed().as_secs_f64();
    println!("{:.1}", size as f64 / (1 << 20) as f64 / secs);
}

async fn latency(client: Client, bucket: String, key: String, count: u64) {
    let start = Instant::now();
    for i in 0..count {
        let offset = i * 1_048_576;
        let out = client
            .get_object()
            .bucket(&bucket)
            .key(&key)
            .range(format!("bytes={offset}-{}", offset + 4095))
            .send()
            .await
            .expect("get");
        out.body.collect().await.expect("body");
    }
    println!(
        "{:.2}",
        start.elapsed().as_secs_f64() * 1000.0 / count as f64
    );
}

/// What `ls -l` of a directory asks of S3 when each file's metadata costs a HEAD:
/// the listing (all pages, delimited as a directory), then a HEAD of every object
/// in it, `concurrency` in flight. Prints the seconds of both.
async fn heads(client: Client, bucket: String, prefix: String, concurrency: usize) {
    let start = Instant::now();
    let mut keys = Vec::new();
    let mut pages = client
        .list_objects_v2()
        .bucket(&bucket)
        .prefix(&prefix)
        .delimiter("/")
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        for object in page.expect("list").contents() {
            keys.push(object.key().expect("a key").to_string());
        }
    }
    let client = Arc::new(client);
    let count = futures::stream::iter(keys)
        .map(|key| {
            let (client, bucket) = (client.clone(), bucket.clone());
            async move {
                client
                    .head_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .expect("head");
            }
        })
        .buffer_unordered(concurrency)
        .count()
        .await;
    assert!(count > 0, "nothing listed under {prefix}");
    println!("{:.2}", start.elapsed().as_secs_f64());
}

/// `len` bytes of `key`'s own: no two keys share a block or a page of content,
/// and none compresses. A server that deduplicates or compresses blocks (Garage
/// does both) would otherwise store a benchmark's objects once, and serve
/// every read and take every write of them from that one copy.
fn bytes_of(key: &str, len: usize) -> Vec<u8> {
    // FNV-1a of the key seeds a xorshift generator (never from zero).
    let mut x = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    }) | 1;
    let mut data = Vec::with_capacity(len + 8);
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(len);
    data
}

async fn put(client: Client, bucket: String, key: String, mib: u64, concurrency: usize) {
    let size = mib << 20;
    // Made before timing so the client's own CPU does not count against it.
    let data = bytes::Bytes::from(bytes_of(&key, size as usize));
    let upload = client
        .create_multipart_upload()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await
        .expect("create multipart upload");
    let id = upload.upload_id().unwrap().to_string();
    let start = Instant::now();
    let client = Arc::new(client);
    let mut parts: Vec<CompletedPart> = futures::stream::iter(0..size.div_ceil(PART))
        .map(|index| {
            let (client, bucket, key, id) =
                (client.clone(), bucket.clone(), key.clone(), id.clone());
            let start = index * PART;
            let data = data.slice(start as usize..(start + PART).min(size) as usize);
            async move {
                let out = client
                    .upload_part()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(id)
                    .part_number(index as i32 + 1)
                    .body(ByteStream::from(data))
                    // As s3vol sends uploads: CRC32 checksum, no payload SHA-256.
                    .customize()
                    .disable_payload_signing()
                    .send()
                    .await
                    .expect("upload part");
                CompletedPart::builder()
                    .part_number(index as i32 + 1)
                    .set_e_tag(out.e_tag().map(String::from))
                    .build()
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    parts.sort_by_key(|p| p.part_number());
    client
        .complete_multipart_upload()
        .bucket(&bucket)
        .key(&key)
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .expect("complete");
    let secs = start.elapsed().as_secs_f64();
    println!("{:.1}", mib as f64 / secs);
}

/// The key and size of every object under `prefix`.
async fn listed(client: &Client, bucket: &str, prefix: &str) -> Vec<(String, u64)> {
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    let mut objects = Vec::new();
    while let Some(page) = pages.next().await {
        objects.extend(page.expect("list").contents().iter().map(|object| {
            let key = object.key().expect("a listed object has a key");
            (key.to_string(), object.size().unwrap_or(0) as u64)
        }));
    }
    objects
}

async fn wait(client: Client, bucket: String, prefix: String, count: usize, bytes: u64) {
    // A write that failed never lists: the run ends rather than waits forever,
    // and so does a listing that never answers.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(600);
    let (mut seen, mut total) = (0, 0);
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout_at(deadline, listed(&client, &bucket, &prefix)).await {
            Ok(objects) => {
                seen = objects.len();
                total = objects.iter().map(|(_, size)| size).sum();
            }
            Err(_) => break,
        }
        if seen >= count && total >= bytes {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!(
        "after 10 minutes, {seen} objects of {total} bytes under {prefix}, not {count} of {bytes}"
    );
}

/// Deletes every object under `prefix`, which must name something: a prefix that
/// holds no object is a mistake of the caller's, and an empty one the bucket.
async fn delete(client: Client, bucket: String, prefix: String) {
    assert!(!prefix.is_empty(), "refusing to delete the whole bucket");
    let keys: Vec<String> = listed(&client, &bucket, &prefix)
        .await
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert!(!keys.is_empty(), "no object under {prefix} to delete");
    futures::stream::iter(keys)
        .map(|key| {
            let client = client.clone();
            let bucket = bucket.clone();
            async move {
                client
                    .delete_object()
                    .bucket(bucket)
                    .key(&key)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("delete {key}: {e}"));
            }
        })
        .buffer_unordered(16)
        .collect::<()>()
        .await;
}

/// `count` objects under `prefix`, spread over `dirs` directories when more than
/// one, each `size` bytes (or 1 to 100 bytes when `size` is 0).
async fn put_many(
    client: Client,
    bucket: String,
    prefix: String,
    count: usize,
    dirs: usize,
    size: usize,
) {
    let client = Arc::new(client);
    futures::stream::iter(0..count)
        .map(|i| {
            let (client, bucket) = (client.clone(), bucket.clone());
            let key = if dirs > 1 {
                format!("{prefix}d{:03}/f{:05}", i % dirs, i)
            } else {
                format!("{prefix}f{i:05}")
            };
            let body = bytes_of(&key, if size > 0 { size } else { 1 + i % 100 });
            async move {
                client
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .body(ByteStream::from(body))
                    .send()
                    .await
                    .expect("put");
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let client = client().await;
    let number = |i: usize, default: usize| {
        args.get(i)
            .map(|s| s.parse().expect("a number"))
            .unwrap_or(default)
    };
    match args.get(1).map(String::as_str) {
        Some("get") => {
            let concurrency = number(4, 16);
            let keys = arg(&args, 3, "KEY").split(',').map(String::from).collect();
            get(client, arg(&args, 2, "BUCKET"), keys, concurrency).await
        }
        Some("put") => {
            let (mib, concurrency) = (number(4, 1024) as u64, number(5, 16));
            put(
                client,
                arg(&args, 2, "BUCKET"),
                arg(&args, 3, "KEY"),
                mib,
                concurrency,
            )
            .await
        }
        Some("latency") => {
            let count = number(4, 100) as u64;
            latency(client, arg(&args, 2, "BUCKET"), arg(&args, 3, "KEY"), count).await
        }
        Some("wait") => {
            let (count, bytes) = (number(4, 1), number(5, 0) as u64);
            wait(
                client,
                arg(&args, 2, "BUCKET"),
                arg(&args, 3, "PREFIX"),
                count,
                bytes,
            )
            .await
        }
        Some("delete") => delete(client, arg(&args, 2, "BUCKET"), arg(&args, 3, "PREFIX")).await,
        Some("heads") => {
            let concurrency = number(4, 32);
            heads(
                client,
                arg(&args, 2, "BUCKET"),
                arg(&args, 3, "PREFIX"),
                concurrency,
            )
            .await
        }
        Some("put-many") => {
            let (count, dirs, size) = (number(4, 10_000), number(5, 1), number(6, 0));
            put_many(
                client,
                arg(&args, 2, "BUCKET"),
                arg(&args, 3, "PREFIX"),
                count,
                dirs,
                size,
            )
            .await
        }
        _ => {
            eprintln!(
                "usage: s3bench get|put|put-many|latency|wait|delete|heads ... (see examples/s3bench.rs)"
            );
            std::process::exit(2);
        }
    }
}
