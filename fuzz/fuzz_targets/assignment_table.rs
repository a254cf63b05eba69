//! An assignment table as a node reads it from its ConfigMap or the local driver's HTTP body
//! (`shard::AssignmentTable::from_json`): any text must give a table or an error, never a panic;
//! a table read back from its own JSON is the same table.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shard::AssignmentTable;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(table) = AssignmentTable::from_json(text) {
        let again = AssignmentTable::from_json(&table.to_json()).expect("a table's JSON reads");
        assert_eq!(again, table);
    }
});
