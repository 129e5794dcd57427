//! One budget per node: the disk space every volume's block cache and files
//! being written may take together, and how many volumes may be published at
//! once. Each published target holds its share until it is unpublished; a
//! publish that would pass the budget is refused, with the numbers.
//!
//! A volume's share is what it asks for (`cache_size`, `staging_size`) or, by
//! default, the budget divided by the most volumes; a read-only volume writes
//! no files and takes no staging, a volume with `no_cache` no cache. The
//! daemon is always told its share, so it never sizes itself from the free
//! space it finds (which every volume on the node would find the same).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use tonic::Status;

use crate::stats::bytes;

/// The smallest share worth having: one cache block, or room for one part of
/// a file being written to grow in.
const MIN_SHARE: u64 = 1 << 20;

/// What the node gives its volumes (`s3vol csi --node-cache-size
/// --node-staging-size --max-volumes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeBudget {
    pub cache: u64,
    pub staging: u64,
    pub max_volumes: u32,
}

impl NodeBudget {
    /// The budget, checked: each default share must be usable.
    pub fn new(cache: u64, staging: u64, max_volumes: u32) -> Result<Self, String> {
        if max_volumes == 0 {
            return Err("--max-volumes must be at least 1".into());
        }
        let budget = Self {
            cache,
            staging,
            max_volumes,
        };
        let share = budget.default_share();
        if cache > 0 && share.cache < MIN_SHARE {
            return Err(format!(
                "--node-cache-size {} shared by --max-volumes {max_volumes} leaves each volume \
                 less than 1 MiB of cache; give more, fewer volumes, or 0 for no cache",
                bytes(cache)
            ));
        }
        if share.staging < MIN_SHARE {
            return Err(format!(
                "--node-staging-size {} shared by --max-volumes {max_volumes} leaves each \
                 volume less than 1 MiB for files being written; give more, or fewer volumes",
                bytes(staging)
            ));
        }
        Ok(budget)
    }

    /// What a volume gets unless it asks for a size of its own.
    pub fn default_share(&self) -> Share {
        Share {
            cache: self.cache / u64::from(self.max_volumes),
            staging: self.staging / u64::from(self.max_volumes),
        }
    }
}

/// The disk space one volume holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Share {
    /// The block cache's bound; 0: no cache.
    pub cache: u64,
    /// The bound on files being written; 0: a read-only volume.
    pub staging: u64,
}

impl Share {
    /// The share of a volume that asks for `cache` and `staging` (`None`: the
    /// default), reads only or keeps no cache.
    pub fn of(
        budget: &NodeBudget,
        cache: Option<u64>,
        staging: Option<u64>,
        no_cache: bool,
        read_write: bool,
    ) -> Share {
        let default = budget.default_share();
        Share {
            cache: match (no_cache, cache) {
                (true, _) => 0,
                (false, Some(size)) => size,
                (false, None) => default.cache,
            },
            staging: match (read_write, staging) {
                (false, _) => 0,
                (true, Some(size)) => size,
                (true, None) => default.staging,
            },
        }
    }
}

/// The shares the published targets hold.
pub struct Budget {
    limits: NodeBudget,
    held: Mutex<HashMap<PathBuf, Share>>,
}

impl Budget {
    pub fn new(limits: NodeBudget) -> Self {
        Self {
            limits,
            held: Mutex::new(HashMap::new()),
        }
    }

    pub fn limits(&self) -> &NodeBudget {
        &self.limits
    }

    /// Takes `share` for `target`, or refuses (ResourceExhausted) when the
    /// node's volumes would then hold more than its budget. A target that held
    /// a share gives it up first.
    pub fn reserve(&self, target: &Path, share: Share) -> Result<(), Status> {
        let mut held = self.held.lock();
        let others = || held.iter().filter(|(t, _)| t.as_path() != target);
        let volumes = others().count() + 1;
        // Summed wide: a share may be asked for as any number of bytes.
        let total = |part: fn(&Share) -> u64| -> u128 {
            others().map(|(_, s)| u128::from(part(s))).sum::<u128>() + u128::from(part(&share))
        };
        let limits = &self.limits;
        // The sentence for a size `total` would pass `limit` with `ask`.
        let past = |what: &str, ask: u64, total: u128, option: &str, limit: u64| {
            let limit_wide = u128::from(limit);
            (total > limit_wide).then(|| {
                format!(
                    "its {what} of {} would bring the node's volumes to {}, past s3vol csi \
                     {option} {} ({} left)",
                    bytes(ask),
                    wide_bytes(total),
                    bytes(limit),
                    wide_bytes(limit_wide.saturating_sub(total - u128::from(ask)))
                )
            })
        };
        let over = if volumes > limits.max_volumes as usize {
            Some(format!(
                "the node already serves {} volumes, the most s3vol csi --max-volumes allows",
                volumes - 1
            ))
        } else {
            past(
                "block cache",
                share.cache,
                total(|s| s.cache),
                "--node-cache-size",
                limits.cache,
            )
            .or_else(|| {
                past(
                    "room for files being written",
                    share.staging,
                    total(|s| s.staging),
                    "--node-staging-size",
                    limits.staging,
                )
            })
        };
        if let Some(why) = over {
            return Err(Status::resource_exhausted(format!(
                "the volume does not fit on this node: {why}; ask for less (cache_size, \
                 staging_size, no_cache) or schedule the pod on another node"
            )));
        }
        held.insert(target.to_path_buf(), share);
        Ok(())
    }

    /// Takes `share` for a target found mounted (by a driver that ran before
    /// this one): it runs already, so it counts even past the budget.
    pub fn adopt(&self, target: &Path, share: Share) {
        self.held.lock().insert(target.to_path_buf(), share);
    }

    /// Gives up what `target` held.
    pub fn release(&self, target: &Path) {
        self.held.lock().remove(target);
    }

    /// What the published targets hold together, and how many they are.
    pub fn in_use(&self) -> (Share, usize) {
        let held = self.held.lock();
        let total = held.values().fold(Share::default(), |sum, s| Share {
            cache: sum.cache.saturating_add(s.cache),
            staging: sum.staging.saturating_add(s.staging),
        });
        (total, held.len())
    }
}

/// [`bytes`] of a sum of shares, which may pass what a u64 holds.
fn wide_bytes(n: u128) -> String {
    bytes(u64::try_from(n).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn shares_default_to_the_budget_over_the_most_volumes() {
        let budget = NodeBudget::new(800 * MIB, 400 * MIB, 8).unwrap();
        let share = |cache, staging, no_cache, rw| Share::of(&budget, cache, staging, no_cache, rw);
        assert_eq!(
            share(None, None, false, true),
            Share {
                cache: 100 * MIB,
                staging: 50 * MIB
            }
        );
        assert_eq!(share(None, None, false, false).staging, 0);
        assert_eq!(share(None, None, true, true).cache, 0);
        assert_eq!(
            share(Some(MIB), Some(2 * MIB), false, true),
            Share {
                cache: MIB,
                staging: 2 * MIB
            }
        );
        assert!(NodeBudget::new(MIB, 400 * MIB, 8).is_err());
        assert!(NodeBudget::new(0, 400 * MIB, 8).is_ok());
        assert!(NodeBudget::new(800 * MIB, MIB, 8).is_err());
        assert!(NodeBudget::new(800 * MIB, 400 * MIB, 0).is_err());
    }

    #[test]
    fn the_node_s_volumes_never_hold_more_than_its_budget() {
        let budget = Budget::new(NodeBudget::new(100 * MIB, 100 * MIB, 3).unwrap());
        let share = |cache| Share {
            cache: cache * MIB,
            staging: 10 * MIB,
        };
        let target = |n: u32| PathBuf::from(format!("/pods/{n}/mount"));
        budget.reserve(&target(1), share(60)).unwrap();
        // A republish of the same target replaces its share.
        budget.reserve(&target(1), share(60)).unwrap();
        let refused = budget.reserve(&target(2), share(50)).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        let message = refused.message();
        assert!(message.contains("--node-cache-size 100.0 MiB"), "{message}");
        assert!(message.contains("40.0 MiB left"), "{message}");
        budget.reserve(&target(2), share(40)).unwrap();
        // The most volumes.
        budget.reserve(&target(3), share(0)).unwrap();
        let refused = budget.reserve(&target(4), share(0)).unwrap_err();
        assert!(refused.message().contains("--max-volumes"), "{refused:?}");
        assert_eq!(
            budget.in_use(),
            (
                Share {
                    cache: 100 * MIB,
                    staging: 30 * MIB
                },
                3
            )
        );
        budget.release(&target(1));
        // A share asked for as the most bytes there are passes no sum.
        let endless = Share {
            cache: u64::MAX,
            staging: u64::MAX,
        };
        let refused = budget.reserve(&target(4), endless).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        budget.reserve(&target(4), share(60)).unwrap();
        let (total, count) = budget.in_use();
        assert!(total.cache <= 100 * MIB && count == 3);
    }
}
