//! Pages of lists: newest first, at most `limit` items, continued with an opaque cursor (the
//! sequence number of the last item shown).

use crate::{Error, Result};

/// Which page of a list: at most `limit` (1 to 100, default 20) items older than the one a
/// previous page's `next_cursor` named.
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

impl PageRequest {
    /// The page size and the sequence number to start before.
    pub fn check(&self) -> Result<(u32, Option<i64>)> {
        let limit = self.limit.unwrap_or(20);
        if !(1..=100).contains(&limit) {
            return Err(Error::invalid(
                "INVALID_QUERY",
                "limit must be between 1 and 100",
            ));
        }
        let before = match self.cursor.as_deref() {
            None | Some("") => None,
            Some(c) => Some(c.parse::<i64>().map_err(|_| {
                Error::invalid("INVALID_QUERY", "cursor must be a next_cursor value")
            })?),
        };
        Ok((limit, before))
    }
}

/// The page of `rows` (fetched with one row more than `limit`, newest first) and the cursor of
/// the next page, if there is one.
pub fn split<T>(mut rows: Vec<T>, limit: u32, seq: impl Fn(&T) -> i64) -> (Vec<T>, Option<String>) {
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next = more
        .then(|| rows.last().map(|r| seq(r).to_string()))
        .flatten();
    (rows, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_end_with_a_cursor_only_when_more_follow() {
        assert_eq!(
            split(vec![9, 8, 7], 2, |r| *r),
            (vec![9, 8], Some("8".into()))
        );
        assert_eq!(split(vec![9, 8], 2, |r| *r), (vec![9, 8], None));
        let p = PageRequest {
            limit: Some(0),
            cursor: None,
        };
        assert_eq!(p.check().unwrap_err().code, "INVALID_QUERY");
        let p = PageRequest {
            limit: None,
            cursor: Some("x".into()),
        };
        assert!(p.check().unwrap_err().detail.contains("cursor"));
        let p = PageRequest {
            limit: Some(5),
            cursor: Some("42".into()),
        };
        assert_eq!(p.check().unwrap(), (5, Some(42)));
    }
}
