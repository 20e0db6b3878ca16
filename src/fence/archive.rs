//! Epochs in an archive directory, the one place every node of a system
//! can see: `ADIR/epoch.N` is the claim of epoch N (created exclusively,
//! naming the node that claimed it); `ADIR/epoch` holds the highest epoch
//! claimed. A primary that sees a higher epoch there than its own is
//! fenced; an archiver of such a node refuses to archive.

use std::io::Write;
use std::path::Path;

use super::Epoch;
use crate::durable;

/// The file holding the highest epoch claimed.
pub const HIGHEST: &str = "epoch";

/// The highest epoch claimed in the archive, if any (and readable).
pub fn highest(adir: &Path) -> Option<Epoch> {
    std::fs::read_to_string(adir.join(HIGHEST))
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .map(Epoch)
}

/// Claims `epoch` in the archive by exclusive creation of `ADIR/epoch.N`
/// (holding `NODE TOKEN`), then records it as the highest. Two promoters
/// racing for one epoch: exactly one creates the claim; the other is told
/// who won. A claim already made with `token` — by this promotion, before
/// it was interrupted — is this promotion's. A higher epoch claimed
/// already means a newer primary exists: nothing is claimed.
pub fn claim(adir: &Path, epoch: Epoch, node: &str, token: &str) -> Result<(), ClaimError> {
    if !adir.exists() {
        return Err(ClaimError::Failed(format!(
            "archive_directory {} does not exist: cannot claim an epoch there",
            adir.display()
        )));
    }
    let path = adir.join(format!("epoch.{}", epoch.0));
    let claimant = || {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let ours = |text: &str| text.split_whitespace().nth(1) == Some(token);
    if let Some(newer) = highest(adir).filter(|h| *h > epoch) {
        let by =
            std::fs::read_to_string(adir.join(format!("epoch.{}", newer.0))).unwrap_or_default();
        return Err(ClaimError::Lost(format!(
            "the archive {} records epoch {newer} (claimed by {}), newer than epoch {epoch}: a newer primary exists; this node stays a standby (point it at that primary with walship follow)",
            adir.display(),
            by.split_whitespace().next().unwrap_or("an unknown node")
        )));
    }
    let created = durable::create_file_exclusive(&path, |f| {
        f.write_all(format!("{node} {token}\n").as_bytes())
    })
    .map_err(|e| ClaimError::Failed(e.to_string()))?;
    if !created && !ours(&claimant()) {
        return Err(ClaimError::Lost(format!(
            "epoch {epoch} was already claimed in the archive by {}: another promotion won; this node stays a standby",
            claimant().split_whitespace().next().unwrap_or("an unknown node")
        )));
    }
    if highest(adir).is_none_or(|h| h < epoch) {
        durable::replace_file(&adir.join(HIGHEST), format!("{}\n", epoch.0).as_bytes())
            .map_err(|e| ClaimError::Failed(e.to_string()))?;
    }
    Ok(())
}

/// Why [`claim`] claimed nothing.
#[derive(Debug)]
pub enum ClaimError {
    /// Another node holds this epoch or a newer one: the promotion lost,
    /// and must not be retried blindly.
    Lost(String),
    /// The archive could not be read or written.
    Failed(String),
}

impl std::fmt::Display for ClaimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClaimError::Lost(why) | ClaimError::Failed(why) => f.write_str(why),
        }
    }
}
