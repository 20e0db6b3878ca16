//! Generations and fencing: the epoch a node writes in.

pub mod epoch;

pub use epoch::{Epoch, EpochFile};
