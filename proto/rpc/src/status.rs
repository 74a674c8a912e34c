//! How a call's outcome travels and is named: a failed call's status
//! inside a `KV.Batch` reply, the label a metric gives a status code, and
//! the sizes at which batch messages are closed.

use cairn_proto::kv as pb;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::{Code, Status};

/// A call larger than this goes as a unary call, and a message of calls
/// (or of answers) is closed once it reaches this size: a large value
/// must not hold up the small calls beside it, and a message must stay
/// far under the server's message limit.
pub const CALL_BYTES: usize = 256 << 10;
/// See [`CALL_BYTES`]: the size at which the server closes a message of
/// answers.
pub const REPLY_BYTES: usize = 256 << 10;
/// A failed call's status as it travels in a [`pb::BatchReply`].
pub fn status_to_pb(s: &Status) -> pb::CallError {
    let trailers = s
        .metadata()
        .iter()
        .filter_map(|kv| match kv {
            tonic::metadata::KeyAndValueRef::Ascii(k, v) => Some(pb::Trailer {
                key: k.as_str().to_string(),
                value: v.to_str().ok()?.to_string(),
            }),
            tonic::metadata::KeyAndValueRef::Binary(..) => None,
        })
        .collect();
    pb::CallError {
        code: s.code() as i32,
        message: s.message().to_string(),
        trailers,
    }
}

/// The status a [`pb::CallError`] carries (trailers that are not valid
/// metadata are dropped).
pub fn status_from_pb(e: pb::CallError) -> Status {
    let mut md = MetadataMap::new();
    for t in e.trailers {
        if let (Ok(k), Ok(v)) = (
            MetadataKey::from_bytes(t.key.as_bytes()),
            MetadataValue::try_from(t.value.as_str()),
        ) {
            md.insert(k, v);
        }
    }
    Status::with_metadata(Code::from_i32(e.code), e.message, md)
}

/// A status code as a metric label, without allocating per request.
pub fn code_label(c: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match c {
        Ok => "OK",
        Cancelled => "Cancelled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_survives_the_trip() {
        let mut s = Status::unavailable("not the leader");
        s.metadata_mut()
            .insert(cairn_proto::LEADER_ADDR, "127.0.0.1:7001".parse().unwrap());
        let back = status_from_pb(status_to_pb(&s));
        assert_eq!(back.code(), Code::Unavailable);
        assert_eq!(back.message(), "not the leader");
        assert_eq!(
            back.metadata().get(cairn_proto::LEADER_ADDR).unwrap(),
            "127.0.0.1:7001"
        );
    }
}
