//! The two parsers of bytes from outside: the origin's Content-Range header and the URL
//! records of the cache directory. On any input they return a value or `None`, never panic,
//! and what they accept is what they would write.

use mkmodule_remote::{parse_content_range, parse_origin};
use proptest::prelude::*;

proptest! {
    #[test]
    fn content_range_never_panics(text in ".{0,64}") {
        let _ = parse_content_range(&text);
    }

    #[test]
    fn content_range_reads_what_servers_write(start in 0u64..u64::MAX / 2, len in 1u64..1 << 40, extra in 0u64..1 << 40) {
        let end = start + len - 1;
        let total = end + 1 + extra;
        let header = format!("bytes {start}-{end}/{total}");
        prop_assert_eq!(parse_content_range(&header), Some((Some((start, end)), Some(total))));
        let unsatisfied = format!("bytes */{total}");
        prop_assert_eq!(parse_content_range(&unsatisfied), Some((None, Some(total))));
        // Bytes around the numbers make it something else.
        let bent = format!("bytes {start}-{end}x/{total}");
        prop_assert_eq!(parse_content_range(&bent), None);
    }

    #[test]
    fn origin_records_never_panic(text in "(v1\n)?[0-9a-z\n\"]{0,120}") {
        if let Some(record) = parse_origin(&text) {
            prop_assert_eq!(record.identity.len(), 64);
        }
    }

    #[test]
    fn origin_records_read_back(len: u64, validator in "[ -~]{0,40}", identity in "[0-9a-f]{64}") {
        let text = format!("v1\n{len}\n{validator}\n{identity}\n");
        let record = parse_origin(&text).unwrap();
        prop_assert_eq!(record.len, len);
        prop_assert_eq!(record.validator, validator);
        prop_assert_eq!(record.identity, identity);
    }
}
