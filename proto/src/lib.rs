//! cairn's gRPC API contract. The `.proto` files and the generated Rust land
//! here with the node issue.
