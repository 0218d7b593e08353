//! "Did you mean": the valid key a typo was most likely meant to be, for
//! the errors of policy files and of the daemon's config.

/// The valid key nearest to `key`, if it is near enough to be a likely
/// intent (edit distance at most 2).
pub fn closest(key: &str, valid: &[&'static str]) -> Option<&'static str> {
    valid
        .iter()
        .map(|candidate| (edit_distance(key, candidate), *candidate))
        .filter(|(distance, _)| *distance <= 2)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous_diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous_diagonal + usize::from(ca != *cb);
            previous_diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("methds", "methods"), 1);
        assert_eq!(edit_distance("host", "host"), 0);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("ratelimit", "rate_limit"), 1);
        let keys = &["host", "methods", "paths"];
        assert_eq!(closest("methds", keys), Some("methods"));
        assert_eq!(closest("zzzzzz", keys), None);
    }
}
