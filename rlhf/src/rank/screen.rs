//! What `palm rank` shows: model text made safe for a terminal, wrapped to its width, and the
//! screen of one prompt as plain lines (no colours, so tests can read it exactly).

use super::order::Order;

/// Model output made safe to print: control characters (C0, DEL, C1) and the invisible
/// characters that reorder or hide text (bidi controls, zero-width marks) become visible
/// escapes, so a sampled `ESC [2J` cannot clear the screen and text shows what it is. A
/// backslash is doubled so that escapes stay unambiguous. A newline shows as `\n` and also
/// breaks the line, to keep the text's shape.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x80 && c.is_control() => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() || is_invisible_format(c) => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

/// Zero-width marks, bidi embeddings/overrides/isolates, word joiner and BOM.
fn is_invisible_format(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}'
        | '\u{feff}')
}

/// Columns a character takes in a terminal (0 for combining marks, 2 for wide ones).
fn char_width(c: char) -> usize {
    console::measure_text_width(c.encode_utf8(&mut [0u8; 4]))
}

/// Columns a string takes.
pub fn text_width(s: &str) -> usize {
    s.chars().map(char_width).sum()
}

/// Break `text` into lines of at most `width` columns: at `\n`, and between words where a
/// line would overflow; a word longer than a line is cut. Escape the text first (`escape`).
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut lines = Vec::new();
    for para in text.split('\n') {
        let mut line = String::new();
        let mut cols = 0;
        for word in para.split(' ') {
            let w = text_width(word);
            // One space before a word unless the line is empty.
            let sep = usize::from(!line.is_empty());
            if !line.is_empty() && cols + sep + w > width {
                lines.push(std::mem::take(&mut line));
                cols = 0;
            } else if sep == 1 {
                line.push(' ');
                cols += 1;
            }
            for c in word.chars() {
                let cw = char_width(c);
                if cols + cw > width && cols > 0 {
                    lines.push(std::mem::take(&mut line));
                    cols = 0;
                }
                line.push(c);
                cols += cw;
            }
        }
        lines.push(line);
    }
    lines
}

/// Cut a line to `width` columns (for the fixed lines, which are not wrapped).
fn fit(line: &str, width: usize) -> String {
    let mut out = String::new();
    let mut cols = 0;
    for c in line.chars() {
        cols += char_width(c);
        if cols > width {
            break;
        }
        out.push(c);
    }
    out
}

/// Where the session stands, for the header line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// 1-based number of this prompt among those to rank in this run.
    pub prompt: usize,
    pub prompts: usize,
    /// Rankings appended to the output in this run.
    pub written: usize,
    pub skipped: usize,
}

/// Everything one screen shows.
pub struct View<'a> {
    pub prompt: &'a str,
    pub responses: &'a [String],
    pub order: &'a Order,
    pub progress: Progress,
    /// Feedback on the last key (a refused pick, an unknown key); empty when none.
    pub message: &'a str,
    /// First line of the scrollable part shown.
    pub scroll: usize,
}

/// The keys, one line on an 80-column terminal; the scroll keys show on the rule above
/// when there is something to scroll.
pub fn key_help(k: usize) -> String {
    format!("keys: 1-{k} best remaining | u/Backspace undo | Enter save | s skip | q/Esc quit")
}

/// The lines that scroll: the prompt, then each response numbered with its place so far.
fn body(view: &View, cols: usize) -> Vec<String> {
    let mut lines = vec!["Prompt:".to_string()];
    for l in wrap(&escape(view.prompt), cols.saturating_sub(4)) {
        lines.push(format!("    {l}"));
    }
    let k = view.responses.len();
    for (i, r) in view.responses.iter().enumerate() {
        lines.push(String::new());
        let place = match view.order.place_of(i) {
            Some(p) => format!("#{p}"),
            None => "  ".into(),
        };
        // " 3 [#1] ": number, then the place it holds, both padded so texts line up.
        let label = format!("{:>2} [{place:>w$}] ", i + 1, w = k.to_string().len() + 1);
        let indent = " ".repeat(text_width(&label));
        let text = if r.is_empty() {
            "(empty response)".to_string()
        } else {
            escape(r)
        };
        for (j, l) in wrap(&text, cols.saturating_sub(indent.len()))
            .into_iter()
            .enumerate()
        {
            let lead = if j == 0 { &label } else { &indent };
            lines.push(format!("{lead}{l}"));
        }
    }
    lines
}

/// The order so far, e.g. `3 > 1 > _ > _`, and what to do next.
fn order_line(view: &View) -> String {
    let k = view.responses.len();
    let mut slots: Vec<String> = view
        .order
        .picks()
        .iter()
        .map(|i| (i + 1).to_string())
        .collect();
    slots.resize(k, "_".into());
    let next = if view.order.is_complete() {
        "complete: Enter saves it, u undoes".to_string()
    } else {
        let n = view.order.remaining_picks();
        let s = if n == 1 { "" } else { "s" };
        format!("{n} pick{s} to go (the last place is implied)")
    };
    format!("Order, best to worst: {}   {next}", slots.join(" > "))
}

/// The whole screen for a terminal of `rows` × `cols`, and the largest useful scroll (the
/// caller clamps its offset with it). A header and four footer lines (a rule, the order so far,
/// the keys, a message) stay put; the prompt and responses scroll between them when they do
/// not fit.
pub fn render(view: &View, rows: usize, cols: usize) -> (Vec<String>, usize) {
    // One column spare: writing into the last column makes some terminals wrap early.
    let cols = cols.saturating_sub(1).max(20);
    let body = body(view, cols);
    // The footer wraps rather than being cut, so a narrow terminal still shows every key.
    let footer: Vec<String> = [order_line(view), key_help(view.responses.len())]
        .iter()
        .chain(std::iter::once(&view.message.to_string()))
        .flat_map(|l| wrap(l, cols))
        .collect();
    let room = rows.saturating_sub(2 + footer.len()).max(3);
    let max_scroll = body.len().saturating_sub(room);
    let scroll = view.scroll.min(max_scroll);
    let p = view.progress;
    let header = format!(
        "palm rank | prompt {} of {} | {} written, {} skipped",
        p.prompt, p.prompts, p.written, p.skipped
    );
    // The rule under the text says when there is more of it than fits.
    let rule = if max_scroll > 0 {
        let last = (scroll + room).min(body.len());
        format!(
            "-- lines {}-{last} of {} (Up/Down, PgUp/PgDn) ",
            scroll + 1,
            body.len()
        )
    } else {
        String::new()
    };
    let rule_width = text_width(&rule);
    let mut lines = vec![fit(&header, cols)];
    lines.extend(body.into_iter().skip(scroll).take(room));
    lines.push(fit(&rule, cols) + &"-".repeat(cols.saturating_sub(rule_width)));
    lines.extend(footer);
    (lines, max_scroll)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_become_visible() {
        assert_eq!(
            escape("a\x1b[2J\x07b\tc\r\n\\d\u{7f}"),
            "a\\x1b[2J\\x07b\\tc\\r\\n\n\\\\d\\x7f"
        );
        assert_eq!(
            escape("\u{85}\u{202e}x\u{200b}"),
            "\\u{85}\\u{202e}x\\u{200b}"
        );
        // Printable text, accents and wide characters pass as they are.
        assert_eq!(escape("héllo 世界 ✓"), "héllo 世界 ✓");
        for s in ["\x1b]0;title\x07", "\u{9b}31m", "\x00\x08"] {
            assert!(!escape(s).chars().any(|c| c.is_control()), "{s:?}");
        }
    }

    #[test]
    fn wrapping_breaks_between_words_and_cuts_long_ones() {
        assert_eq!(wrap("the quick brown fox", 10), ["the quick", "brown fox"]);
        assert_eq!(wrap("abcdefghij", 4), ["abcd", "efgh", "ij"]);
        assert_eq!(wrap("ab\n\ncd", 10), ["ab", "", "cd"]);
        assert_eq!(wrap("", 10), [""]);
        // Wide characters take two columns.
        assert_eq!(wrap("世界世界", 5), ["世界", "世界"]);
        for line in wrap(&"lorem ipsum dolor sit amet ".repeat(20), 17) {
            assert!(text_width(&line) <= 17, "{line}");
        }
    }

    fn view<'a>(responses: &'a [String], order: &'a Order, scroll: usize) -> View<'a> {
        View {
            prompt: "Say something",
            responses,
            order,
            progress: Progress {
                prompt: 2,
                prompts: 5,
                written: 1,
                skipped: 0,
            },
            message: "no response 7; press 1-3",
            scroll,
        }
    }

    #[test]
    fn the_screen_numbers_responses_and_shows_places() {
        let responses: Vec<String> = ["good", "", "bad"].iter().map(|s| s.to_string()).collect();
        let mut order = Order::new(3);
        order.pick(3).unwrap();
        let (lines, max_scroll) = render(&view(&responses, &order, 0), 24, 80);
        assert_eq!(max_scroll, 0);
        assert_eq!(lines[0], "palm rank | prompt 2 of 5 | 1 written, 0 skipped");
        assert!(lines.contains(&" 1 [  ] good".to_string()), "{lines:#?}");
        assert!(lines.contains(&" 2 [  ] (empty response)".to_string()));
        assert!(lines.contains(&" 3 [#1] bad".to_string()));
        let footer = &lines[lines.len() - 3..];
        assert_eq!(
            footer[0],
            "Order, best to worst: 3 > _ > _   1 pick to go (the last place is implied)"
        );
        assert_eq!(
            footer[1],
            "keys: 1-3 best remaining | u/Backspace undo | Enter save | s skip | q/Esc quit"
        );
        assert_eq!(footer[2], "no response 7; press 1-3");
    }

    #[test]
    fn long_responses_wrap_and_scroll_within_the_terminal() {
        let responses = vec!["word ".repeat(100), "short".to_string()];
        let order = Order::new(2);
        let (lines, max_scroll) = render(&view(&responses, &order, 0), 12, 40);
        assert_eq!(lines.len(), 12);
        assert!(max_scroll > 0);
        // 12 rows: the header, the text, the rule, and the footer wrapped to fit 39 columns.
        let rule = lines.iter().position(|l| l.starts_with("--")).unwrap();
        let footer = lines[rule + 1..].join(" ");
        assert!(rule >= 4, "{lines:#?}");
        let shown = format!("-- lines 1-{} of", rule - 1);
        assert!(lines[rule].starts_with(&shown), "{}", lines[rule]);
        assert!(footer.contains("the last place is implied"), "{footer}");
        assert!(footer.contains("keys: 1-2 best remaining"), "{footer}");
        assert!(footer.contains("q/Esc quit"), "{footer}");
        for l in &lines {
            assert!(text_width(l) <= 39, "{l}");
        }
        // Continuation lines are indented under the text, not the number.
        assert!(lines[4].starts_with(" 1 [  ] word"), "{lines:#?}");
        assert!(lines[5].starts_with("        word"), "{lines:#?}");
        // Scrolled to the end (an offset past it is clamped), the last response shows.
        let (lines, _) = render(&view(&responses, &order, usize::MAX), 12, 40);
        assert!(lines.contains(&" 2 [  ] short".to_string()), "{lines:#?}");
    }
}
