//! Formatting a definition as libvirt's dumpxml does.

use super::*;

impl DomainDef {
    /// Formats the definition like libvirt's dumpxml.
    ///
    /// Live output (`opts.live` set, `opts.inactive` false) adds the `id`
    /// attribute, an `<alias>` to every device libvirt names (see
    /// [`devices::live_aliases`]) and the bound node in
    /// `<metalvirt:node>`. Without `opts.secure`, graphics passwords are
    /// left out.
    pub fn to_xml(&self, opts: &FormatOpts) -> String {
        let live = if opts.inactive {
            None
        } else {
            opts.live.as_ref()
        };
        let has_secret = || {
            self.root.child("devices").is_some_and(|d| {
                d.children_named("graphics")
                    .any(|g| g.attr("passwd").is_some())
            })
        };
        // The persistent form of a live definition keeps only the user's aliases.
        let strip_aliases = self.live && opts.inactive;
        if live.is_none() && !strip_aliases && (opts.secure || !has_secret()) {
            // nothing to add or hide: format the definition as it is
            return self.root.to_xml();
        }
        let mut root = self.root.clone();
        if strip_aliases {
            if let Some(devices) = root.child_mut("devices") {
                for dev in devices.elements_mut() {
                    if devices::user_alias(dev).is_none() {
                        dev.remove_children_named("alias");
                    }
                }
            }
        }
        if let Some(live) = live {
            let pos = root
                .attrs
                .iter()
                .position(|(k, _)| k == "type")
                .map_or(0, |i| i + 1);
            root.set_attr_at(pos, "id", live.id.to_string());
            let aliases = self.live_aliases();
            if let Some(devices) = root.child_mut("devices") {
                for (dev, alias) in devices.elements_mut().zip(aliases) {
                    if let Some(alias) = alias {
                        if dev.child("alias").is_none() {
                            dev.insert_before_first(
                                Element::new("alias").with_attr("name", alias),
                                &["address"],
                            );
                        }
                    }
                }
            }
            let node = Some(live.node.as_str())
                .filter(|n| !n.is_empty())
                .or(self.bound_node.as_deref());
            if let Some(node) = node {
                show_node(&mut root, node);
            }
        }
        if !opts.secure {
            if let Some(devices) = root.child_mut("devices") {
                for g in devices.children_named_mut("graphics") {
                    g.remove_attr("passwd");
                }
            }
        }
        root.to_xml()
    }
}

/// Writes `node` into the `<metalvirt:node>` metadata element of `root`,
/// creating it (and `<metadata>`) when needed.
fn show_node(root: &mut Element, node: &str) {
    let existing = root.child("metadata").and_then(|metadata| {
        let ancestors = [&*root, metadata];
        metadata.children.iter().position(|n| {
            matches!(n, Node::Element(e) if e.local_name() == "node"
                && element_namespace(e, &ancestors) == Some(METALVIRT_NS))
        })
    });
    if root.child("metadata").is_none() {
        root.insert_ordered(Element::new("metadata"), DOMAIN_ORDER);
    }
    let Some(metadata) = root.child_mut("metadata") else {
        return;
    };
    match existing.and_then(|i| metadata.children.get_mut(i)) {
        Some(Node::Element(el)) => el.set_attr("name", node),
        _ => metadata.push(
            Element::new(format!("{METALVIRT_PREFIX}:node"))
                .with_attr(&format!("xmlns:{METALVIRT_PREFIX}"), METALVIRT_NS)
                .with_attr("name", node),
        ),
    }
}
