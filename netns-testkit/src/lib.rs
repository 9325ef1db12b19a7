//! The test kit of netns-nat: what the tests and the benchmark use and the product never
//! does, so that none of it is compiled into `netns-nat`.
//!
//! - [`packet`]: frames built byte by byte and read back, every checksum computed in full
//!   (the tests' crafted and hostile input and their checks; the benchmark's load).
//! - [`progtest`]: the NAT's programs run on crafted frames with BPF_PROG_TEST_RUN, each
//!   copy of the object in a namespace of its own.

pub mod packet;
pub mod progtest;
