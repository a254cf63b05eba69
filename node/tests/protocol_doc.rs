//! `docs/protocol.md` is the public contract; `node/src/protocol.rs` is what the node speaks.
//! These tests fail when the two disagree on the client ops, the server ops, the error codes or
//! the close codes, in either direction (listed in one and missing from the other).
//!
//! The document's tables are the machine-readable side: in the sections named below, every
//! table row whose first cell is a `code span` names one item.

use std::collections::BTreeSet;

use node::edge::{
    CLOSE_GOING_AWAY, CLOSE_NOT_UTF8, CLOSE_POLICY, CLOSE_PROTOCOL_ERROR, CLOSE_SLOW_CONSUMER,
    CLOSE_TOO_BIG,
};
use node::protocol::{ClientOp, ErrorCode, SERVER_OPS};

const DOC: &str = include_str!("../../docs/protocol.md");

/// The first-cell code spans of the table rows under the `## {heading}` heading (up to the
/// next `## ` heading).
fn names_in_section(heading: &str) -> BTreeSet<String> {
    let marker = format!("## {heading}");
    let start = DOC
        .lines()
        .position(|line| line.trim_end() == marker)
        .unwrap_or_else(|| panic!("docs/protocol.md has no `{marker}` heading"));
    let mut names = BTreeSet::new();
    for line in DOC.lines().skip(start + 1) {
        if line.starts_with("## ") {
            break;
        }
        let Some(row) = line.trim().strip_prefix('|') else {
            continue;
        };
        let first = row.split('|').next().unwrap_or_default().trim();
        if let Some(name) = first.strip_prefix('`').and_then(|s| s.strip_suffix('`')) {
            assert!(
                names.insert(name.to_owned()),
                "`{name}` is listed twice under `{marker}`"
            );
        }
    }
    assert!(!names.is_empty(), "no table rows under `{marker}`");
    names
}

fn set<T: ToString>(items: impl IntoIterator<Item = T>) -> BTreeSet<String> {
    items.into_iter().map(|item| item.to_string()).collect()
}

/// Compares both ways and names what is missing on each side.
fn assert_same(what: &str, doc: BTreeSet<String>, code: BTreeSet<String>) {
    let only_doc: Vec<_> = doc.difference(&code).collect();
    let only_code: Vec<_> = code.difference(&doc).collect();
    assert!(
        only_doc.is_empty() && only_code.is_empty(),
        "{what}: in docs/protocol.md but not in the code: {only_doc:?}; \
         in the code but not in docs/protocol.md: {only_code:?}"
    );
}

#[test]
fn the_document_lists_exactly_the_client_ops_the_node_parses() {
    assert_same(
        "client ops",
        names_in_section("Client to server"),
        set(ClientOp::NAMES),
    );
}

#[test]
fn the_document_lists_exactly_the_server_ops_the_node_sends() {
    assert_same(
        "server ops",
        names_in_section("Server to client"),
        set(SERVER_OPS),
    );
}

#[test]
fn the_document_lists_exactly_the_error_codes_the_node_uses() {
    assert_same(
        "error codes",
        names_in_section("Error codes"),
        set(ErrorCode::ALL.iter().map(|code| code.as_str())),
    );
}

#[test]
fn the_document_lists_exactly_the_close_codes_the_node_uses() {
    assert_same(
        "close codes",
        names_in_section("Close codes"),
        set([
            CLOSE_GOING_AWAY,
            CLOSE_POLICY,
            CLOSE_TOO_BIG,
            CLOSE_SLOW_CONSUMER,
            CLOSE_PROTOCOL_ERROR,
            CLOSE_NOT_UTF8,
        ]),
    );
}

#[test]
fn the_document_names_the_protocol_version_it_describes() {
    assert!(
        DOC.lines()
            .next()
            .is_some_and(|title| title.contains("version 1")),
        "the first line of docs/protocol.md should name the version"
    );
}
