//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it, server side:
//! the verifier PostgreSQL stores instead of a password, and the two-step
//! exchange that checks a client's proof against it. Channel binding is not
//! offered (walship does not speak TLS), so clients must send `n,,` or `y,,`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// A SCRAM-SHA-256 verifier (what the server keeps instead of a password).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScramVerifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

type HmacSha256 = Hmac<Sha256>;

pub fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// A password as SCRAM hashes it: SASLprep'd (RFC 4013; NFKC, spaces
/// mapped, some characters removed), or the bytes as given when that
/// fails (a prohibited character), as PostgreSQL's `pg_saslprep` and libpq
/// do. Both ends must agree: psql and pg_receivewal prepare the password
/// before they prove it, so a verifier made from an unprepared non-ASCII
/// password would never match theirs.
fn prepared(password: &str) -> std::borrow::Cow<'_, str> {
    if password.is_ascii() {
        return password.into();
    }
    // Nothing left (only characters SASLprep removes): the bytes as
    // given, as pg_saslprep does too.
    match stringprep::saslprep(password) {
        Ok(prepared) if !prepared.is_empty() => prepared,
        _ => password.into(),
    }
}

/// SCRAM's `Hi()`: PBKDF2 with HMAC-SHA-256.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut block = salt.to_vec();
    block.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password, &block);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        for (o, x) in out.iter_mut().zip(u) {
            *o ^= x;
        }
    }
    out
}

impl ScramVerifier {
    /// A verifier for `password` with a new random salt, 4096 iterations
    /// (PostgreSQL's default).
    pub fn new(password: &str) -> ScramVerifier {
        let salt: [u8; 16] = rand::random();
        ScramVerifier::with_salt(password, &salt, 4096)
    }

    /// The verifier for `password` (SASLprep'd first, see [`prepared`]).
    pub fn with_salt(password: &str, salt: &[u8], iterations: u32) -> ScramVerifier {
        let salted = hi(prepared(password).as_bytes(), salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        ScramVerifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key: hmac(&salted, b"Server Key"),
        }
    }

    /// A verifier no password matches, for a role that does not exist or
    /// has no password: the exchange runs as for any role and fails only
    /// at the proof, so a client cannot tell which roles exist (as
    /// PostgreSQL's mock authentication). The salt is derived from the
    /// system's secret `nonce` and the name: the same for a name on every
    /// node and across restarts, as a real role's is, and not computable
    /// without the nonce.
    pub fn mock(user: &str, nonce: &[u8; 32]) -> ScramVerifier {
        ScramVerifier {
            iterations: 4096,
            salt: hmac(nonce, user.as_bytes())[..16].to_vec(),
            stored_key: rand::random(),
            server_key: rand::random(),
        }
    }

    pub fn parse(text: &str) -> Option<ScramVerifier> {
        let rest = text.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iter, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        Some(ScramVerifier {
            iterations: iter.parse().ok().filter(|&i| i > 0)?,
            salt: B64.decode(salt).ok()?,
            stored_key: B64.decode(stored).ok()?.try_into().ok()?,
            server_key: B64.decode(server).ok()?.try_into().ok()?,
        })
    }
}

impl std::fmt::Display for ScramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("channel binding is not supported (walship does not use TLS)")]
    ChannelBinding,
    #[error("the client's proof does not match")]
    WrongProof,
}

/// One exchange, server side.
pub struct ScramServer {
    verifier: ScramVerifier,
    nonce: String,
    client_first_bare: String,
    server_first: String,
}

fn attr(part: Option<&str>, name: char) -> Result<&str, ScramError> {
    part.and_then(|p| p.strip_prefix(name))
        .and_then(|p| p.strip_prefix('='))
        .ok_or(ScramError::Malformed("missing attribute"))
}

impl ScramServer {
    pub fn new(verifier: ScramVerifier) -> ScramServer {
        ScramServer {
            verifier,
            nonce: String::new(),
            client_first_bare: String::new(),
            server_first: String::new(),
        }
    }

    /// Takes client-first-message; returns server-first-message.
    pub fn client_first(&mut self, msg: &[u8]) -> Result<String, ScramError> {
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (gs2, bare) =
            if let Some(rest) = msg.strip_prefix("n,,").or_else(|| msg.strip_prefix("y,,")) {
                ("", rest)
            } else if msg.starts_with("p=") {
                return Err(ScramError::ChannelBinding);
            } else {
                return Err(ScramError::Malformed("bad GS2 header"));
            };
        let _ = gs2;
        let mut parts = bare.split(',');
        let _user = attr(parts.next(), 'n')?;
        let client_nonce = attr(parts.next(), 'r')?;
        if client_nonce.is_empty() || client_nonce.contains(',') {
            return Err(ScramError::Malformed("bad nonce"));
        }
        let server_part: [u8; 18] = rand::random();
        self.nonce = format!("{client_nonce}{}", B64.encode(server_part));
        self.client_first_bare = bare.to_string();
        self.server_first = format!(
            "r={},s={},i={}",
            self.nonce,
            B64.encode(&self.verifier.salt),
            self.verifier.iterations
        );
        Ok(self.server_first.clone())
    }

    /// Takes client-final-message; returns server-final-message if the
    /// proof checks.
    pub fn client_final(&mut self, msg: &[u8]) -> Result<String, ScramError> {
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let proof_at = msg
            .rfind(",p=")
            .ok_or(ScramError::Malformed("missing proof"))?;
        let without_proof = &msg[..proof_at];
        let proof = B64
            .decode(&msg[proof_at + 3..])
            .map_err(|_| ScramError::Malformed("proof is not base64"))?;
        let mut parts = without_proof.split(',');
        let binding = attr(parts.next(), 'c')?;
        if binding != "biws" && binding != "eSws" {
            return Err(ScramError::ChannelBinding);
        }
        if attr(parts.next(), 'r')? != self.nonce {
            return Err(ScramError::Malformed("nonce does not match"));
        }
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let signature = hmac(&self.verifier.stored_key, auth_message.as_bytes());
        if proof.len() != signature.len() {
            return Err(ScramError::WrongProof);
        }
        let client_key: Vec<u8> = proof.iter().zip(signature).map(|(p, s)| p ^ s).collect();
        let computed = sha256(&client_key);
        let differs = computed
            .iter()
            .zip(self.verifier.stored_key)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if differs != 0 {
            return Err(ScramError::WrongProof);
        }
        let server_signature = hmac(&self.verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_text_round_trips() {
        let v = ScramVerifier::with_salt("pencil", b"salt", 4096);
        let text = v.to_string();
        assert!(text.starts_with("SCRAM-SHA-256$4096:c2FsdA==$"));
        assert_eq!(ScramVerifier::parse(&text), Some(v));
        assert_eq!(ScramVerifier::parse("md5abc"), None);
    }

    #[test]
    fn passwords_are_saslprepped_as_postgresql_does() {
        let salt = b"0123456789abcdef";
        let v = |p: &str| ScramVerifier::with_salt(p, salt, 16);
        // NFKC and non-ASCII spaces mapped to a space.
        assert_eq!(v("\u{2168}\u{a0}x"), v("IX x"));
        // A soft hyphen is mapped to nothing.
        assert_eq!(v("pass\u{ad}word"), v("password"));
        // Nothing left after SASLprep: the bytes as given, never "".
        assert_ne!(v("\u{ad}"), v(""));
        // Prohibited in SASLprep (a control character beside non-ASCII):
        // the bytes as given, not a refusal.
        assert_ne!(v("\u{e9}\u{7}"), v("\u{e9}"));
        // ASCII is taken as it is, control characters included.
        assert_ne!(v("a\u{7}"), v("a"));
    }

    /// The client side of RFC 5802, to drive the server.
    fn client_final(password: &str, client_first_bare: &str, server_first: &str) -> String {
        let mut fields = server_first.split(',');
        let nonce = fields.next().unwrap().strip_prefix("r=").unwrap();
        let salt = B64
            .decode(fields.next().unwrap().strip_prefix("s=").unwrap())
            .unwrap();
        let iters: u32 = fields
            .next()
            .unwrap()
            .strip_prefix("i=")
            .unwrap()
            .parse()
            .unwrap();
        let salted = hi(password.as_bytes(), &salt, iters);
        let client_key = hmac(&salted, b"Client Key");
        let stored = sha256(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth = format!("{client_first_bare},{server_first},{without_proof}");
        let sig = hmac(&stored, auth.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(sig).map(|(a, b)| a ^ b).collect();
        format!("{without_proof},p={}", B64.encode(proof))
    }

    #[test]
    fn exchange_accepts_the_right_password_only() {
        for (password, ok) in [("secret", true), ("wrong", false)] {
            let mut s = ScramServer::new(ScramVerifier::new("secret"));
            let first = s.client_first(b"n,,n=,r=abcdef").unwrap();
            let fin = client_final(password, "n=,r=abcdef", &first);
            assert_eq!(s.client_final(fin.as_bytes()).is_ok(), ok);
        }
        let mut s = ScramServer::new(ScramVerifier::new("x"));
        assert_eq!(
            s.client_first(b"p=tls-server-end-point,,n=,r=a"),
            Err(ScramError::ChannelBinding)
        );
        assert!(s.client_first(b"garbage").is_err());
    }
}
