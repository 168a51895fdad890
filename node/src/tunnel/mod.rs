//! The encryption tunnel's agent side: the device loop that seals and opens packets.
pub mod device;
