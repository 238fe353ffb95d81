//! Which message a publisher confirm and a `basic.return` belong to, with many messages
//! awaiting their confirms on one channel.
//!
//! lapin hands a returned message to whichever confirm it completes next on the channel, and
//! one `basic.ack` with `multiple` completes several confirms at once, in no set order: a
//! return can reach another message's confirm. Its `message_id` (the event id, unique among
//! the messages in flight) names its owner. What the [`Window`] relies on:
//!
//! - RabbitMQ sends a message's `basic.return` before its `basic.ack`, and the returns of a
//!   channel in publish order (it routes a channel's messages one after the other);
//! - lapin queues returns in arrival order and pops one, if any, each time it completes a
//!   confirm, attaching it to that confirm.
//!
//! So once every message up to the `n`-th published is confirmed, the returns of those
//! messages have all been popped: at any moment the returns still queued belong to
//! unconfirmed messages at least as many as they are (a return arrives for an unconfirmed
//! message; a completion pops the oldest return, and the oldest belongs to the lowest tag).
//! The window therefore decides messages in publish (delivery-tag) order, and decides the
//! `n`-th only when all before it are confirmed too and every confirm completed so far has
//! been looked at (the caller guarantees the second: it polls each woken confirm before
//! asking). A message is returned when any confirm carried its return; delivered when acked
//! and not returned; refused when nacked.

use std::collections::{HashMap, VecDeque};

/// How the broker answered one publish.
#[derive(Debug)]
pub(super) enum Answer<E> {
    /// `basic.ack`.
    Ack,
    /// `basic.nack`.
    Nack,
    /// The channel is not in confirm mode.
    NotRequested,
    /// The channel or connection failed before the confirm.
    Failed(E),
}

/// A returned message, as one confirm carried it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Returned {
    /// Its `message_id`.
    pub id: String,
    /// The broker's reply code (312 NO_ROUTE).
    pub code: u16,
    /// The broker's reply text.
    pub text: String,
}

/// What became of one message.
#[derive(Debug)]
pub(super) enum Verdict<E> {
    /// Acknowledged and not returned: delivered.
    Delivered,
    /// Returned as unroutable (whether acked or nacked).
    Returned(Returned),
    /// Nacked and not returned.
    Nacked,
    /// No confirm will come (not in confirm mode).
    NotRequested,
    /// The channel failed: this message and every later one on it.
    Failed(E),
}

struct Slot<T, E> {
    id: String,
    item: T,
    answer: Option<Answer<E>>,
}

/// The messages of one channel awaiting their verdict, in publish order.
pub(super) struct Window<T, E> {
    /// Sequence number of `slots[0]` (the first publish is 0).
    first: u64,
    slots: VecDeque<Slot<T, E>>,
    /// Returns seen on any confirm, by message id, whose message is not decided yet.
    returned: HashMap<String, Returned>,
}

impl<T, E> Default for Window<T, E> {
    fn default() -> Self {
        Window {
            first: 0,
            slots: VecDeque::new(),
            returned: HashMap::new(),
        }
    }
}

impl<T, E> Window<T, E> {
    /// Adds the next message published on the channel; returns its sequence number.
    pub fn push(&mut self, id: String, item: T) -> u64 {
        self.slots.push_back(Slot {
            id,
            item,
            answer: None,
        });
        self.first + self.slots.len() as u64 - 1
    }

    /// The oldest undecided message.
    pub fn front(&self) -> Option<&T> {
        self.slots.front().map(|s| &s.item)
    }

    /// The message of sequence number `seq` while it has no answer yet.
    pub fn waiting_mut(&mut self, seq: u64) -> Option<&mut T> {
        let i = usize::try_from(seq.checked_sub(self.first)?).ok()?;
        self.slots
            .get_mut(i)
            .filter(|s| s.answer.is_none())
            .map(|s| &mut s.item)
    }

    /// Records the confirm of message `seq`, and the return it carried (whoever's it is).
    pub fn answer(&mut self, seq: u64, answer: Answer<E>, returned: Option<Returned>) {
        if let Some(r) = returned {
            self.returned.insert(r.id.clone(), r);
        }
        let Some(i) = seq
            .checked_sub(self.first)
            .and_then(|i| usize::try_from(i).ok())
        else {
            return;
        };
        if let Some(slot) = self.slots.get_mut(i) {
            slot.answer.get_or_insert(answer);
        }
    }

    /// The next decided message (the oldest, once it and all before it have their confirm).
    pub fn next_decided(&mut self) -> Option<(T, Verdict<E>)> {
        self.slots.front()?.answer.as_ref()?;
        let slot = self.slots.pop_front()?;
        self.first += 1;
        let verdict = match (self.returned.remove(&slot.id), slot.answer) {
            (_, Some(Answer::Failed(e))) => Verdict::Failed(e),
            (Some(r), _) => Verdict::Returned(r),
            (None, Some(Answer::Ack)) => Verdict::Delivered,
            (None, Some(Answer::Nack)) => Verdict::Nacked,
            (None, Some(Answer::NotRequested) | None) => Verdict::NotRequested,
        };
        Some((slot.item, verdict))
    }

    /// Everything still undecided, oldest first (the channel is given up).
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.returned.clear();
        self.first += self.slots.len() as u64;
        self.slots.drain(..).map(|s| s.item)
    }

    /// Messages undecided.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ret(id: &str) -> Option<Returned> {
        Some(Returned {
            id: id.into(),
            code: 312,
            text: "NO_ROUTE".into(),
        })
    }

    fn window(ids: &[&str]) -> Window<&'static str, String> {
        let mut w = Window::default();
        for (n, id) in ids.iter().enumerate() {
            let leaked: &'static str = Box::leak(id.to_string().into_boxed_str());
            assert_eq!(w.push(id.to_string(), leaked), n as u64);
        }
        w
    }

    fn decided(w: &mut Window<&'static str, String>) -> Vec<(String, String)> {
        std::iter::from_fn(|| w.next_decided())
            .map(|(item, v)| (item.to_string(), format!("{v:?}")))
            .collect()
    }

    #[test]
    fn a_return_carried_by_another_confirm_reaches_its_owner() {
        // b is unroutable; one multiple ack completes a, b, c in some order, and lapin
        // attached b's return to c's confirm.
        let mut w = window(&["a", "b", "c"]);
        w.answer(2, Answer::Ack, ret("b"));
        w.answer(0, Answer::Ack, None);
        w.answer(1, Answer::Ack, None);
        let d = decided(&mut w);
        assert_eq!(d.len(), 3);
        assert_eq!(d[0], ("a".into(), "Delivered".into()));
        assert!(d[1].1.starts_with("Returned"), "{d:?}");
        assert_eq!(d[2], ("c".into(), "Delivered".into()));
    }

    #[test]
    fn nothing_is_decided_before_all_earlier_confirms() {
        let mut w = window(&["a", "b"]);
        w.answer(1, Answer::Ack, None);
        assert!(w.next_decided().is_none());
        assert_eq!(w.len(), 2);
        w.answer(0, Answer::Nack, None);
        let d = decided(&mut w);
        assert_eq!(d[0].1, "Nacked");
        assert_eq!(d[1].1, "Delivered");
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn a_failed_channel_fails_the_message_and_sequence_numbers_continue() {
        let mut w = window(&["a"]);
        w.answer(0, Answer::Failed("closed".into()), ret("a"));
        assert_eq!(decided(&mut w)[0].1, "Failed(\"closed\")");
        assert_eq!(w.push("b".into(), "b"), 1);
        assert!(w.waiting_mut(0).is_none());
        assert!(w.waiting_mut(1).is_some());
        w.answer(1, Answer::Ack, None);
        assert!(w.waiting_mut(1).is_none());
        assert_eq!(w.drain().count(), 1);
        assert_eq!(w.push("c".into(), "c"), 2);
    }
}
