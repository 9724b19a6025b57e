//! Generated protobuf and tonic code for the node-to-node services.
//! Conversions to domain types live in the node crate's `transport` room.

pub mod v1 {
    tonic::include_proto!("barman.v1");
}
