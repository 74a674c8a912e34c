//! The cairn client library. The typed client and `cairnctl` land here with
//! the client issue.
