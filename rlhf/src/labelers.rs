//! Scripted "humans" that rank responses (docs/rlhf.md): AFINN-96 sentiment, a length target and a
//! character count. Each gives a response a score (higher is better); `rank` orders responses
//! best to worst.

use crate::{Error, Result};
use std::collections::HashMap;
use std::sync::OnceLock;

/// AFINN-96 (Finn Årup Nielsen, 2009): 1,480 English words and phrases with valences −5…+5.
const AFINN_CSV: &str = include_str!("../../data/afinn-96.csv");

/// Entries have at most this many words ("son-of-a-bitch").
const MAX_PHRASE_WORDS: usize = 4;

#[derive(Debug, Clone, PartialEq)]
pub enum Labeler {
    /// Sum of the AFINN valences of the words and phrases in the response.
    Afinn,
    /// Closer to this many bytes is better.
    Length(usize),
    /// More occurrences of this character is better.
    Count(char),
}

impl std::str::FromStr for Labeler {
    type Err = String;
    /// `afinn`, `length:N` or `count:CHAR` (one character).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let usage = "expected afinn, length:N or count:CHAR";
        match s.split_once(':') {
            None if s == "afinn" => Ok(Labeler::Afinn),
            Some(("length", n)) => n
                .parse()
                .map(Labeler::Length)
                .map_err(|_| format!("length:N needs a byte count N ≥ 0, got '{n}'")),
            Some(("count", c)) => {
                let mut chars = c.chars();
                match (chars.next(), chars.next()) {
                    (Some(ch), None) => Ok(Labeler::Count(ch)),
                    _ => Err(format!("count:CHAR needs exactly one character, got '{c}'")),
                }
            }
            _ => Err(format!("unknown labeler '{s}' ({usage})")),
        }
    }
}

impl std::fmt::Display for Labeler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Labeler::Afinn => f.write_str("afinn"),
            Labeler::Length(n) => write!(f, "length:{n}"),
            Labeler::Count(c) => write!(f, "count:{c}"),
        }
    }
}

impl Labeler {
    /// How good `response` is; higher is better. Integer-valued for every labeler, so ties are
    /// exact.
    pub fn score(&self, response: &str) -> i64 {
        match self {
            Labeler::Afinn => afinn_score(response),
            Labeler::Length(n) => -(response.len().abs_diff(*n) as i64),
            Labeler::Count(c) => response.chars().filter(|x| x == c).count() as i64,
        }
    }

    /// `responses` ordered best to worst. Ties keep their given order (a stable sort): with
    /// responses in sampling order that is deterministic for a seed, and it adds no preference
    /// of its own — breaking ties by, say, text order would teach a reward model a spurious one.
    pub fn rank(&self, responses: Vec<String>) -> Vec<String> {
        let mut scored: Vec<(i64, String)> =
            responses.into_iter().map(|r| (self.score(&r), r)).collect();
        scored.sort_by_key(|s| std::cmp::Reverse(s.0));
        scored.into_iter().map(|(_, r)| r).collect()
    }
}

/// Lowercased words: maximal runs of letters and apostrophes (typographic ’ read as '),
/// without apostrophes at their ends (quotes). Everything else separates words, hyphens
/// included, so "cover-up" and "cover up" are the same two words.
pub fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut flush = |cur: &mut String| {
        let w = cur.trim_matches('\'');
        if !w.is_empty() {
            out.push(w.to_string());
        }
        cur.clear();
    };
    for ch in text.chars() {
        let ch = if ch == '’' { '\'' } else { ch };
        if ch.is_alphabetic() || ch == '\'' {
            cur.extend(ch.to_lowercase());
        } else {
            flush(&mut cur);
        }
    }
    flush(&mut cur);
    out
}

/// The lexicon keyed by an entry's words joined with one space. Where the file lists a word
/// twice (it does for 12 words, e.g. `cheers` 3 and 2), the later value wins, as in the
/// reference `afinn` Python package, which reads the file into a dict.
fn afinn() -> &'static HashMap<String, i64> {
    static LEXICON: OnceLock<HashMap<String, i64>> = OnceLock::new();
    LEXICON.get_or_init(|| {
        // The file is compiled in, and `the_lexicon_parses` checks it: this cannot fail at run time.
        parse_afinn(AFINN_CSV).expect("the embedded AFINN lexicon parses")
    })
}

fn parse_afinn(csv: &str) -> Result<HashMap<String, i64>> {
    let mut map = HashMap::new();
    for (i, line) in csv.lines().enumerate().skip(1) {
        let bad = || Error::data("data/afinn-96.csv", Some(i + 1), "expected word,valence");
        let (word, value) = line.rsplit_once(',').ok_or_else(bad)?;
        let value: i64 = value.trim().parse().map_err(|_| bad())?;
        map.insert(words(word).join(" "), value);
    }
    Ok(map)
}

/// Sum of valences, matching the longest entry (up to four words) at each word, left to right,
/// so a phrase counts instead of its parts: "not good" is −2, not "good" +3.
pub fn afinn_score(text: &str) -> i64 {
    let lex = afinn();
    let w = words(text);
    let (mut i, mut total) = (0, 0);
    while i < w.len() {
        let longest = (1..=MAX_PHRASE_WORDS.min(w.len() - i))
            .rev()
            .find_map(|n| lex.get(&w[i..i + n].join(" ")).map(|v| (n, *v)));
        match longest {
            Some((n, v)) => {
                total += v;
                i += n;
            }
            None => i += 1,
        }
    }
    total
}

/// The distinct `responses` ranked best to worst by `by`, with their scores; `None` when fewer
/// than two are distinct (nothing to compare).
pub fn rank_distinct(by: &Labeler, responses: Vec<String>) -> Option<(Vec<String>, Vec<i64>)> {
    let responses = crate::sampling::distinct(responses);
    if responses.len() < 2 {
        return None;
    }
    let ranked = by.rank(responses);
    let scores = ranked.iter().map(|r| by.score(r)).collect();
    Some((ranked, scores))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lexicon_parses() {
        let lex = parse_afinn(AFINN_CSV).unwrap();
        // 1,480 lines of entries, 12 words listed twice.
        assert_eq!(lex.len(), AFINN_CSV.lines().count() - 1 - 12);
        assert_eq!(lex.get("can't stand"), Some(&-3));
        assert_eq!(lex.get("son of a bitch"), Some(&-5));
        // Duplicates: the later line wins (cheers,3 then cheers,2).
        assert_eq!(lex.get("cheers"), Some(&2));
        assert!(parse_afinn("word,valence\nfoo\n").is_err());
    }

    #[test]
    fn words_split_on_non_letters() {
        assert_eq!(
            words("I CAN’T stand it—it's a 'cover-up'!! 42x"),
            ["i", "can't", "stand", "it", "it's", "a", "cover", "up", "x"]
        );
        assert!(words(" 12 -- '' ").is_empty());
    }

    #[test]
    fn afinn_by_hand() {
        // love +3, good +3, bad −3 (from the csv).
        assert_eq!(afinn_score("Love, love; good. Bad?"), 3 + 3 + 3 - 3);
        // Phrases win over their words: "not good" −2 (not "good" +3), "no fun" −3 (not −1 + 4),
        // "can't stand" −3, hyphen or space alike for "cover-up" −3.
        assert_eq!(afinn_score("This is not good"), -2);
        assert_eq!(afinn_score("no fun at all"), -3);
        assert_eq!(afinn_score("I can't stand a cover up"), -3 - 3);
        assert_eq!(afinn_score("Good fun, NO FUN"), 3 + 4 - 3);
        assert_eq!(afinn_score("the table is brown"), 0);
        assert_eq!(afinn_score(""), 0);
    }

    #[test]
    fn length_and_count() {
        let l = Labeler::Length(5);
        assert_eq!(
            (l.score("hello"), l.score("hi"), l.score("hello!!")),
            (0, -3, -2)
        );
        // Bytes, not characters: "é" is 2 bytes.
        assert_eq!(l.score("ééé"), -1);
        let c = Labeler::Count('a');
        assert_eq!(
            (c.score("banana"), c.score("xyz"), c.score("AAa")),
            (3, 0, 1)
        );
    }

    #[test]
    fn rank_best_first_ties_in_given_order() {
        let r = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let c = Labeler::Count('!');
        assert_eq!(
            c.rank(r(&["a!", "b", "c!!!", "d!"])),
            r(&["c!!!", "a!", "d!", "b"])
        );
        assert_eq!(
            c.rank(r(&["d!", "b", "c!!!", "a!"])),
            r(&["c!!!", "d!", "a!", "b"])
        );
        let l = Labeler::Length(3);
        assert_eq!(
            l.rank(r(&["abcdef", "ab", "abc", "abcd"])),
            r(&["abc", "ab", "abcd", "abcdef"])
        );
        let a = Labeler::Afinn;
        assert_eq!(
            a.rank(r(&["bad day", "a good day", "a day", "not good"])),
            r(&["a good day", "a day", "not good", "bad day"])
        );
    }

    #[test]
    fn parse_labelers() {
        assert_eq!("afinn".parse(), Ok(Labeler::Afinn));
        assert_eq!("length:120".parse(), Ok(Labeler::Length(120)));
        assert_eq!("count:é".parse(), Ok(Labeler::Count('é')));
        assert_eq!("count::".parse(), Ok(Labeler::Count(':')));
        for bad in [
            "",
            "afin",
            "length",
            "length:-1",
            "length:x",
            "count:",
            "count:ab",
            "afinn:1",
        ] {
            assert!(bad.parse::<Labeler>().is_err(), "{bad}");
        }
        for l in [Labeler::Afinn, Labeler::Length(7), Labeler::Count('x')] {
            assert_eq!(l.to_string().parse(), Ok(l));
        }
    }
}
