//! A small, order-preserving XML element tree.
//!
//! The domain model keeps the whole document the user wrote (including
//! elements and namespaces it does not interpret), so it works on this
//! generic tree rather than on typed structs. Names are kept exactly as
//! written (`nova:instance`, `xmlns:nova`), attribute order is preserved,
//! and formatting follows libvirt's dumpxml conventions (2-space indent,
//! single-quoted attributes, `<x/>` for empty elements).

use std::borrow::Cow;
use std::fmt;

use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, XmlVersion};

/// Deepest nesting a document may have (libxml2's default limit, which libvirt inherits):
/// the root element is level 1.
pub const MAX_DEPTH: usize = 256;
/// Most elements and comments one document may hold. A domain with hundreds of devices has
/// a few thousand; the limit bounds the memory a 4 MiB document can make the daemon spend.
pub const MAX_NODES: usize = 50_000;
/// Most attributes one element may carry.
pub const MAX_ATTRS: usize = 256;

/// Checks an element about to open `depth` levels down against the limits.
fn open_element(
    input: &str,
    pos: u64,
    depth: usize,
    max_depth: usize,
    nodes: &mut usize,
) -> Result<(), XmlError> {
    if depth >= max_depth {
        return Err(XmlError::at(
            input,
            pos,
            format!("document nested deeper than the limit of {MAX_DEPTH} levels"),
        ));
    }
    count_node(input, pos, nodes)
}

fn count_node(input: &str, pos: u64, nodes: &mut usize) -> Result<(), XmlError> {
    *nodes += 1;
    if *nodes > MAX_NODES {
        return Err(XmlError::at(
            input,
            pos,
            format!("document has more than the limit of {MAX_NODES} elements"),
        ));
    }
    Ok(())
}

/// One node of an element's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A child element.
    Element(Element),
    /// Character data (entity references resolved; CDATA sections become text).
    Text(String),
    /// A comment (the text between `<!--` and `-->`).
    Comment(String),
}

/// An XML element with its attributes (in document order) and content.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    /// Qualified name exactly as written, e.g. `disk` or `nova:instance`.
    pub name: String,
    /// Attributes in document order; values are unescaped.
    pub attrs: Vec<(String, String)>,
    /// Child nodes in document order.
    pub children: Vec<Node>,
}

/// A syntax error in an XML document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct XmlError {
    /// What is wrong.
    pub message: String,
    /// 1-based line of the problem, when known.
    pub line: Option<usize>,
    /// 1-based column (in characters) of the problem, when known.
    pub column: Option<usize>,
}

impl fmt::Display for XmlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "line {l}, column {c}: {}", self.message),
            (Some(l), None) => write!(f, "line {l}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

impl XmlError {
    /// An error without a position.
    pub fn new(message: impl Into<String>) -> Self {
        XmlError {
            message: message.into(),
            line: None,
            column: None,
        }
    }

    fn at(input: &str, offset: u64, message: impl Into<String>) -> Self {
        let (line, column) = line_col(input, offset);
        XmlError {
            message: message.into(),
            line: Some(line),
            column: Some(column),
        }
    }
}

/// Translates a byte offset into a 1-based (line, column) pair.
fn line_col(input: &str, offset: u64) -> (usize, usize) {
    let mut end = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(input.len());
    while !input.is_char_boundary(end) {
        end -= 1;
    }
    let before = &input[..end];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

fn is_xml_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// Collects character data between markup until the next non-text event.
/// Pieces are kept borrowed from the input when possible, so the common
/// whitespace-only runs between elements never allocate.
struct PendingText<'a> {
    pieces: Vec<Cow<'a, str>>,
    start: u64,
}

impl<'a> PendingText<'a> {
    fn push(&mut self, s: Cow<'a, str>, pos: u64) {
        if self.pieces.is_empty() {
            self.start = pos;
        }
        self.pieces.push(s);
    }

    /// Moves pending text into the innermost open element (dropping
    /// whitespace-only runs), or fails if there is text outside the root.
    fn flush(&mut self, input: &str, stack: &mut [Element]) -> Result<(), XmlError> {
        if self.pieces.is_empty() {
            return Ok(());
        }
        if self.pieces.iter().all(|p| p.chars().all(is_xml_space)) {
            self.pieces.clear();
            return Ok(());
        }
        let text: String = self.pieces.drain(..).collect();
        match stack.last_mut() {
            Some(parent) => {
                parent.children.push(Node::Text(text));
                Ok(())
            }
            None => Err(XmlError::at(
                input,
                self.start,
                "text content is not allowed outside the root element",
            )),
        }
    }
}

fn resolve_entity(name: &str) -> Option<char> {
    match name {
        "lt" => Some('<'),
        "gt" => Some('>'),
        "amp" => Some('&'),
        "apos" => Some('\''),
        "quot" => Some('"'),
        _ => None,
    }
}

/// An XML Name (XML 1.0 §2.3, simplified to what can be told per character: every
/// non-ASCII character is allowed): what quick-xml takes for a name can hold quotes and `=`
/// (`<a='1'>` is one name to it), which would not read back.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    let start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':' || !c.is_ascii();
    start(first) && chars.all(|c| start(c) || c.is_ascii_digit() || c == '-' || c == '.')
}

fn element_from_start(input: &str, pos: u64, start: &BytesStart<'_>) -> Result<Element, XmlError> {
    let name = start.name().as_ref().to_string();
    if name.is_empty() {
        return Err(XmlError::at(input, pos, "element name is missing"));
    }
    if !valid_name(&name) {
        return Err(XmlError::at(
            input,
            pos,
            format!("invalid element name '{name}'"),
        ));
    }
    let mut attrs: Vec<(String, String)> = Vec::new();
    // quick-xml's own duplicate check allocates per element; ours below
    // does not.
    for attr in start.attributes().with_checks(false) {
        let attr = attr.map_err(|e| {
            XmlError::at(
                input,
                pos,
                format!("bad attribute in element <{name}>: {e}"),
            )
        })?;
        let key = attr.key.as_ref().to_string();
        if !valid_name(&key) {
            return Err(XmlError::at(
                input,
                pos,
                format!("invalid attribute name '{key}' in element <{name}>"),
            ));
        }
        let value = attr
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|e| {
                XmlError::at(
                    input,
                    pos,
                    format!("bad value of attribute '{key}' in element <{name}>: {e}"),
                )
            })?
            .into_owned();
        if attrs.len() >= MAX_ATTRS {
            return Err(XmlError::at(
                input,
                pos,
                format!("element <{name}> has more than the limit of {MAX_ATTRS} attributes"),
            ));
        }
        if attrs.iter().any(|(k, _)| *k == key) {
            return Err(XmlError::at(
                input,
                pos,
                format!("attribute '{key}' redefined in element <{name}>"),
            ));
        }
        attrs.push((key, value));
    }
    Ok(Element {
        name,
        attrs,
        children: Vec::new(),
    })
}

/// Attaches a finished element to its parent, or makes it the root.
fn close_element(
    input: &str,
    pos: u64,
    el: Element,
    stack: &mut [Element],
    root: &mut Option<Element>,
) -> Result<(), XmlError> {
    if let Some(parent) = stack.last_mut() {
        parent.children.push(Node::Element(el));
        return Ok(());
    }
    if root.is_some() {
        return Err(XmlError::at(
            input,
            pos,
            format!(
                "extra content at the end of the document: second root element <{}>",
                el.name
            ),
        ));
    }
    *root = Some(el);
    Ok(())
}

impl Element {
    /// Creates an empty element.
    pub fn new(name: impl Into<String>) -> Self {
        Element {
            name: name.into(),
            attrs: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Builder: adds (or replaces) an attribute.
    pub fn with_attr(mut self, key: &str, value: impl Into<String>) -> Self {
        self.set_attr(key, value);
        self
    }

    /// Builder: appends a child element.
    pub fn with_child(mut self, child: Element) -> Self {
        self.children.push(Node::Element(child));
        self
    }

    /// Builder: sets the text content.
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.set_text(text);
        self
    }

    /// Parses a complete XML document and returns its root element.
    ///
    /// Whitespace-only text between elements is dropped; any other text is
    /// kept verbatim. Comments inside the root are kept, comments, the XML
    /// declaration and processing instructions outside it are dropped.
    /// DOCTYPE (and so entity declarations), unknown entities, mismatched or
    /// unclosed tags, several roots and text after the root are errors, and so
    /// is a document past the limits ([`MAX_DEPTH`] levels, [`MAX_NODES`] nodes,
    /// [`MAX_ATTRS`] attributes on one element): everything that walks a tree
    /// (drop, clone, formatting, matching) recurses, and the limits bound it.
    pub fn parse(input: &str) -> Result<Element, XmlError> {
        Self::parse_at(input, 1)
    }

    /// Parses a fragment whose root will sit at nesting level `level` of a document
    /// (the domain is level 1, a device or a metadata element level 3): the whole
    /// document must stay within [`MAX_DEPTH`].
    pub fn parse_at(input: &str, level: usize) -> Result<Element, XmlError> {
        let max_depth = MAX_DEPTH.saturating_sub(level.saturating_sub(1)).max(1);
        // A byte order mark is not content.
        let input = input.strip_prefix('\u{feff}').unwrap_or(input);
        let mut reader = Reader::from_str(input);
        {
            let cfg = reader.config_mut();
            cfg.trim_text(false);
            cfg.check_end_names = true;
            cfg.check_comments = true;
            cfg.expand_empty_elements = false;
        }
        let mut stack: Vec<Element> = Vec::new();
        let mut root: Option<Element> = None;
        let mut nodes = 0usize;
        let mut pending = PendingText {
            pieces: Vec::new(),
            start: 0,
        };
        loop {
            let pos = reader.buffer_position();
            let event = reader
                .read_event()
                .map_err(|e| XmlError::at(input, reader.error_position(), e.to_string()))?;
            match event {
                Event::Start(start) => {
                    pending.flush(input, &mut stack)?;
                    if stack.is_empty() && root.is_some() {
                        return Err(XmlError::at(
                            input,
                            pos,
                            "extra content at the end of the document: second root element",
                        ));
                    }
                    open_element(input, pos, stack.len(), max_depth, &mut nodes)?;
                    stack.push(element_from_start(input, pos, &start)?);
                }
                Event::Empty(start) => {
                    pending.flush(input, &mut stack)?;
                    open_element(input, pos, stack.len(), max_depth, &mut nodes)?;
                    let el = element_from_start(input, pos, &start)?;
                    close_element(input, pos, el, &mut stack, &mut root)?;
                }
                Event::End(_) => {
                    pending.flush(input, &mut stack)?;
                    // quick-xml already checked that the name matches.
                    let Some(el) = stack.pop() else {
                        return Err(XmlError::at(input, pos, "unexpected closing tag"));
                    };
                    close_element(input, pos, el, &mut stack, &mut root)?;
                }
                Event::Text(text) => pending.push(text.xml10_content(), pos),
                Event::CData(cdata) => {
                    if stack.is_empty() {
                        return Err(XmlError::at(
                            input,
                            pos,
                            "CDATA is not allowed outside the root element",
                        ));
                    }
                    pending.push(cdata.xml10_content(), pos);
                }
                Event::GeneralRef(reference) => {
                    let resolved = match reference.resolve_char_ref() {
                        Ok(Some(c)) => Some(c),
                        Ok(None) => resolve_entity(&reference),
                        Err(e) => return Err(XmlError::at(input, pos, e.to_string())),
                    };
                    let Some(c) = resolved else {
                        return Err(XmlError::at(
                            input,
                            pos,
                            format!("entity '{}' not defined", &*reference),
                        ));
                    };
                    pending.push(Cow::Owned(c.to_string()), pos);
                }
                Event::Comment(comment) => {
                    pending.flush(input, &mut stack)?;
                    if let Some(parent) = stack.last_mut() {
                        count_node(input, pos, &mut nodes)?;
                        parent
                            .children
                            .push(Node::Comment(comment.xml10_content().into_owned()));
                    }
                }
                Event::DocType(_) => {
                    return Err(XmlError::at(
                        input,
                        pos,
                        "DOCTYPE and entity declarations are not allowed",
                    ));
                }
                Event::Decl(_) | Event::PI(_) => {}
                Event::Eof => break,
            }
        }
        let end = reader.buffer_position();
        pending.flush(input, &mut stack)?;
        if let Some(open) = stack.last() {
            return Err(XmlError::at(
                input,
                end,
                format!(
                    "premature end of data: element <{}> is not closed",
                    open.name
                ),
            ));
        }
        root.ok_or_else(|| XmlError::new("document is empty: no root element"))
    }

    /// Checks a tree built or edited in memory against the limits [`Element::parse`]
    /// enforces, so that what is stored always parses again. Iterative: it is the check
    /// that keeps the recursive walks bounded.
    pub fn check_limits(&self) -> Result<(), XmlError> {
        let mut nodes = 0usize;
        let mut stack: Vec<(&Element, usize)> = vec![(self, 1)];
        while let Some((el, depth)) = stack.pop() {
            nodes += 1;
            if depth > MAX_DEPTH {
                return Err(XmlError::new(format!(
                    "document nested deeper than the limit of {MAX_DEPTH} levels"
                )));
            }
            if nodes > MAX_NODES {
                return Err(XmlError::new(format!(
                    "document has more than the limit of {MAX_NODES} elements"
                )));
            }
            if el.attrs.len() > MAX_ATTRS {
                return Err(XmlError::new(format!(
                    "element <{}> has more than the limit of {MAX_ATTRS} attributes",
                    el.name
                )));
            }
            for c in &el.children {
                match c {
                    Node::Element(e) => stack.push((e, depth + 1)),
                    Node::Comment(_) => nodes += 1,
                    Node::Text(_) => {}
                }
            }
        }
        Ok(())
    }

    /// Formats the element as a document fragment, libvirt style, with a
    /// trailing newline.
    pub fn to_xml(&self) -> String {
        let mut out = String::with_capacity(1024);
        self.write_pretty(&mut out, 0);
        out
    }

    fn write_open(&self, out: &mut String) {
        out.push('<');
        out.push_str(&self.name);
        for (k, v) in &self.attrs {
            out.push(' ');
            out.push_str(k);
            out.push_str("='");
            escape_attr(out, v);
            out.push('\'');
        }
    }

    fn write_close(&self, out: &mut String) {
        out.push_str("</");
        out.push_str(&self.name);
        out.push('>');
    }

    fn write_pretty(&self, out: &mut String, depth: usize) {
        indent(out, depth);
        self.write_open(out);
        if self.children.is_empty() {
            out.push_str("/>\n");
            return;
        }
        out.push('>');
        if self.children.iter().any(|c| matches!(c, Node::Text(_))) {
            // Text-only or mixed content: adding whitespace would change the
            // content, so write it exactly.
            for child in &self.children {
                write_node_inline(out, child);
            }
        } else {
            out.push('\n');
            for child in &self.children {
                match child {
                    Node::Element(el) => el.write_pretty(out, depth + 1),
                    Node::Comment(c) => {
                        indent(out, depth + 1);
                        write_comment(out, c);
                        out.push('\n');
                    }
                    Node::Text(_) => {}
                }
            }
            indent(out, depth);
        }
        self.write_close(out);
        out.push('\n');
    }

    fn write_inline(&self, out: &mut String) {
        self.write_open(out);
        if self.children.is_empty() {
            out.push_str("/>");
            return;
        }
        out.push('>');
        for child in &self.children {
            write_node_inline(out, child);
        }
        self.write_close(out);
    }

    /// The part of the name before `:`, if any.
    pub fn prefix(&self) -> Option<&str> {
        self.name.split_once(':').map(|(p, _)| p)
    }

    /// The part of the name after `:` (the whole name when unprefixed).
    pub fn local_name(&self) -> &str {
        self.name.split_once(':').map_or(&self.name, |(_, l)| l)
    }

    /// The namespace URI this element itself declares for `prefix`
    /// (`xmlns:prefix`, or `xmlns` when `prefix` is `None`).
    pub fn namespace_decl(&self, prefix: Option<&str>) -> Option<&str> {
        match prefix {
            Some(p) => self
                .attrs
                .iter()
                .find_map(|(k, v)| (k.strip_prefix("xmlns:") == Some(p)).then_some(v.as_str())),
            None => self.attr("xmlns"),
        }
    }

    /// Value of attribute `key`.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets attribute `key`, keeping its position when it already exists
    /// and appending it otherwise.
    pub fn set_attr(&mut self, key: &str, value: impl Into<String>) {
        let value = value.into();
        match self.attrs.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.attrs.push((key.to_string(), value)),
        }
    }

    /// Sets attribute `key` and moves it to position `index` (clamped).
    pub fn set_attr_at(&mut self, index: usize, key: &str, value: impl Into<String>) {
        self.remove_attr(key);
        let index = index.min(self.attrs.len());
        self.attrs.insert(index, (key.to_string(), value.into()));
    }

    /// Removes attribute `key`, returning its value.
    pub fn remove_attr(&mut self, key: &str) -> Option<String> {
        let pos = self.attrs.iter().position(|(k, _)| k == key)?;
        Some(self.attrs.remove(pos).1)
    }

    /// First child element called `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.elements().find(|e| e.name == name)
    }

    /// First child element called `name`, mutably.
    pub fn child_mut(&mut self, name: &str) -> Option<&mut Element> {
        self.elements_mut().find(|e| e.name == name)
    }

    /// All child elements called `name`.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.elements().filter(move |e| e.name == name)
    }

    /// All child elements called `name`, mutably.
    pub fn children_named_mut<'a>(
        &'a mut self,
        name: &'a str,
    ) -> impl Iterator<Item = &'a mut Element> + 'a {
        self.elements_mut().filter(move |e| e.name == name)
    }

    /// All child elements.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            _ => None,
        })
    }

    /// All child elements, mutably.
    pub fn elements_mut(&mut self) -> impl Iterator<Item = &mut Element> {
        self.children.iter_mut().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            _ => None,
        })
    }

    /// Whether the element has any child element.
    pub fn has_elements(&self) -> bool {
        self.children.iter().any(|n| matches!(n, Node::Element(_)))
    }

    /// The concatenated direct text content (not descending into children).
    pub fn text(&self) -> String {
        let mut out = String::new();
        for n in &self.children {
            if let Node::Text(t) = n {
                out.push_str(t);
            }
        }
        out
    }

    /// Replaces all content with `text` (no content when `text` is empty).
    pub fn set_text(&mut self, text: impl Into<String>) {
        let text = text.into();
        self.children.clear();
        if !text.is_empty() {
            self.children.push(Node::Text(text));
        }
    }

    /// Appends a child element.
    pub fn push(&mut self, child: Element) {
        self.children.push(Node::Element(child));
    }

    /// Removes all child elements called `name`; returns how many.
    pub fn remove_children_named(&mut self, name: &str) -> usize {
        let before = self.children.len();
        self.children
            .retain(|n| !matches!(n, Node::Element(e) if e.name == name));
        before - self.children.len()
    }

    /// Keeps only the child elements for which `keep` returns true
    /// (text and comments are kept).
    pub fn retain_elements(&mut self, mut keep: impl FnMut(&Element) -> bool) {
        self.children.retain(|n| match n {
            Node::Element(e) => keep(e),
            _ => true,
        });
    }

    /// Inserts `child` before the first child element whose name is in
    /// `names`, or appends it when there is none.
    pub fn insert_before_first(&mut self, child: Element, names: &[&str]) {
        let pos = self
            .children
            .iter()
            .position(|n| matches!(n, Node::Element(e) if names.contains(&e.name.as_str())));
        match pos {
            Some(i) => self.children.insert(i, Node::Element(child)),
            None => self.children.push(Node::Element(child)),
        }
    }

    /// Inserts `child` at its canonical position given the element order
    /// `order`: before the first existing child element that comes later in
    /// `order` (names missing from `order` sort last), else at the end.
    pub fn insert_ordered(&mut self, child: Element, order: &[&str]) {
        let rank = |n: &str| order.iter().position(|o| *o == n).unwrap_or(order.len());
        let mine = rank(&child.name);
        let pos = self
            .children
            .iter()
            .position(|n| matches!(n, Node::Element(e) if rank(&e.name) > mine));
        match pos {
            Some(i) => self.children.insert(i, Node::Element(child)),
            None => self.children.push(Node::Element(child)),
        }
    }

    /// Stable-sorts the child elements by their position in `order`
    /// (unknown names last, in their original order). Comments move with
    /// the element that follows them; text nodes of mixed content are left
    /// alone (nothing is reordered when the element has text content).
    pub fn reorder_children(&mut self, order: &[&str]) {
        if self.children.iter().any(|n| matches!(n, Node::Text(_))) {
            return;
        }
        let rank = |n: &str| order.iter().position(|o| *o == n).unwrap_or(order.len());
        let mut last = 0;
        let sorted = self.elements().all(|e| {
            let r = rank(&e.name);
            let ok = r >= last;
            last = r;
            ok
        });
        if sorted {
            return;
        }
        // Each element forms a group with the comments just before it.
        let mut groups: Vec<(usize, usize, usize)> = Vec::new();
        let mut group_start = 0;
        for (i, node) in self.children.iter().enumerate() {
            if let Node::Element(e) = node {
                groups.push((rank(&e.name), group_start, i + 1));
                group_start = i + 1;
            }
        }
        groups.sort_by_key(|(r, _, _)| *r);
        let mut old: Vec<Option<Node>> = self.children.drain(..).map(Some).collect();
        let trailing = group_start;
        for (_, from, to) in groups {
            self.children
                .extend(old[from..to].iter_mut().filter_map(Option::take));
        }
        self.children
            .extend(old[trailing..].iter_mut().filter_map(Option::take));
    }
}

fn indent(out: &mut String, depth: usize) {
    for _ in 0..depth {
        out.push_str("  ");
    }
}

fn write_comment(out: &mut String, c: &str) {
    out.push_str("<!--");
    out.push_str(c);
    out.push_str("-->");
}

fn write_node_inline(out: &mut String, node: &Node) {
    match node {
        Node::Element(e) => e.write_inline(out),
        Node::Text(t) => escape_text(out, t),
        Node::Comment(c) => write_comment(out, c),
    }
}

fn escape_text(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
}

fn escape_attr(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' => out.push_str("&#9;"),
            c => out.push(c),
        }
    }
}

impl fmt::Display for Element {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_xml())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_attrs_and_order() {
        let x = r#"<?xml version="1.0"?>
<root b="2" a="1" xmlns:nova="http://x">
  <nova:instance nova:k="v"/>
  <e>t &amp; &lt;u&gt; &#65;&#x42;</e>
</root>"#;
        let el = Element::parse(x).expect("parse");
        assert_eq!(el.name, "root");
        assert_eq!(
            el.attrs,
            vec![
                ("b".to_string(), "2".to_string()),
                ("a".to_string(), "1".to_string()),
                ("xmlns:nova".to_string(), "http://x".to_string()),
            ]
        );
        assert_eq!(el.elements().count(), 2);
        let inst = el.child("nova:instance").expect("child");
        assert_eq!(inst.attr("nova:k"), Some("v"));
        assert_eq!(inst.prefix(), Some("nova"));
        assert_eq!(inst.local_name(), "instance");
        assert_eq!(el.child("e").map(|e| e.text()), Some("t & <u> AB".into()));
        assert_eq!(el.namespace_decl(Some("nova")), Some("http://x"));
        assert_eq!(el.namespace_decl(None), None);
    }

    #[test]
    fn keeps_meaningful_text_verbatim() {
        let x = "<d>\n  <description>line one\n  line two\n</description>\n</d>";
        let el = Element::parse(x).expect("parse");
        assert_eq!(el.children.len(), 1);
        let d = el.child("description").expect("description");
        assert_eq!(d.text(), "line one\n  line two\n");
        let out = el.to_xml();
        assert_eq!(
            out,
            "<d>\n  <description>line one\n  line two\n</description>\n</d>\n"
        );
        assert_eq!(Element::parse(&out).expect("reparse"), el);
    }

    #[test]
    fn cdata_becomes_text_and_comments_kept() {
        let x = "<a><!-- hi --><b><![CDATA[x < y]]></b></a>";
        let el = Element::parse(x).expect("parse");
        assert_eq!(el.children[0], Node::Comment(" hi ".into()));
        assert_eq!(el.child("b").map(|b| b.text()), Some("x < y".into()));
        assert_eq!(el.to_xml(), "<a>\n  <!-- hi -->\n  <b>x &lt; y</b>\n</a>\n");
    }

    #[test]
    fn formats_libvirt_style() {
        let el = Element::new("domain")
            .with_attr("type", "kvm")
            .with_child(Element::new("name").with_text("it's <a> & \"b\""))
            .with_child(Element::new("x").with_attr("v", "a'b\"c<&>\n"))
            .with_child(Element::new("empty"));
        assert_eq!(
            el.to_xml(),
            "<domain type='kvm'>\n  <name>it's &lt;a&gt; &amp; \"b\"</name>\n  \
             <x v='a&apos;b&quot;c&lt;&amp;&gt;&#10;'/>\n  <empty/>\n</domain>\n"
        );
        let back = Element::parse(&el.to_xml()).expect("reparse");
        assert_eq!(back, el);
    }

    #[test]
    fn mixed_content_is_written_inline() {
        let x = "<r><p>Hello <b>bold</b> world</p></r>";
        let el = Element::parse(x).expect("parse");
        assert_eq!(el.to_xml(), "<r>\n  <p>Hello <b>bold</b> world</p>\n</r>\n");
    }

    #[test]
    fn rejects_bad_documents() {
        let cases = [
            ("", "no root"),
            ("<a>", "not closed"),
            ("<a></b>", ""),
            ("<a/><b/>", "second root"),
            ("<a/>junk", "outside the root"),
            ("junk<a/>", "outside the root"),
            ("<!DOCTYPE a [<!ENTITY x 'y'>]><a>&x;</a>", "DOCTYPE"),
            ("<a>&x;</a>", "not defined"),
            ("<a b='1' b='2'/>", "b"),
            ("<a b=1/>", ""),
            ("<a><!-- x -- y --></a>", ""),
        ];
        for (doc, want) in cases {
            let err = Element::parse(doc).expect_err(doc);
            assert!(
                err.to_string().contains(want),
                "{doc:?}: error {err} does not contain {want:?}"
            );
        }
    }

    #[test]
    fn byte_order_mark_is_ignored() {
        let el = Element::parse("\u{feff}<?xml version='1.0'?>\n<a/>").expect("parse");
        assert_eq!(el.name, "a");
    }

    #[test]
    fn errors_have_positions() {
        let err = Element::parse("<a>\n  <b>\n</a>").expect_err("mismatch");
        assert_eq!(err.line, Some(3), "{err}");
        assert!(err.column.is_some());
        let err = Element::parse("<a/>\n<b/>").expect_err("two roots");
        assert_eq!((err.line, err.column), (Some(2), Some(1)), "{err}");
    }

    #[test]
    fn attribute_helpers() {
        let mut el = Element::new("e").with_attr("a", "1").with_attr("b", "2");
        el.set_attr("a", "3");
        assert_eq!(el.attrs[0], ("a".into(), "3".into()));
        el.set_attr_at(1, "id", "7");
        assert_eq!(el.attrs[1], ("id".into(), "7".into()));
        assert_eq!(el.remove_attr("id"), Some("7".into()));
        assert_eq!(el.remove_attr("id"), None);
        assert_eq!(el.attr("b"), Some("2"));
    }

    #[test]
    fn child_helpers_and_ordering() {
        let order = ["name", "uuid", "title", "memory"];
        let mut el = Element::parse("<d><memory/><zzz/><!--c--><name/></d>").expect("parse");
        el.reorder_children(&order);
        let names: Vec<_> = el.elements().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["name", "memory", "zzz"]);
        // the comment travels with <name>
        assert_eq!(el.children[0], Node::Comment("c".into()));
        el.insert_ordered(Element::new("uuid"), &order);
        el.insert_ordered(Element::new("title"), &order);
        let names: Vec<_> = el.elements().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["name", "uuid", "title", "memory", "zzz"]);
        el.insert_before_first(Element::new("x"), &["memory"]);
        assert_eq!(el.children_named("x").count(), 1);
        assert_eq!(el.remove_children_named("x"), 1);
        el.child_mut("title").expect("title").set_text("T");
        assert_eq!(el.child("title").map(|t| t.text()), Some("T".into()));
        el.retain_elements(|e| e.name != "zzz");
        assert!(el.child("zzz").is_none());
        assert!(el.has_elements());
    }

    #[test]
    fn line_col_handles_multibyte() {
        assert_eq!(line_col("ab\ncé", 6), (2, 3));
        assert_eq!(line_col("x", 100), (1, 2));
    }

    fn nested(levels: usize) -> String {
        let mut x = String::new();
        for _ in 0..levels {
            x.push_str("<a>");
        }
        for _ in 0..levels {
            x.push_str("</a>");
        }
        x
    }

    #[test]
    fn nesting_is_limited_like_libxml2() {
        let ok = Element::parse(&nested(MAX_DEPTH)).expect("256 levels parse");
        ok.check_limits().expect("and pass the check");
        let e = Element::parse(&nested(MAX_DEPTH + 1)).unwrap_err();
        assert!(e.message.contains("limit of 256 levels"), "{e}");
        // Deep input fails fast and without recursion, however deep.
        let e = Element::parse(&nested(200_000)).unwrap_err();
        assert!(e.message.contains("256"), "{e}");
        // A fragment is held to what is left below its place in the document.
        assert!(Element::parse_at(&nested(MAX_DEPTH - 2), 3).is_ok());
        assert!(Element::parse_at(&nested(MAX_DEPTH - 1), 3).is_err());
        // Self-closing at the limit counts too.
        let mut x = nested(MAX_DEPTH);
        x.insert_str(MAX_DEPTH * 3, "<b/>");
        assert!(Element::parse(&x).is_err());
    }

    #[test]
    fn width_and_attributes_are_limited() {
        let wide = format!("<r>{}</r>", "<a/>".repeat(MAX_NODES - 1));
        Element::parse(&wide).expect("at the limit");
        let wider = format!("<r>{}</r>", "<a/>".repeat(MAX_NODES));
        let e = Element::parse(&wider).unwrap_err();
        assert!(e.message.contains("limit of 50000 elements"), "{e}");
        let attrs: String = (0..=MAX_ATTRS).map(|i| format!(" a{i}='x'")).collect();
        let e = Element::parse(&format!("<r{attrs}/>")).unwrap_err();
        assert!(e.message.contains("limit of 256 attributes"), "{e}");
        // A tree grown in memory past the limits is caught before it is stored.
        let mut root = Element::new("r");
        let mut cur = &mut root;
        for _ in 0..MAX_DEPTH {
            cur.push(Element::new("a"));
            let Some(Node::Element(next)) = cur.children.last_mut() else {
                unreachable!()
            };
            cur = next;
        }
        assert!(root.check_limits().unwrap_err().message.contains("levels"));
    }

    /// Found by the device_xml fuzz target: `<mac='52:…'>` was one element named
    /// `mac='52:…` to the tokenizer, and came back from formatting as something else.
    #[test]
    fn names_must_be_xml_names() {
        for bad in ["<a='1'/>", "<1a/>", "<r -a='1'/>"] {
            let e = Element::parse(bad).unwrap_err();
            assert!(e.message.contains("invalid"), "{bad}: {e}");
        }
        // Refused by the tokenizer itself.
        assert!(Element::parse("<r><m'x/></r>").is_err());
        assert!(Element::parse("<r a'b='1'/>").is_err());
        for good in [
            "<nova:instance xmlns:nova='u'/>",
            "<a-b.c_d/>",
            "<é ü='1'/>",
        ] {
            Element::parse(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
    }
}
