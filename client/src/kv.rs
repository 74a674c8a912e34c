//! The typed key-value API: put, get, delete, scan, transactions.

use bytes::Bytes;
use cairn_proto::kv::{self as pb, KeyValue, ResponseHeader};
use futures::Stream;

use crate::client::{Client, Route};
use crate::error::{Error, Result};

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Sees every write acknowledged before the read started; served
    /// through the leader.
    #[default]
    Linearizable,
    /// Served by any replica from its own state: possibly stale, never
    /// uncommitted.
    Serializable,
}

impl Consistency {
    fn proto(self) -> i32 {
        match self {
            Consistency::Linearizable => pb::ReadConsistency::Linearizable as i32,
            Consistency::Serializable => pb::ReadConsistency::Serializable as i32,
        }
    }
    fn route(self) -> Route {
        match self {
            Consistency::Linearizable => Route::Leader,
            Consistency::Serializable => Route::Any,
        }
    }
}

/// The outcome of a put.
#[derive(Debug, Clone)]
pub struct PutResult {
    /// The revision of the write.
    pub revision: u64,
    /// The previous pair, when asked for and the key existed.
    pub prev: Option<KeyValue>,
    /// The response header.
    pub header: ResponseHeader,
}

/// The outcome of a get.
#[derive(Debug, Clone)]
pub struct GetResult {
    /// The pair, None when the key does not exist.
    pub kv: Option<KeyValue>,
    /// The response header (its revision is the store's at the read).
    pub header: ResponseHeader,
}

/// The outcome of a delete.
#[derive(Debug, Clone)]
pub struct DeleteResult {
    /// The revision of the write.
    pub revision: u64,
    /// How many keys were deleted.
    pub deleted: u64,
    /// The deleted pairs, when asked for.
    pub prev: Vec<KeyValue>,
}

fn bytes(b: impl AsRef<[u8]>) -> Bytes {
    Bytes::copy_from_slice(b.as_ref())
}

fn header(h: Option<ResponseHeader>) -> ResponseHeader {
    h.unwrap_or_default()
}

impl Client {
    /// Sets `key` to `value`; returns the write's revision.
    pub async fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<u64> {
        Ok(self.put_full(key, value, false).await?.revision)
    }

    /// Sets `key` to `value`, returning the previous pair when `prev_kv`.
    pub async fn put_full(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        prev_kv: bool,
    ) -> Result<PutResult> {
        let req = pb::PutRequest {
            key: bytes(key),
            value: bytes(value),
            prev_kv,
            request_id: None,
        };
        let r = self
            .write_call(req, self.inner.config.timeout, |r| &mut r.request_id)
            .await?;
        let header = header(r.header);
        Ok(PutResult {
            revision: header.revision,
            prev: r.prev_kv,
            header,
        })
    }

    /// Reads `key` linearizably; None when it does not exist.
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<KeyValue>> {
        Ok(self.get_with(key, Consistency::Linearizable).await?.kv)
    }

    /// Reads `key` with the given consistency.
    pub async fn get_with(
        &self,
        key: impl AsRef<[u8]>,
        consistency: Consistency,
    ) -> Result<GetResult> {
        let req = pb::GetRequest {
            key: bytes(key),
            consistency: consistency.proto(),
        };
        let r = self
            .call(consistency.route(), |up, t| up.kv(req.clone(), t))
            .await?;
        Ok(GetResult {
            kv: r.kv,
            header: header(r.header),
        })
    }

    /// Deletes `key`; returns how many keys were deleted (0 or 1).
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<u64> {
        Ok(self.delete_full(key, false, false).await?.deleted)
    }

    /// Deletes every key under `prefix` (which must not be empty).
    pub async fn delete_prefix(&self, prefix: impl AsRef<[u8]>) -> Result<u64> {
        Ok(self.delete_full(prefix, true, false).await?.deleted)
    }

    /// Deletes `key`, or every key under it with `prefix`, returning the
    /// deleted pairs when `prev_kv`.
    pub async fn delete_full(
        &self,
        key: impl AsRef<[u8]>,
        prefix: bool,
        prev_kv: bool,
    ) -> Result<DeleteResult> {
        let req = pb::DeleteRequest {
            key: bytes(key),
            prefix,
            prev_kv,
            request_id: None,
        };
        let r = self
            .write_call(req, self.inner.config.timeout, |r| &mut r.request_id)
            .await?;
        Ok(DeleteResult {
            revision: header(r.header).revision,
            deleted: r.deleted,
            prev: r.prev_kvs,
        })
    }

    /// One page of a scan, as the server answers it.
    pub async fn scan_page(&self, req: pb::ScanRequest) -> Result<pb::ScanResponse> {
        let route = if req.consistency == pb::ReadConsistency::Serializable as i32 {
            Route::Any
        } else {
            Route::Leader
        };
        self.call(route, |up, t| up.kv(req.clone(), t)).await
    }

    /// The pairs a scan selects, page after page, as one stream. Each page
    /// is read with the scan's consistency; pages are not one snapshot.
    pub fn scan(&self, scan: Scan) -> impl Stream<Item = Result<KeyValue>> + Send + 'static {
        struct State {
            client: Client,
            req: pb::ScanRequest,
            left: Option<u64>,
            page: std::vec::IntoIter<KeyValue>,
            done: bool,
        }
        let state = State {
            client: self.clone(),
            left: scan.limit,
            req: scan.request(),
            page: Vec::new().into_iter(),
            done: false,
        };
        futures::stream::unfold(state, |mut s| async move {
            loop {
                if s.left == Some(0) {
                    return None;
                }
                if let Some(kv) = s.page.next() {
                    if let Some(l) = s.left.as_mut() {
                        *l -= 1;
                    }
                    return Some((Ok(kv), s));
                }
                if s.done {
                    return None;
                }
                if let Some(l) = s.left {
                    let page = if s.req.limit == 0 {
                        u64::MAX
                    } else {
                        u64::from(s.req.limit)
                    };
                    s.req.limit = u32::try_from(l.min(page)).unwrap_or(u32::MAX);
                }
                match s.client.scan_page(s.req.clone()).await {
                    Ok(r) => {
                        s.done = !r.more;
                        s.req.continuation = r.continuation;
                        s.page = r.kvs.into_iter();
                    }
                    Err(e) => {
                        s.done = true;
                        s.left = Some(0);
                        return Some((Err(e), s));
                    }
                }
            }
        })
    }

    /// Starts a transaction: compares, then one list of operations or the
    /// other, applied atomically as one revision.
    pub fn txn(&self) -> Txn {
        Txn {
            client: self.clone(),
            req: pb::TxnRequest::default(),
        }
    }

    /// Compare-and-swap in one call: sets `key` to `new` if it holds
    /// `expect` (or, with `None`, if it does not exist). Returns the write's
    /// revision, or [`Error::CompareFailed`] with the key's current state.
    pub async fn cas(
        &self,
        key: impl AsRef<[u8]>,
        expect: Option<&[u8]>,
        new: impl AsRef<[u8]>,
    ) -> Result<u64> {
        let key = bytes(key);
        let cmp = match expect {
            Some(v) => Compare::value(&key).eq(v),
            None => Compare::create_revision(&key).eq(0),
        };
        let r = self
            .txn()
            .when([cmp])
            .and_then([TxnOp::put(&key, new)])
            .or_else([TxnOp::get(&key)])
            .commit()
            .await?;
        if r.succeeded {
            return Ok(r.revision);
        }
        let current = r.responses.into_iter().find_map(|op| match op.response {
            Some(pb::response_op::Response::Get(g)) => g.kv,
            _ => None,
        });
        Err(Error::CompareFailed {
            current: current.map(Box::new),
        })
    }
}

/// What a scan selects.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    start: Bytes,
    end: Bytes,
    prefix: Bytes,
    limit: Option<u64>,
    page_size: u32,
    keys_only: bool,
    consistency: Consistency,
}

impl Scan {
    /// Every key.
    pub fn all() -> Scan {
        Scan::default()
    }
    /// The keys that start with `p`.
    pub fn prefix(p: impl AsRef<[u8]>) -> Scan {
        Scan {
            prefix: bytes(p),
            ..Scan::default()
        }
    }
    /// The keys in `[start, end)`; an empty `end` means to the last key.
    pub fn range(start: impl AsRef<[u8]>, end: impl AsRef<[u8]>) -> Scan {
        Scan {
            start: bytes(start),
            end: bytes(end),
            ..Scan::default()
        }
    }
    /// At most `n` pairs in all.
    pub fn limit(mut self, n: u64) -> Scan {
        self.limit = Some(n);
        self
    }
    /// Pairs per round trip (0: the server's page size).
    pub fn page_size(mut self, n: u32) -> Scan {
        self.page_size = n;
        self
    }
    /// Keys without their values.
    pub fn keys_only(mut self) -> Scan {
        self.keys_only = true;
        self
    }
    /// Read with this consistency (linearizable by default).
    pub fn consistency(mut self, c: Consistency) -> Scan {
        self.consistency = c;
        self
    }
    fn request(&self) -> pb::ScanRequest {
        pb::ScanRequest {
            start: self.start.clone(),
            end: self.end.clone(),
            prefix: self.prefix.clone(),
            limit: self.page_size,
            keys_only: self.keys_only,
            consistency: self.consistency.proto(),
            continuation: Bytes::new(),
        }
    }
}

/// One condition of a transaction. Built with [`Compare::value`],
/// [`Compare::version`], [`Compare::create_revision`] or
/// [`Compare::mod_revision`], then a comparison.
#[derive(Debug, Clone)]
pub struct Compare(pb::Compare);

/// A compare on a key's value, waiting for its operator.
#[derive(Debug, Clone)]
pub struct ValueCompare(Bytes);

/// A compare on one of a key's numbers, waiting for its operator.
#[derive(Debug, Clone)]
pub struct NumberCompare(Bytes, pb::compare::Target);

impl Compare {
    /// Compares the key's value (a missing key's value is empty).
    pub fn value(key: impl AsRef<[u8]>) -> ValueCompare {
        ValueCompare(bytes(key))
    }
    /// Compares the key's version (0 when missing).
    pub fn version(key: impl AsRef<[u8]>) -> NumberCompare {
        NumberCompare(bytes(key), pb::compare::Target::Version)
    }
    /// Compares the revision that created the key (0 when missing).
    pub fn create_revision(key: impl AsRef<[u8]>) -> NumberCompare {
        NumberCompare(bytes(key), pb::compare::Target::CreateRevision)
    }
    /// Compares the revision that last changed the key (0 when missing).
    pub fn mod_revision(key: impl AsRef<[u8]>) -> NumberCompare {
        NumberCompare(bytes(key), pb::compare::Target::ModRevision)
    }
    /// The protobuf message.
    pub fn into_proto(self) -> pb::Compare {
        self.0
    }
}

macro_rules! compare_ops {
    ($($name:ident => $op:ident),*) => {
        impl ValueCompare {
            $(
                #[doc = concat!("The value is ", stringify!($name), " `v` (byte order).")]
                pub fn $name(self, v: impl AsRef<[u8]>) -> Compare {
                    Compare(pb::Compare {
                        key: self.0,
                        target: pb::compare::Target::Value as i32,
                        op: pb::compare::Op::$op as i32,
                        value: bytes(v),
                        number: 0,
                    })
                }
            )*
        }
        impl NumberCompare {
            $(
                #[doc = concat!("The number is ", stringify!($name), " `n`.")]
                pub fn $name(self, n: u64) -> Compare {
                    Compare(pb::Compare {
                        key: self.0,
                        target: self.1 as i32,
                        op: pb::compare::Op::$op as i32,
                        value: Bytes::new(),
                        number: n,
                    })
                }
            )*
        }
    };
}
compare_ops!(eq => Equal, ne => NotEqual, lt => Less, gt => Greater);

/// One operation of a transaction branch.
#[derive(Debug, Clone)]
pub struct TxnOp(pb::RequestOp);

impl TxnOp {
    /// Sets a key.
    pub fn put(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> TxnOp {
        TxnOp(pb::RequestOp {
            request: Some(pb::request_op::Request::Put(pb::PutRequest {
                key: bytes(key),
                value: bytes(value),
                ..Default::default()
            })),
        })
    }
    /// Reads a key (at the transaction's revision).
    pub fn get(key: impl AsRef<[u8]>) -> TxnOp {
        TxnOp(pb::RequestOp {
            request: Some(pb::request_op::Request::Get(pb::GetRequest {
                key: bytes(key),
                ..Default::default()
            })),
        })
    }
    /// Deletes a key.
    pub fn delete(key: impl AsRef<[u8]>) -> TxnOp {
        TxnOp(pb::RequestOp {
            request: Some(pb::request_op::Request::Delete(pb::DeleteRequest {
                key: bytes(key),
                ..Default::default()
            })),
        })
    }
    /// Deletes every key under a prefix.
    pub fn delete_prefix(prefix: impl AsRef<[u8]>) -> TxnOp {
        TxnOp(pb::RequestOp {
            request: Some(pb::request_op::Request::Delete(pb::DeleteRequest {
                key: bytes(prefix),
                prefix: true,
                ..Default::default()
            })),
        })
    }
    /// Reads the keys of a scan (one page).
    pub fn scan(scan: &Scan) -> TxnOp {
        let mut req = scan.request();
        if let Some(l) = scan.limit {
            req.limit = u32::try_from(l).unwrap_or(u32::MAX);
        }
        TxnOp(pb::RequestOp {
            request: Some(pb::request_op::Request::Scan(req)),
        })
    }
    /// The protobuf message.
    pub fn into_proto(self) -> pb::RequestOp {
        self.0
    }
}

/// A transaction being built; [`Txn::commit`] sends it.
#[derive(Clone)]
pub struct Txn {
    client: Client,
    req: pb::TxnRequest,
}

/// The outcome of a transaction.
#[derive(Debug, Clone)]
pub struct TxnResult {
    /// Whether every compare held (so the `and_then` branch ran).
    pub succeeded: bool,
    /// The transaction's revision.
    pub revision: u64,
    /// One response per operation of the branch that ran.
    pub responses: Vec<pb::ResponseOp>,
}

impl Txn {
    /// Adds conditions; all must hold.
    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Txn {
        self.req.compares.extend(compares.into_iter().map(|c| c.0));
        self
    }
    /// Operations run when every condition holds.
    pub fn and_then(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Txn {
        self.req.success.extend(ops.into_iter().map(|o| o.0));
        self
    }
    /// Operations run otherwise.
    pub fn or_else(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Txn {
        self.req.failure.extend(ops.into_iter().map(|o| o.0));
        self
    }
    /// Sends the transaction (to the leader, with a request id).
    pub async fn commit(self) -> Result<TxnResult> {
        let timeout = self.client.inner.config.timeout;
        let r = self
            .client
            .write_call(self.req, timeout, |r| &mut r.request_id)
            .await?;
        Ok(TxnResult {
            succeeded: r.succeeded,
            revision: header(r.header).revision,
            responses: r.responses,
        })
    }
}
