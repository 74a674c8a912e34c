//! The shared harness of real `cairn node` processes lives in
//! cairn-client (feature `testing`), so the node, client and gateway
//! tests use one.
pub use cairn_client::testing::*;
