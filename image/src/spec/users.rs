//! The container's user: `uid[:gid]` or `name[:group]` resolved like
//! docker against the image's `/etc/passwd` and `/etc/group`, read from the
//! unpacked layers as their overlay would show them ([`resolve_user`],
//! [`ResolvedUser`]).

use std::fs;
use std::path::{Path, PathBuf};

use super::{bad, RunConfig};
use crate::error::Result;
use crate::store::Image;

/// The resolved identity of the container process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub home: String,
}

/// Reads `/etc/<name>` of the image whose unpacked layers are `layers`
/// (lowest first, as the store lists them), as the overlay of them would
/// show it, without mounting it: the topmost layer that has the file wins;
/// an overlayfs whiteout deletes it, an opaque /etc hides the layers below.
/// A symlink is never followed (it could point out of the image).
fn read_etc(layers: &[PathBuf], name: &str) -> Option<String> {
    let refuse = |p: &Path| {
        tracing::warn!(path = %p.display(), "not following a symlink in the image's /etc");
        None
    };
    for layer in layers.iter().rev() {
        let etc = layer.join("etc");
        let m = match fs::symlink_metadata(&etc) {
            Ok(m) => m,
            Err(_) => continue,
        };
        if m.file_type().is_symlink() {
            return refuse(&etc);
        }
        // A whiteout (a character device) or any other non-directory
        // hides the /etc of the layers below.
        if !m.is_dir() {
            return None;
        }
        let file = etc.join(name);
        match fs::symlink_metadata(&file) {
            Ok(m) if m.file_type().is_symlink() => return refuse(&file),
            Ok(m) if m.is_file() => return fs::read_to_string(&file).ok(),
            // A whiteout: deleted.
            Ok(_) => return None,
            Err(_) if crate::rootfs::is_opaque(&etc) => return None,
            Err(_) => {}
        }
    }
    None
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
            })
        })
        .collect()
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f[3]
                    .split(',')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

/// Resolves `uid[:gid]` / `name[:group]` against the passwd and group files
/// of the image whose unpacked layers are `layers` (see [`read_etc`]).
pub fn resolve_user(layers: &[PathBuf], user: &str) -> Result<ResolvedUser> {
    let user = user.trim();
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let u = if u.is_empty() { "0" } else { u };
    let passwd = read_etc(layers, "passwd")
        .map(|t| parse_passwd(&t))
        .unwrap_or_default();
    let groups = read_etc(layers, "group")
        .map(|t| parse_group(&t))
        .unwrap_or_default();
    let entry = match u.parse::<u32>() {
        Ok(uid) => passwd.iter().find(|e| e.uid == uid),
        Err(_) => Some(passwd.iter().find(|e| e.name == u).ok_or_else(|| {
            bad(format!(
                "unable to find user {u}: no matching entry in the image's /etc/passwd (use a numeric uid)"
            ))
        })?),
    };
    let uid = match u.parse::<u32>() {
        Ok(uid) => uid,
        Err(_) => entry.map(|e| e.uid).unwrap_or(0),
    };
    let gid = match g {
        Some(g) if !g.is_empty() => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| {
                    bad(format!(
                        "unable to find group {g}: no matching entry in the image's /etc/group (use a numeric gid)"
                    ))
                })?,
        },
        _ => entry.map(|e| e.gid).unwrap_or(0),
    };
    let mut additional = Vec::new();
    if let Some(e) = entry {
        for grp in &groups {
            if grp.members.contains(&e.name) && grp.gid != gid && !additional.contains(&grp.gid) {
                additional.push(grp.gid);
            }
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids: additional,
        home: entry
            .map(|e| e.home.clone())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "/".into()),
    })
}

/// The user asked for: `--user`, else the image's USER, else root.
pub(super) fn requested_user(image: &Image, rc: &RunConfig) -> String {
    let cfg = image.config.config().as_ref();
    rc.user
        .clone()
        .filter(|u| !u.is_empty())
        .or_else(|| cfg.and_then(|c| c.user().clone()).filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "0".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::tests::{env_of, image, rc, rootfs};
    use crate::spec::{generate, DEFAULT_CAPS};
    use serde_json::json;

    /// Users come from the layers as their overlay would show them: the
    /// topmost passwd wins, a whiteout deletes it, an opaque /etc hides the
    /// layers below. (Needs root: whiteouts are device nodes, opacity a
    /// trusted xattr.)
    #[test]
    fn users_are_read_from_the_layers_without_mounting_them() {
        use nix::sys::stat::{mknod, Mode, SFlag};
        let d = tempfile::tempdir().unwrap();
        let layer = |n: &str, passwd: Option<&str>| {
            let l = d.path().join(n);
            fs::create_dir_all(l.join("etc")).unwrap();
            if let Some(p) = passwd {
                fs::write(l.join("etc/passwd"), p).unwrap();
            }
            l
        };
        let base = layer("base", Some("app:x:1000:1000::/home/app:/bin/sh\n"));
        let upper = layer("upper", Some("app:x:2000:2000::/srv:/bin/sh\n"));
        let unrelated = layer("unrelated", None);
        let uid = |layers: &[PathBuf]| resolve_user(layers, "app").map(|u| u.uid);
        assert_eq!(uid(&[base.clone(), unrelated.clone()]).unwrap(), 1000);
        assert_eq!(uid(&[base.clone(), upper.clone()]).unwrap(), 2000);

        let deleted = layer("deleted", None);
        mknod(
            &deleted.join("etc/passwd"),
            SFlag::S_IFCHR,
            Mode::empty(),
            0,
        )
        .expect("mknod of a whiteout (needs root)");
        assert!(
            uid(&[base.clone(), deleted]).is_err(),
            "whiteout deletes it"
        );

        let opaque = layer("opaque", None);
        rustix::fs::lsetxattr(
            opaque.join("etc"),
            "trusted.overlay.opaque",
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .expect("setting trusted.overlay.opaque (needs root)");
        assert!(
            uid(&[base.clone(), opaque.clone()]).is_err(),
            "opaque /etc hides it"
        );
        assert_eq!(uid(&[opaque, upper]).unwrap(), 2000);
    }

    #[test]
    fn users_and_groups() {
        let r = rootfs();
        let u = |s: &str| resolve_user(&[r.path().into()], s);
        assert_eq!(
            u("0").unwrap(),
            ResolvedUser {
                uid: 0,
                gid: 0,
                additional_gids: vec![],
                home: "/root".into()
            }
        );
        let user = u("user").unwrap();
        assert_eq!(
            (user.uid, user.gid, user.home.as_str()),
            (1000, 1000, "/home/user")
        );
        assert_eq!(user.additional_gids, vec![29, 44]);
        assert_eq!(u("1000").unwrap().additional_gids, vec![29, 44]);
        assert_eq!(u("web").unwrap().additional_gids, vec![29]);
        let x = u("1000:50").unwrap();
        assert_eq!((x.uid, x.gid), (1000, 50));
        let x = u("user:staff").unwrap();
        assert_eq!((x.uid, x.gid), (1000, 50));
        let x = u("4242").unwrap();
        assert_eq!((x.uid, x.gid, x.home.as_str()), (4242, 0, "/"));
        let x = u("4242:4243").unwrap();
        assert_eq!((x.uid, x.gid), (4242, 4243));
        let e = u("nosuchuser").unwrap_err().to_string();
        assert!(e.contains("unable to find user nosuchuser"), "{e}");
        assert!(u("user:nosuchgroup").is_err());

        // Through generate(): image USER, overridden by --user; non-root has no effective caps.
        let img = image(json!({"Cmd": ["id"], "User": "user"}));
        let s = generate(&img, r.path(), &[r.path().into()], &rc()).unwrap();
        let p = s.process().as_ref().unwrap();
        assert_eq!(p.user().uid(), 1000);
        assert_eq!(p.user().additional_gids().as_ref().unwrap(), &vec![29, 44]);
        let caps = p.capabilities().as_ref().unwrap();
        assert!(caps.effective().as_ref().unwrap().is_empty());
        assert!(caps.permitted().as_ref().unwrap().is_empty());
        assert_eq!(caps.bounding().as_ref().unwrap().len(), DEFAULT_CAPS.len());
        assert!(env_of(&s).contains(&"HOME=/home/user".into()));
        let mut rcu = rc();
        rcu.user = Some("nobody".into());
        let s = generate(&img, r.path(), &[r.path().into()], &rcu).unwrap();
        assert_eq!(s.process().as_ref().unwrap().user().uid(), 65534);

        // A symlinked /etc/passwd is not followed out of the rootfs.
        let evil = tempfile::tempdir().unwrap();
        fs::create_dir(evil.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", evil.path().join("etc/passwd")).unwrap();
        assert!(resolve_user(&[evil.path().into()], "root").is_err());
    }
}
