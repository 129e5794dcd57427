//! Listings of the memory store's objects, paged as S3 pages them.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::{DEFAULT_MAX_KEYS, StoredObject};
use crate::store::{ListPage, ListRequest, ObjectInfo};

/// One page of a ListObjectsV2 of `objects`, as S3 pages it.
pub(super) fn list_page(
    objects: &BTreeMap<String, StoredObject>,
    req: &ListRequest<'_>,
) -> ListPage {
    let max_keys = req
        .max_keys
        .map_or(DEFAULT_MAX_KEYS, |m| m.clamp(0, 1000) as usize);
    // The continuation token is the last key or common prefix already returned;
    // everything at or below it (in key order) was covered by earlier pages.
    let start = match req.continuation {
        Some(token) => Bound::Excluded(token.to_string()),
        None => Bound::Included(req.prefix.to_string()),
    };
    let mut page = ListPage::default();
    // The last item returned, and whether it was a common prefix.
    let mut last_returned: Option<(String, bool)> = None;
    let mut truncated = false;
    for (key, object) in objects.range((start, Bound::Unbounded)) {
        if !key.starts_with(req.prefix) {
            break;
        }
        let common = req.delimiter.and_then(|d| {
            let rest = &key[req.prefix.len()..];
            rest.find(d)
                .map(|i| key[..req.prefix.len() + i + d.len()].to_string())
        });
        if let (Some(common), Some((last, true))) = (&common, &last_returned)
            && common == last
        {
            // Keys under a common prefix already returned fold into it.
            continue;
        }
        if page.objects.len() + page.common_prefixes.len() == max_keys {
            truncated = true;
            break;
        }
        match common {
            Some(common) => {
                page.common_prefixes.push(common.clone());
                last_returned = Some((common, true));
            }
            None => {
                page.objects.push(info(key, object));
                last_returned = Some((key.clone(), false));
            }
        }
    }
    if truncated {
        // After a common prefix, resume past every key that folds into it: no
        // key under it sorts after the prefix followed by the largest char.
        page.next_token = last_returned.map(|(last, is_prefix)| {
            if is_prefix {
                format!("{last}\u{10FFFF}")
            } else {
                last
            }
        });
    }
    page
}

pub(super) fn info(key: &str, object: &StoredObject) -> ObjectInfo {
    ObjectInfo {
        key: key.to_string(),
        size: object.data.len() as u64,
        etag: object.etag.clone(),
        last_modified: object.last_modified,
        version_id: None,
        headers: None,
    }
}
