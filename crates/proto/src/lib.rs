//! Generated gRPC contracts of Breakwater (`proto/breakwater/v1`), nothing else.
//!
//! `v1` holds the messages, clients and servers; [`FILE_DESCRIPTOR_SET`] feeds
//! server reflection.

/// Messages and services of package `breakwater.v1`.
#[allow(unreachable_pub, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("breakwater.v1");
}

/// Encoded descriptors of every Breakwater proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("breakwater_descriptor");
