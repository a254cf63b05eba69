//! The pieces of `roomshard-bench`, from the outside in:
//!
//! - [`args`]: flags, checked into a [`args::Plan`] (loopback-only node addresses);
//! - [`run`]: the phases (connect, warm up, send, drain, report) and the idle mode;
//! - [`client`]: one simulated user, its connection, reconnects and what it observed;
//! - [`wire`]: the protocol v1 frames the bench sends and reads;
//! - [`audit`]: after the run, every room's whole history, checked for cuts;
//! - [`histogram`]: latency percentiles in fixed memory;
//! - [`procfs`]: the nodes' CPU time and memory from `/proc`, and our own file limit;
//! - [`scrape`]: optional before/after reads of the nodes' `/metrics`.

pub mod args;
pub mod audit;
pub mod client;
pub mod histogram;
pub mod procfs;
pub mod run;
pub mod scrape;
pub mod wire;
