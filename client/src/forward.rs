//! Calls that take and return the protobuf messages as they are, with the
//! caller's deadline: what a proxy (the gateway) forwards. Routing,
//! retries and leader following are the client's; a write without a
//! request id gets one, so the client's retries apply it once.

use std::time::Duration;

use cairn_proto::cluster::cluster_client::ClusterClient;
use cairn_proto::cluster::{self as cpb};
use cairn_proto::kv::{self as pb};

use crate::client::{request, Client, Route};
use crate::error::Result;

pub(crate) fn read_route(consistency: i32) -> Route {
    if consistency == pb::ReadConsistency::Serializable as i32 {
        Route::Any
    } else {
        Route::Leader
    }
}

macro_rules! forward {
    ($(#[$doc:meta])* $name:ident, $method:ident, $req:ty, $resp:ty, $route:expr, $fix:expr) => {
        $(#[$doc])*
        pub async fn $name(&self, mut req: $req, timeout: Duration) -> Result<$resp> {
            #[allow(clippy::redundant_closure_call)]
            ($fix)(self, &mut req);
            let route = ($route)(&req);
            self.call_within(route, timeout, |up, t| up.kv(req.clone(), t))
            .await
        }
    };
}

impl Client {
    /// Gives a write without a request id one.
    pub(crate) fn with_id(&self, id: &mut Option<pb::RequestId>) {
        if id.is_none() {
            *id = Some(self.request_id());
        }
    }

    forward!(
        /// Forwards a Put to the leader.
        forward_put, put, pb::PutRequest, pb::PutResponse,
        |_: &pb::PutRequest| Route::Leader,
        |c: &Client, r: &mut pb::PutRequest| c.with_id(&mut r.request_id)
    );
    forward!(
        /// Forwards a Delete to the leader.
        forward_delete, delete, pb::DeleteRequest, pb::DeleteResponse,
        |_: &pb::DeleteRequest| Route::Leader,
        |c: &Client, r: &mut pb::DeleteRequest| c.with_id(&mut r.request_id)
    );
    forward!(
        /// Forwards a Txn to the leader.
        forward_txn, txn, pb::TxnRequest, pb::TxnResponse,
        |_: &pb::TxnRequest| Route::Leader,
        |c: &Client, r: &mut pb::TxnRequest| c.with_id(&mut r.request_id)
    );
    forward!(
        /// Forwards a Get: to the leader, or to any replica when serializable.
        forward_get, get, pb::GetRequest, pb::GetResponse,
        |r: &pb::GetRequest| read_route(r.consistency),
        |_: &Client, _: &mut pb::GetRequest| ()
    );
    forward!(
        /// Forwards a Scan: to the leader, or to any replica when serializable.
        forward_scan, scan, pb::ScanRequest, pb::ScanResponse,
        |r: &pb::ScanRequest| read_route(r.consistency),
        |_: &Client, _: &mut pb::ScanRequest| ()
    );

    /// Forwards a Status to the leader (any node when none is known).
    pub async fn forward_status(&self, timeout: Duration) -> Result<cpb::StatusResponse> {
        self.call_within(Route::Leader, timeout, |up, t| async move {
            Ok(ClusterClient::new(up.ch)
                .status(request(cpb::StatusRequest {}, t))
                .await?
                .into_inner())
        })
        .await
    }
}
