//! Reading the mount table and unmounting what a fleet mounted.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd;
use crate::error::Result;

/// One entry of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where it is mounted.
    pub target: PathBuf,
    /// Its filesystem type.
    pub fstype: String,
    /// Whether it is in a peer group (`shared:N`): mounts made below it propagate to
    /// its peers, and kubelet takes its root folder on such a mount as already set up.
    pub shared: bool,
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let target = fields.get(4)?;
            let sep = fields.iter().position(|f| *f == "-")?;
            let fstype = fields.get(sep + 1)?;
            let optional = fields.get(6..sep).unwrap_or_default();
            Some(Mount {
                target: PathBuf::from(unescape(target)),
                fstype: (*fstype).to_owned(),
                shared: optional.iter().any(|f| f.starts_with("shared:")),
            })
        })
        .collect()
}

/// The mounts of this process's mount namespace.
pub fn mounts() -> Vec<Mount> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| parse_mountinfo(&t))
        .unwrap_or_default()
}

/// Whether something is mounted exactly at `path`.
pub fn is_mount_point(path: &Path) -> bool {
    mounts().iter().any(|m| m.target == path)
}

/// Mounts at or below `root`, deepest first.
pub fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mounts()
        .into_iter()
        .map(|m| m.target)
        .filter(|t| t.starts_with(root))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// Unmounts everything at or below `root`, deepest first (lazily if busy).
///
/// # Errors
/// If a mount can be neither unmounted nor detached.
pub fn unmount_under(root: &Path) -> Result<()> {
    for _ in 0..4 {
        let found = mounts_under(root);
        if found.is_empty() {
            return Ok(());
        }
        for target in found {
            if !cmd::succeeds(Command::new("umount").arg(&target)) {
                cmd::run(
                    &format!("unmount {}", target.display()),
                    Command::new("umount").arg("-l").arg(&target),
                )?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets_types_and_escapes() {
        let text = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw\n\
                    40 1 0:5 / /run/netns rw shared:2 - tmpfs tmpfs rw\n\
                    41 1 0:4 net:[4026532] /run/netns/x rw - nsfs nsfs rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].target, PathBuf::from("/mnt/with space"));
        assert_eq!(m[0].fstype, "ext3");
        assert_eq!(m[2].fstype, "nsfs");
        assert_eq!(
            m.iter().map(|m| m.shared).collect::<Vec<_>>(),
            [false, true, false]
        );
    }

    #[test]
    fn this_process_sees_its_root_mount() {
        assert!(is_mount_point(Path::new("/")));
    }
}
