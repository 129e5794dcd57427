//! What a volume counts, as Prometheus reads it: `--metrics-listen ADDR` on
//! `s3vol mount` and on `s3vol csi` serves the text exposition format at
//! `/metrics` (docs/DEPLOY.md lists every series).
//!
//! The numbers are the ones `s3vol stats --json` prints: [`exposition`] turns
//! a volume's report into metric families, [`server`] answers the scrapes,
//! and [`histogram`] is the latency histogram the request counters keep.

pub mod exposition;
pub mod histogram;
pub mod server;

pub use exposition::{Exposition, Labels};
pub use server::{Listener, Scrape, bind, serve};
