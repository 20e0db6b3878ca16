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

/// `ADIR/epoch` is there but cannot be read as an epoch. `claimed` is the
/// highest claim `ADIR/epoch.N` found beside it, which fences meanwhile.
#[derive(Debug)]
pub struct Unreadable {
    pub why: String,
    pub claimed: Option<Epoch>,
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.why)?;
        match self.claimed {
            Some(e) => write!(f, "; the highest claim there is epoch.{}: write {} into it (one line) to repair it", e.0, e.0),
            None => write!(f, "; no epoch.N claim is there either: write the highest epoch any node of this system has reached into it (one line), or remove it if none was ever promoted"),
        }
    }
}

/// The highest epoch the archive knows: what `ADIR/epoch` records, or a
/// higher claim `ADIR/epoch.N` (a promotion claims before it rewrites
/// `epoch`), so that a lost `epoch` file unfences nobody. `None` when the
/// archive holds neither; an error when `epoch` is there but unreadable or
/// not a number: fencing must never fail open on a damaged file.
pub fn highest(adir: &Path) -> Result<Option<Epoch>, Unreadable> {
    let recorded = match recorded(adir) {
        Ok(Some(recorded)) => recorded,
        Ok(None) => return Ok(highest_claim(adir)),
        Err(why) => {
            return Err(Unreadable {
                why,
                claimed: highest_claim(adir),
            })
        }
    };
    // Claims are made one above the highest known: probing upwards finds
    // one made after `epoch` was last written without listing the archive.
    let mut n = recorded;
    while adir.join(format!("epoch.{}", n + 1)).exists() {
        n += 1;
    }
    Ok(Some(Epoch(n)))
}

/// The epoch `ADIR/epoch` records: `None` when there is no such file, why
/// not when it cannot be read as one.
fn recorded(adir: &Path) -> Result<Option<u64>, String> {
    let path = adir.join(HIGHEST);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("could not read {}: {e}", path.display())),
    };
    match text.trim().parse::<u64>() {
        Ok(epoch) => Ok(Some(epoch)),
        Err(_) => Err(format!(
            "{} holds {:?}, not an epoch",
            path.display(),
            text.trim()
        )),
    }
}

/// The highest `ADIR/epoch.N` claim, from a listing of the archive.
fn highest_claim(adir: &Path) -> Option<Epoch> {
    std::fs::read_dir(adir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("epoch.")?
                .parse::<u64>()
                .ok()
        })
        .max()
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
    let known = highest(adir).map_err(|e| ClaimError::Failed(e.to_string()))?;
    if let Some(newer) = known.filter(|h| *h > epoch) {
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
    // (A damaged file was refused above, by `highest`.)
    if recorded(adir).ok().flatten().is_none_or(|h| h < epoch.0) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_epoch_counts_claims_and_never_fails_open() {
        let adir = tempfile::tempdir().unwrap();
        let at = |name: &str, text: &str| std::fs::write(adir.path().join(name), text).unwrap();
        assert_eq!(highest(adir.path()).unwrap(), None);
        at("epoch", "1\n");
        assert_eq!(highest(adir.path()).unwrap(), Some(Epoch(1)));
        // A claim made before `epoch` was rewritten.
        at("epoch.2", "s1 token\n");
        assert_eq!(highest(adir.path()).unwrap(), Some(Epoch(2)));
        std::fs::remove_file(adir.path().join("epoch")).unwrap();
        assert_eq!(highest(adir.path()).unwrap(), Some(Epoch(2)));
        at("epoch", "");
        let e = highest(adir.path()).unwrap_err();
        assert_eq!(e.claimed, Some(Epoch(2)));
        assert!(e.to_string().contains("not an epoch"), "{e}");
    }
}
