//! Title, description, custom metadata elements and the node a domain is bound to.

use super::*;

impl DomainDef {
    /// Index (among `<metadata>`'s children) of elements in namespace `uri`.
    fn metadata_positions(&self, uri: &str) -> Vec<usize> {
        let Some(metadata) = self.root.child("metadata") else {
            return Vec::new();
        };
        let ancestors = [&self.root, metadata];
        metadata
            .children
            .iter()
            .enumerate()
            .filter_map(|(i, n)| match n {
                Node::Element(e) if element_namespace(e, &ancestors) == Some(uri) => Some(i),
                _ => None,
            })
            .collect()
    }

    /// The node the user pinned the domain to
    /// (`<metalvirt:node name='…'/>` in `<metadata>`).
    pub fn node_pin(&self) -> Option<String> {
        let metadata = self.root.child("metadata")?;
        let ancestors = [&self.root, metadata];
        metadata
            .elements()
            .find(|e| {
                e.local_name() == "node" && element_namespace(e, &ancestors) == Some(METALVIRT_NS)
            })
            .and_then(|e| e.attr("name"))
            .map(str::to_string)
    }

    /// The node the daemon bound the domain to, if recorded.
    pub fn bound_node(&self) -> Option<&str> {
        self.bound_node.as_deref()
    }

    /// Records the node the domain is bound to; it is shown in live XML
    /// (when [`LiveInfo::node`] is empty) and never in the inactive XML.
    pub fn set_bound_node(&mut self, node: Option<&str>) {
        self.bound_node = node.map(str::to_string);
    }

    /// Sets or removes (`None` or empty) the `<title>`.
    pub fn set_title(&mut self, title: Option<&str>) -> Result<(), DomainXmlError> {
        match title.filter(|t| !t.is_empty()) {
            Some(t) if t.contains('\n') => fail("Domain title can't contain newlines"),
            Some(t) => {
                self.set_top_text("title", t);
                Ok(())
            }
            None => {
                self.root.remove_children_named("title");
                Ok(())
            }
        }
    }

    /// Sets or removes (`None` or empty) the `<description>`.
    pub fn set_description(&mut self, description: Option<&str>) -> Result<(), DomainXmlError> {
        match description.filter(|d| !d.is_empty()) {
            Some(d) => self.set_top_text("description", d),
            None => {
                self.root.remove_children_named("description");
            }
        }
        Ok(())
    }

    fn set_top_text(&mut self, name: &str, text: &str) {
        match self.root.child_mut(name) {
            Some(el) => el.set_text(text),
            None => self
                .root
                .insert_ordered(Element::new(name).with_text(text), DOMAIN_ORDER),
        }
    }

    /// The custom metadata element in namespace `uri`, formatted on its own
    /// (with its namespace declaration), as virDomainGetMetadata returns it.
    pub fn metadata_element(&self, uri: &str) -> Option<String> {
        let metadata = self.root.child("metadata")?;
        let pos = *self.metadata_positions(uri).first()?;
        let Some(Node::Element(found)) = metadata.children.get(pos) else {
            return None;
        };
        let mut copy = found.clone();
        let mut missing = Vec::new();
        undeclared_prefixes(&copy, &mut Vec::new(), &mut missing);
        let ancestors = [&self.root, metadata];
        let mut decls = Vec::new();
        for prefix in missing {
            let p = (!prefix.is_empty()).then_some(prefix.as_str());
            let uri = ancestors
                .iter()
                .rev()
                .find_map(|a| a.namespace_decl(p))
                .filter(|u| !u.is_empty());
            if let Some(uri) = uri {
                let key = match p {
                    Some(p) => format!("xmlns:{p}"),
                    None => "xmlns".to_string(),
                };
                decls.push((key, uri.to_string()));
            }
        }
        for (i, d) in decls.into_iter().enumerate() {
            copy.attrs.insert(i, d);
        }
        // libvirt returns the element outside its namespace: the prefix bound to `uri` is
        // stripped from the subtree and its declaration dropped.
        strip_namespace(&mut copy, uri);
        let mut xml = copy.to_xml();
        if xml.ends_with('\n') {
            xml.pop();
        }
        Some(xml)
    }

    /// Sets (`Some(xml)`) or removes (`None`) the custom metadata element in
    /// namespace `uri`, like virDomainSetMetadata: the element's name is
    /// re-prefixed with `key` and `xmlns:KEY='uri'` is declared on it; it
    /// replaces any element of that namespace. Removing the last element
    /// drops `<metadata>`.
    pub fn set_metadata_element(
        &mut self,
        uri: &str,
        key: &str,
        xml: Option<&str>,
    ) -> Result<(), DomainXmlError> {
        if uri.trim().is_empty() {
            return fail("missing namespace URI for metadata element");
        }
        let new_el = match xml {
            None => None,
            Some(xml) => {
                if !valid_ncname(key) {
                    return fail(format!(
                        "invalid metadata key '{key}': not a valid XML namespace prefix"
                    ));
                }
                // It goes under <domain><metadata>: the whole domain stays within the limits.
                let mut el = Element::parse_at(xml, 3)
                    .map_err(|e| DomainXmlError::new(format!("malformed metadata XML: {e}")))?;
                el.name = format!("{key}:{}", el.local_name());
                el.remove_attr(&format!("xmlns:{key}"));
                el.attrs
                    .insert(0, (format!("xmlns:{key}"), uri.to_string()));
                Some(el)
            }
        };
        let positions = self.metadata_positions(uri);
        if let Some(metadata) = self.root.child_mut("metadata") {
            for pos in positions.into_iter().rev() {
                metadata.children.remove(pos);
            }
        }
        match new_el {
            Some(el) => match self.root.child_mut("metadata") {
                Some(metadata) => metadata.push(el),
                None => self
                    .root
                    .insert_ordered(Element::new("metadata").with_child(el), DOMAIN_ORDER),
            },
            None => {
                let empty = self
                    .root
                    .child("metadata")
                    .is_some_and(|m| !m.has_elements());
                if empty {
                    self.root.remove_children_named("metadata");
                }
            }
        }
        if uri == METALVIRT_NS {
            self.check_metalvirt_metadata()?;
        }
        Ok(())
    }
}

/// Removes namespace `uri` from a subtree: elements whose prefix is declared for `uri` (on the
/// subtree's root) lose the prefix, and the declaration is dropped.
fn strip_namespace(el: &mut Element, uri: &str) {
    let prefixes: Vec<String> = el
        .attrs
        .iter()
        .filter(|(k, v)| v == uri && (k == "xmlns" || k.starts_with("xmlns:")))
        .map(|(k, _)| k.strip_prefix("xmlns:").unwrap_or("").to_string())
        .collect();
    el.attrs
        .retain(|(k, v)| !(v == uri && (k == "xmlns" || k.starts_with("xmlns:"))));
    fn walk(e: &mut Element, prefixes: &[String]) {
        if let Some((p, local)) = e.name.split_once(':') {
            if prefixes.iter().any(|x| x == p) {
                e.name = local.to_string();
            }
        }
        for c in e.children.iter_mut() {
            if let Node::Element(c) = c {
                walk(c, prefixes);
            }
        }
    }
    walk(el, &prefixes);
}
