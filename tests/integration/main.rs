//! The cross-service tests, one test binary for all (each test still runs in its own process
//! under nextest): one link instead of ten saves CI minutes and a gigabyte of disk.

mod acl;
mod alertmanager;
mod concurrency;
mod degradation;
mod exactness;
mod ingest;
mod lifecycle;
mod observability_deploy;
mod seeds;
mod webhook;
