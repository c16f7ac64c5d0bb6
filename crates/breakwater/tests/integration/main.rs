//! Integration tests of the `breakwater` binary and its components, one test binary for all
//! (each test still runs in its own process under nextest): linking one binary instead of
//! nineteen saves CI minutes and gigabytes of disk.

mod amplification;
mod auth;
mod classification;
mod config_check;
mod doctor;
mod faults;
mod fuzz_corpus;
mod ha_alertmanager;
mod hostile_clients;
mod logs;
mod observability;
mod rate_limits;
mod replicas;
mod secrets;
mod split_mode;
mod startup;
mod support;
mod tls;
mod up_in_process;
mod up_restart;
