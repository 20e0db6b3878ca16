//! Generations and fencing: the epoch a node writes in.

pub mod archive;
pub mod epoch;

pub use epoch::{Epoch, EpochFile};
