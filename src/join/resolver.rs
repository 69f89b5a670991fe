//! How a VM outside BOSH asks the agent for the mesh's names, pure: which resolver the VM uses,
//! the systemd-resolved drop-in, and the `/etc/resolv.conf` edit and its exact undo.
//!
//! - systemd-resolved (`/etc/resolv.conf` a symlink into `/run/systemd/resolve/`, or the
//!   service active): a drop-in makes the agent the DNS server of the routing domain `~<tld>`
//!   only; every other name goes where it went before.
//! - a plain `/etc/resolv.conf`: the agent's address becomes the first `nameserver`. The agent
//!   answers only `<tld>.` and REFUSES every other question (`virtual_ip_agent::dns`), and
//!   glibc's stub resolver moves on to the next nameserver on REFUSED (as on SERVFAIL and
//!   NOTIMP: `res_send.c`), so the VM's other names still resolve through its own servers.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

/// glibc reads at most this many `nameserver` lines (`MAXNS`); ours first pushes the last one
/// out.
const GLIBC_MAXNS: usize = 3;

/// The comment line above ours, so an operator reading the file knows who put it there.
pub(crate) const MARKER: &str =
    "# boshy-istio: the mesh's names (`boshy join`); `boshy leave` removes this and the next line";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum ResolverKind {
    /// systemd-resolved: a drop-in in `/etc/systemd/resolved.conf.d/`.
    SystemdResolved,
    /// `/etc/resolv.conf` edited in place.
    ResolvConf,
}

/// Which resolver the VM uses: `link` is where `/etc/resolv.conf` points when it is a
/// symlink; `resolved_active` whether systemd-resolved runs.
pub(crate) fn detect(link: Option<&Path>, resolved_active: bool) -> ResolverKind {
    let into_resolved = link.is_some_and(|target| {
        target.starts_with("/run/systemd/resolve")
            || target.to_string_lossy().contains("/run/systemd/resolve/")
    });
    if into_resolved || resolved_active {
        ResolverKind::SystemdResolved
    } else {
        ResolverKind::ResolvConf
    }
}

/// The drop-in: the agent serves the routing domain `~<tld>` (the `~` keeps it out of the
/// search list: `foo` is never tried as `foo.<tld>`).
pub(crate) fn drop_in(listen: SocketAddr, tld: &str) -> String {
    let server = if listen.port() == 53 {
        listen.ip().to_string()
    } else {
        // resolved reads `ip:port` (`[v6]:port`) since systemd 246.
        listen.to_string()
    };
    format!(
        "# boshy-istio: the mesh's names (`boshy join`); `boshy leave` removes this file.\n\
         [Resolve]\nDNS={server}\nDomains=~{tld}\n"
    )
}

/// The line that makes the agent the first nameserver.
fn our_line(ip: IpAddr) -> String {
    format!("nameserver {ip}")
}

/// `resolv.conf` with the agent's nameserver first (above the first `nameserver` line,
/// below the comments and options before it); without ours if it was there already, so
/// editing twice is editing once. The warnings say what the operator should know.
pub(crate) fn add_nameserver(original: &str, ip: IpAddr) -> (String, Vec<String>) {
    let cleaned = remove_nameserver(original, ip);
    let ours = format!("{MARKER}\n{}\n", our_line(ip));
    let mut out = String::with_capacity(cleaned.len() + ours.len());
    let mut inserted = false;
    let mut others = 0;
    for line in cleaned.split_inclusive('\n') {
        if is_nameserver(line) {
            others += 1;
            if !inserted {
                out.push_str(&ours);
                inserted = true;
            }
        }
        out.push_str(line);
    }
    if !inserted {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&ours);
    }
    let mut warnings = Vec::new();
    if others >= GLIBC_MAXNS {
        warnings.push(format!(
            "/etc/resolv.conf had {others} nameservers; glibc reads the first {GLIBC_MAXNS}, so \
             with the mesh's first the last of them is no longer asked"
        ));
    }
    (out, warnings)
}

/// `current` without our marker and the nameserver line after it (anything else untouched):
/// leave's undo when the file was changed by someone else since join.
pub(crate) fn remove_nameserver(current: &str, ip: IpAddr) -> String {
    let ours = our_line(ip);
    let mut out = String::with_capacity(current.len());
    let mut after_marker = false;
    for line in current.split_inclusive('\n') {
        let text = line.trim_end_matches(['\n', '\r']);
        if text == MARKER {
            after_marker = true;
            continue;
        }
        if after_marker && text.trim() == ours {
            after_marker = false;
            continue;
        }
        after_marker = false;
        out.push_str(line);
    }
    out
}

fn is_nameserver(line: &str) -> bool {
    line.split_whitespace().next() == Some("nameserver")
}

/// What leave writes back: the original bytes when the file is still what join wrote;
/// otherwise (someone changed it since) the current file without our lines, and a warning.
pub(crate) fn restore(
    original: &[u8],
    written: &[u8],
    current: &[u8],
    ip: IpAddr,
) -> (Vec<u8>, Option<String>) {
    if current == written {
        return (original.to_vec(), None);
    }
    let text = String::from_utf8_lossy(current);
    (
        remove_nameserver(&text, ip).into_bytes(),
        Some(
            "/etc/resolv.conf changed since `boshy join`: only the mesh's nameserver line was \
             removed, the rest is left as it is now"
                .to_string(),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 1, 53));

    #[test]
    fn a_symlink_into_resolved_or_a_running_resolved_means_resolved() {
        let stub = Path::new("/run/systemd/resolve/stub-resolv.conf");
        assert_eq!(detect(Some(stub), false), ResolverKind::SystemdResolved);
        let relative = Path::new("../run/systemd/resolve/resolv.conf");
        assert_eq!(detect(Some(relative), false), ResolverKind::SystemdResolved);
        assert_eq!(detect(None, true), ResolverKind::SystemdResolved);
        assert_eq!(detect(None, false), ResolverKind::ResolvConf);
        let other = Path::new("/run/resolvconf/resolv.conf");
        assert_eq!(detect(Some(other), false), ResolverKind::ResolvConf);
    }

    #[test]
    fn the_drop_in_routes_the_tld_alone() {
        let text = drop_in("127.0.1.53:53".parse().unwrap(), "boshy");
        assert!(
            text.contains("[Resolve]\nDNS=127.0.1.53\nDomains=~boshy\n"),
            "{text}"
        );
        let text = drop_in("127.0.1.53:5353".parse().unwrap(), "mesh");
        assert!(
            text.contains("DNS=127.0.1.53:5353\nDomains=~mesh\n"),
            "{text}"
        );
    }

    #[test]
    fn ours_goes_first_below_the_header_and_comes_out_exactly() {
        let original = "# Generated by the cloud\nsearch corp.example\nnameserver 10.0.0.2\n\
                        nameserver 10.0.0.3\noptions edns0\n";
        let (edited, warnings) = add_nameserver(original, IP);
        assert!(warnings.is_empty());
        assert_eq!(
            edited,
            format!(
                "# Generated by the cloud\nsearch corp.example\n{MARKER}\nnameserver 127.0.1.53\n\
                 nameserver 10.0.0.2\nnameserver 10.0.0.3\noptions edns0\n"
            )
        );
        assert_eq!(add_nameserver(&edited, IP).0, edited, "twice = once");
        assert_eq!(remove_nameserver(&edited, IP), original);
        let (bytes, warning) = restore(
            original.as_bytes(),
            edited.as_bytes(),
            edited.as_bytes(),
            IP,
        );
        assert_eq!(bytes, original.as_bytes());
        assert!(warning.is_none());
    }

    #[test]
    fn a_file_without_nameservers_or_final_newline_is_restored_byte_for_byte() {
        for original in ["", "options ndots:2", "search a\n"] {
            let (edited, _) = add_nameserver(original, IP);
            assert!(edited.contains("nameserver 127.0.1.53\n"), "{edited:?}");
            let (bytes, _) = restore(
                original.as_bytes(),
                edited.as_bytes(),
                edited.as_bytes(),
                IP,
            );
            assert_eq!(bytes, original.as_bytes());
        }
    }

    #[test]
    fn a_file_changed_since_join_loses_only_our_lines() {
        let original = "nameserver 10.0.0.2\n";
        let (edited, _) = add_nameserver(original, IP);
        let changed = format!("{edited}nameserver 10.0.0.9\n");
        let (bytes, warning) = restore(
            original.as_bytes(),
            edited.as_bytes(),
            changed.as_bytes(),
            IP,
        );
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "nameserver 10.0.0.2\nnameserver 10.0.0.9\n"
        );
        assert!(warning.unwrap().contains("changed since"));
    }

    #[test]
    fn a_full_list_is_warned_about() {
        let original = "nameserver 1.1.1.1\nnameserver 8.8.8.8\nnameserver 9.9.9.9\n";
        let (_, warnings) = add_nameserver(original, IP);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }
}
