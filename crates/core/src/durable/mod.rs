//! What the broker writes to disk, in the store's opaque records: messages (one record per
//! persistent message in a durable queue, or per paged-out transient one) and definitions
//! (one record per change to a durable exchange, queue or binding). The store (`warren-store`)
//! knows nothing of these layouts; this module knows nothing of files.

pub mod access;
pub mod definitions;
#[doc(hidden)]
pub mod fuzz_support;
pub mod record;
