//! The order a person builds for one prompt: the best remaining response first, the last one
//! implied, with undo. Always a total order (no ties): each response is picked exactly once.

/// Why a pick was refused; the screen tells the person.
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    /// The order is already complete (Enter saves it).
    Complete,
    /// No response has this 1-based number.
    NoSuchResponse(usize),
    /// This 1-based response number already holds this 1-based place.
    AlreadyPlaced { number: usize, place: usize },
}

/// Picks so far as indices into the responses in display order, best first.
#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    k: usize,
    picks: Vec<usize>,
    /// Whether the last entry of `picks` was filled in because only one response was left.
    implied: bool,
}

impl Order {
    /// An empty order of `k` responses.
    pub fn new(k: usize) -> Order {
        Order {
            k,
            picks: Vec::with_capacity(k),
            implied: false,
        }
    }

    /// Place the response with 1-based `number` next. When one response is left it is placed
    /// last at once: it has nowhere else to go.
    pub fn pick(&mut self, number: usize) -> Result<(), Refused> {
        if self.is_complete() {
            return Err(Refused::Complete);
        }
        if number == 0 || number > self.k {
            return Err(Refused::NoSuchResponse(number));
        }
        let i = number - 1;
        if let Some(place) = self.place_of(i) {
            return Err(Refused::AlreadyPlaced { number, place });
        }
        self.picks.push(i);
        if self.picks.len() + 1 == self.k
            && let Some(last) = (0..self.k).find(|j| !self.picks.contains(j))
        {
            self.picks.push(last);
            self.implied = true;
        }
        Ok(())
    }

    /// Take back the last pick the person made (with the implied last place it completed).
    /// False when there is nothing to take back.
    pub fn undo(&mut self) -> bool {
        if self.implied {
            self.picks.pop();
            self.implied = false;
        }
        self.picks.pop().is_some()
    }

    pub fn is_complete(&self) -> bool {
        self.picks.len() == self.k
    }

    /// How many more picks the person has to make.
    pub fn remaining_picks(&self) -> usize {
        self.k.saturating_sub(self.picks.len() + 1)
    }

    /// Indices of the placed responses, best first.
    pub fn picks(&self) -> &[usize] {
        &self.picks
    }

    /// The 1-based place of response `i` (0-based), if placed.
    pub fn place_of(&self, i: usize) -> Option<usize> {
        self.picks.iter().position(|&p| p == i).map(|p| p + 1)
    }

    /// The responses best to worst, once the order is complete.
    pub fn apply(&self, responses: &[String]) -> Option<Vec<String>> {
        if !self.is_complete() || responses.len() != self.k {
            return None;
        }
        Some(self.picks.iter().map(|&i| responses[i].clone()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_last_place_is_implied() {
        let mut o = Order::new(4);
        assert_eq!(o.remaining_picks(), 3);
        o.pick(3).unwrap();
        o.pick(1).unwrap();
        assert!(!o.is_complete());
        assert_eq!(o.apply(&strings(&["a", "b", "c", "d"])), None);
        o.pick(4).unwrap();
        assert!(o.is_complete());
        assert_eq!(o.remaining_picks(), 0);
        assert_eq!(o.picks(), &[2, 0, 3, 1]);
        assert_eq!(
            o.apply(&strings(&["a", "b", "c", "d"])),
            Some(strings(&["c", "a", "d", "b"]))
        );
        assert_eq!(o.place_of(1), Some(4));
    }

    #[test]
    fn two_responses_need_one_pick() {
        let mut o = Order::new(2);
        o.pick(2).unwrap();
        assert_eq!(o.apply(&strings(&["x", "y"])), Some(strings(&["y", "x"])));
        // Undo takes back the pick and the implied place with it.
        assert!(o.undo());
        assert!(o.picks().is_empty());
        assert!(!o.undo());
    }

    #[test]
    fn refused_picks_change_nothing() {
        let mut o = Order::new(3);
        o.pick(2).unwrap();
        assert_eq!(
            o.pick(2),
            Err(Refused::AlreadyPlaced {
                number: 2,
                place: 1
            })
        );
        assert_eq!(o.pick(0), Err(Refused::NoSuchResponse(0)));
        assert_eq!(o.pick(4), Err(Refused::NoSuchResponse(4)));
        assert_eq!(o.picks(), &[1]);
        o.pick(3).unwrap();
        assert_eq!(o.pick(1), Err(Refused::Complete));
        assert_eq!(o.picks(), &[1, 2, 0]);
    }

    #[test]
    fn undo_steps_back_one_key_press_at_a_time() {
        let mut o = Order::new(4);
        for n in [4, 2, 1] {
            o.pick(n).unwrap();
        }
        assert!(o.is_complete());
        assert!(o.undo());
        assert_eq!(o.picks(), &[3, 1]);
        assert!(o.undo());
        assert_eq!(o.picks(), &[3]);
        o.pick(1).unwrap();
        o.pick(3).unwrap();
        assert_eq!(o.picks(), &[3, 0, 2, 1]);
    }
}
