//! PostgreSQL's v3 wire protocol, server side: framing and message codecs
//! ([`codec`]) and SCRAM-SHA-256 authentication ([`scram`]). The session
//! loop that uses them lives in `node::session`.

pub mod codec;
pub mod reader;
pub mod scram;
